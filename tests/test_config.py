import argparse
import ast
import collections
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlhfkit import config as cfglib
from rlhfkit.config import parse_weights, split_named
from rlhfkit.options import OptimOptions, SamplingOptions
from rlhfkit.train.loop import TrainConfig
from rlhfkit.train.sft import SFTConfig

SRC = Path(__file__).resolve().parent.parent / "src" / "rlhfkit"


@dataclass
class Toy:
    name: str = "a"
    """The name."""
    steps: int = 3
    """How many steps."""
    rate: float = 0.5
    """A rate."""
    flag: bool = False
    """A flag."""
    tags: list[str] | None = None
    """Some tags."""
    weights: dict[str, float] | None = None
    """Weights by name."""


def parse(argv, cls=Toy):
    p = argparse.ArgumentParser()
    cfglib.add_arguments(p, cls)
    return cfglib.from_args(cls, p.parse_args(argv))


def test_field_docstrings_become_help():
    docs = cfglib.field_docs(SFTConfig)
    assert docs["packing"].startswith("Pack several demonstrations")
    assert docs["learning_rate"] == "Peak learning rate of AdamW."  # the group's (OptimOptions)
    assert "batch_size" in docs  # inherited from TrainConfig
    p = argparse.ArgumentParser()
    cfglib.add_arguments(p, Toy)
    assert "How many steps." in p.format_help()


def test_yaml_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nrate: 0.1\nname: from-file\n")
    cfg = parse(["--config", str(f), "--steps", "9", "--flag", "--tags", "x,y",
                 "--weights", "rel=0.3,fact=0.5"])
    assert (cfg.name, cfg.steps, cfg.rate, cfg.flag) == ("from-file", 9, 0.1, True)
    assert cfg.tags == ["x", "y"] and cfg.weights == {"rel": 0.3, "fact": 0.5}


def test_bad_values_are_named(tmp_path):
    with pytest.raises(cfglib.ConfigError, match="'steps': expected int"):
        parse(["--steps", "many"])
    f = tmp_path / "c.yaml"
    f.write_text("stepz: 3\n")
    with pytest.raises(cfglib.ConfigError, match=r"c.yaml: unknown key\(s\) stepz"):
        parse(["--config", str(f)])
    f.write_text("- not a mapping\n")
    with pytest.raises(cfglib.ConfigError, match="expected a mapping"):
        parse(["--config", str(f)])


def test_save_and_reload(tmp_path):
    cfg = SFTConfig(max_steps=5, lora=True)
    cfglib.save_yaml(cfg, tmp_path / "config.yaml")
    again = cfglib.from_dict(SFTConfig, cfglib.load_yaml(tmp_path / "config.yaml"))
    assert again == cfg


@dataclass
class Group:
    rate: float = field(default=0.5, metadata=cfglib.bounds(gt=0, le=1))
    """A rate."""
    name: str = "a"
    """The name."""
    steps: int = 3
    """How many steps."""


def test_stage_defaults_change_only_the_default():
    @cfglib.stage_defaults(rate=0.25, steps=7)
    @dataclass
    class Stage(Group):
        own: bool = False
        """An option of the stage only."""

    assert (Stage().rate, Stage().steps, Stage().name) == (0.25, 7, "a")
    assert (Group().rate, Group().steps) == (0.5, 3)  # the group keeps its defaults
    rate = {f.name: f for f in dataclasses.fields(Stage)}["rate"]
    assert rate.default == 0.25 and rate.metadata["bounds"] == (0, 1, False, True)
    assert cfglib.field_docs(Stage)["rate"] == "A rate."
    assert Stage(rate=0.9).rate == 0.9
    with pytest.raises(cfglib.ConfigError, match="--rate must be > 0 and <= 1"):
        cfglib.from_dict(Stage, {"rate": 2})

    @dataclass
    class Later(Stage):  # a subclass inherits the stage's defaults
        pass

    assert (Later().rate, Later().steps) == (0.25, 7)


