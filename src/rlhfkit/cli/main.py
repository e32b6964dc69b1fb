"""The ``rlhfkit`` command: one sub-command per stage, plus ``demo``, ``detox``, ``control``, ``label``.

Each stage sub-command is generated from its config dataclass: every field is a ``--flag`` whose
help is the field's docstring, ``--config FILE`` reads a YAML file, and flags override the file.
Only the sub-command being run is imported: ``rlhfkit --help`` lists the commands without
loading torch, and ``rlhfkit sft --help`` loads only what SFT needs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from rlhfkit import __version__
from rlhfkit import config as cfglib
from rlhfkit.train.algorithms import ALGORITHMS, algorithm_specific_options


@dataclass(frozen=True)
class Command:
    """A sub-command: its help, and where its config class and run function live."""

    name: str
    help: str
    config: str
    """``module:ConfigClass``."""
    run: str
    """``module:function`` called with the resolved config."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Options the command sets itself (an RL algorithm's command: its ``algo``)."""

    def load(self, which: str) -> Any:
        """The config class (``which="config"``) or the run function (``"run"``)."""
        module, _, attr = getattr(self, which).partition(":")
        return getattr(importlib.import_module(module), attr)


def _stage(name: str, help: str, module: str, config: str, run: str) -> Command:
    return Command(name, help, f"rlhfkit.{module}:{config}", f"rlhfkit.{module}:{run}")


COMMANDS: list[Command] = [
    _stage("sft", "Step 1: supervised fine-tuning on demonstrations", "train.sft", "SFTConfig",
           "train_sft"),
    _stage("rm", "Step 2: train a reward model on comparisons, rankings, 👍/👎 or scores", "train.rm",
           "RMConfig", "train_rm"),
    _stage("segment-rm", "Step 2, fine-grained: a per-segment reward model (relevance, "
           "factuality) from span feedback (Wu et al. 2023)", "train.segment_rm",
           "SegmentRMConfig", "train_segment_rm"),
    _stage("preference", "Train a pairwise preference model P(y > y' | x) on comparisons or "
           "rankings (for Nash-MD)", "train.preference", "PreferenceConfig", "train_preference"),
    _stage("dpo", "Train the policy directly on preferences: DPO, IPO, KTO, preferred-FT, "
           "unlikelihood", "train.dpo", "DPOConfig", "train_dpo"),
    _stage("best-of-n", "Best-of-N sampling; rejection sampling into a new SFT dataset",
           "train.best_of_n", "BestOfNConfig", "run_best_of_n"),
    _stage("accuracy", "pass@1 / pass@k of a policy on a verifiable task's held-out problems "
           "(task:arithmetic, task:constraints; with --environment, multi-turn episodes)",
           "train.accuracy", "AccuracyConfig", "run_accuracy"),
    _stage("self-improve", "Self-improvement without labels: sample k reasoning paths, keep "
           "those that agree with the majority vote (or match the reference: STaR), fine-tune, "
           "repeat", "train.self_improve", "SelfImproveConfig", "run_self_improve"),
    _stage("engine", "A vLLM generation engine for RL stages on other processes or machines "
           "(--vllm-engines HOST:PORT; the auth key in RLHFKIT_ENGINE_KEY)", "engines.remote",
           "EngineConfig", "serve_engine"),
    _stage("iterate", "Iterative RLHF: sample from the current policy, label, refit the reward "
           "model, RL again, for several rounds", "train.iterate", "IterateConfig", "run_iterate"),
    _stage("frontier", "The reward-KL frontier: gold reward against KL to SFT for the RL "
           "algorithms, DPO, IPO and best-of-N over a sweep of strengths", "experiments.frontier",
           "FrontierConfig", "run_frontier"),
    _stage("demo", "Run the whole loop on the default model and write a report", "pipeline",
           "DemoConfig", "run_demo"),
    _stage("detox", "Detoxification: SFT, then PPO with holistic vs fine-grained (per-sentence) "
           "toxicity rewards, compared on held-out prompts (Wu et al. 2023)", "experiments.detox",
           "DetoxConfig", "run_detox"),
    _stage("control", "Preference-based RL for control: a Gymnasium agent learns from segment "
           "comparisons (Christiano et al. 2017)", "control.train", "ControlConfig",
           "train_control"),
]


