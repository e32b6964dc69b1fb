import argparse
from dataclasses import dataclass

import pytest

from rlhfkit import config as cfglib
from rlhfkit.train.sft import SFTConfig


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
    assert docs["learning_rate"] == "Peak learning rate of AdamW."  # overridden in the subclass
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