def test_stage_defaults_refuse_options_the_class_does_not_inherit():
    with pytest.raises(TypeError, match="does not have: nope"):
        @cfglib.stage_defaults(nope=1)
        @dataclass
        class Stage(Group):
            pass
    with pytest.raises(TypeError, match="declares own itself"):
        @cfglib.stage_defaults(own=True)
        @dataclass
        class Other(Group):
            own: bool = False
    with pytest.raises(TypeError, match="above @dataclass"):
        @cfglib.stage_defaults(rate=0.1)
        class Plain(Group):
            pass


def test_only_takes_part_of_a_group():
    part = cfglib.only(Group, "steps", "rate")
    assert [f.name for f in dataclasses.fields(part)] == ["steps", "rate"]
    assert part().rate == 0.5 and cfglib.field_docs(part) == {"steps": "How many steps.",
                                                              "rate": "A rate."}

    @cfglib.stage_defaults(steps=1)
    @dataclass
    class Stage(part):
        pass

    assert Stage().steps == 1 and part().steps == 3
    assert cfglib.only(Group, "steps", "rate") is part
    with pytest.raises(TypeError, match="unknown: nope"):
        cfglib.only(Group, "nope")
    p = argparse.ArgumentParser()
    cfglib.add_arguments(p, cfglib.only(SamplingOptions, "top_p"))
    assert "Nucleus sampling" in p.format_help() and "> 0 and <= 1" in p.format_help()


def test_supervised_stages_keep_their_defaults():
    assert SFTConfig().learning_rate == 5e-5 and TrainConfig().learning_rate == 1e-5
    assert OptimOptions().learning_rate == 1e-5 and SFTConfig().output_dir == "runs/sft"


# Names still declared in two option dataclasses, and why: each pair is two different options.
DECLARED_TWICE = {
    "learning_rate": "control: the Gymnasium agent's, None = the environment's preset",
    "gamma": "control: the Gymnasium agent's, None = the environment's preset",
    "update_epochs": "control: the Gymnasium agent's, None = the environment's preset",
    "entropy_coef": "control: the Gymnasium agent's, None = the environment's preset",
    "batch_size": "training items per micro-batch, prompts per rollout batch, sequences per "
                  "generate call",
    "labeler": "online-dpo, iterate and control take different labelers",
    "segment_unit": "segment-rm's may be empty (its default depends on --category)",
    "length_floor": "tokens in RL; a share of the SFT policy's mean length in demo/iterate",
    "feedback_project": "control's project (None: control-ENV); iterate's prefix of projects",
    "methods": "frontier's and detox's lists of what they compare",
}


def test_every_option_is_declared_once():
    where = collections.defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Config", "Options")):
                for st in node.body:
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                        where[st.target.id].append(f"{path.relative_to(SRC)}:{node.name}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    unexplained = {n: p for n, p in twice.items() if n not in DECLARED_TWICE}
    assert not unexplained, f"declare these options once, in a group (rlhfkit/options.py): " \
                            f"{unexplained}"


def test_split_named_keeps_commas_inside_a_spec():
    assert split_named("runs/rm/model") == [(None, "runs/rm/model")]
    assert split_named("scorer:sentiment:1,toxicity:-1") == [(None,
                                                               "scorer:sentiment:1,toxicity:-1")]
    assert split_named("rel=runs/a, comp=scorer:sentiment:1,toxicity:-1") == [
        ("rel", "runs/a"), ("comp", "scorer:sentiment:1,toxicity:-1")]
    with pytest.raises(ValueError, match="used twice"):
        split_named("a=x,a=y")


def test_parse_weights_defaults_and_errors():
    assert parse_weights("rel=0.3,comp=0.5", ["rel", "fact", "comp"]) == {
        "rel": 0.3, "fact": 1.0, "comp": 0.5}
    with pytest.raises(ValueError, match="no reward source named 'tox'"):
        parse_weights("tox=1", ["rel"])
    with pytest.raises(ValueError, match="must be a number"):
        parse_weights("rel=high", ["rel"])
    with pytest.raises(ValueError, match="name=weight"):
        parse_weights("rel", ["rel"])