def rl_commands() -> list[Command]:
    """``rl --algo NAME``, and one command per algorithm of the registry, with its defaults."""
    config, run = "rlhfkit.train.trainer:TrainRLConfig", "rlhfkit.train.trainer:train_rl"
    return [Command("rl", f"On-policy RL with any algorithm: --algo {'|'.join(ALGORITHMS)} "
                    "or py:FILE.py:NAME (your own)", config, run),
            *(Command(name, algo.help, config, run, {"algo": name})
              for name, algo in ALGORITHMS.items())]


_AT = next(i for i, c in enumerate(COMMANDS) if c.name == "best-of-n")
COMMANDS[_AT:_AT] = rl_commands()  # Step 3 before best-of-n in the listing
BY_NAME = {c.name: c for c in COMMANDS}
assert len(BY_NAME) == len(COMMANDS), "two commands of one name"
LABEL_HELP = "the feedback web app and its store (rlhfkit label --help)"


def top_parser() -> argparse.ArgumentParser:
    """The parser of ``rlhfkit`` itself: options and the list of commands (nothing imported)."""
    parser = argparse.ArgumentParser(
        prog="rlhfkit", allow_abbrev=False,
        description="The whole loop of learning from human feedback for language models.",
        epilog="Run 'rlhfkit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of ``command`` only (all of them when None)."""
    parser = top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help, allow_abbrev=False)
        if command is None or command == c.name:
            cls = c.load("config")
            defaults = cls.defaults_for(c.fixed) if c.fixed and hasattr(cls, "defaults_for") \
                else None
            cfglib.add_arguments(p, cls, defaults=defaults, hide=hidden_options(c))
            p.set_defaults(_command=c)
    if command in (None, "label"):
        from rlhfkit.cli.label import register_label

        register_label(sub)
    else:
        sub.add_parser("label", help=LABEL_HELP, add_help=False)
    return parser


def hidden_options(c: Command) -> list[str]:
    """Options without a flag on ``c``: those it fixes, and an algorithm's unread ones."""
    hidden = list(c.fixed)
    if "algo" in c.fixed:
        reads = ALGORITHMS[c.fixed["algo"]].reads
        hidden += [n for n in algorithm_specific_options() if n not in reads]
    return hidden


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is one), if any."""
    for word in argv:
        if word in BY_NAME or word == "label":
            return word
        if not word.startswith("-"):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlhfkit`` command."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.formatwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(command) if command else _listing_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    stage: Command | None = getattr(args, "_command", None)
    if stage is None:
        if hasattr(args, "_run"):
            return int(args._run(args) or 0)
        parser.print_help()
        return 2
    return run_stage(stage, args)


def _listing_parser() -> argparse.ArgumentParser:
    """``rlhfkit`` with no command: the list of commands, their options not loaded."""
    parser = top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS:
        sub.add_parser(c.name, help=c.help)
    sub.add_parser("label", help=LABEL_HELP)
    return parser


def run_stage(stage: Command, args: argparse.Namespace) -> int:
    """Resolve the config of ``stage`` from ``args`` and run it; errors become one line.

    An error meant for the user (its class has ``user_facing = True``: a bad option, record,
    model or training state) or a missing file is printed as one line; a bad option
    (:class:`rlhfkit.config.ConfigError`) gives exit status 2, as argparse's own refusals do,
    the others 1. Anything else is a bug and keeps its traceback.
    """
    try:
        cfg = cfglib.from_args(stage.load("config"), args, fixed=stage.fixed)
        if os.environ.get("RANK", "0") == "0":  # once, not once per process
            print(f"[{stage.name}] config:\n" + _show_config(cfg))
        stage.load("run")(cfg)
    except Exception as err:  # noqa: BLE001 - sorted below: user errors, or re-raised
        if not (getattr(err, "user_facing", False) or isinstance(err, FileNotFoundError)):
            raise
        print(f"rlhfkit {stage.name}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, cfglib.ConfigError) else 1
    return 0


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any,
                      **kwargs: Any) -> str:
    """Warnings as one line, without the source line Python adds below them."""
    return f"[warning] {category.__name__}: {message}\n"


def _show_config(cfg: Any) -> str:
    return "\n".join(f"  {k}: {v!r}" for k, v in cfglib.to_dict(cfg).items())


if __name__ == "__main__":
    sys.exit(main())
