"""The ``rlhfkit`` command: one sub-command per stage, plus ``demo`` and ``label``.

Each stage sub-command is generated from its config dataclass: every field is a ``--flag`` whose
help is the field's docstring, ``--config FILE`` reads a YAML file, and flags override the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhfkit import config as cfglib


@dataclass
class Stage:
    """A sub-command: its config class and the function that runs it."""

    name: str
    help: str
    config_cls: Callable[[], type]
    run: Callable[[Any], Any]


def _sft_cfg():
    from rlhfkit.train.sft import SFTConfig

    return SFTConfig


def _sft_run(cfg):
    from rlhfkit.train.sft import train_sft

    return train_sft(cfg)


def _rm_cfg():
    from rlhfkit.train.rm import RMConfig

    return RMConfig


def _rm_run(cfg):
    from rlhfkit.train.rm import train_rm

    return train_rm(cfg)


def _dpo_cfg():
    from rlhfkit.train.dpo import DPOConfig

    return DPOConfig


def _dpo_run(cfg):
    from rlhfkit.train.dpo import train_dpo

    return train_dpo(cfg)


def _online_dpo_cfg():
    from rlhfkit.train.online_dpo import OnlineDPOConfig

    return OnlineDPOConfig


def _online_dpo_run(cfg):
    from rlhfkit.train.online_dpo import train_online_dpo

    return train_online_dpo(cfg)


def _rl_stage(module: str, config: str, run: str) -> tuple[Callable[[], type], Callable]:
    """Lazy (config class, run function) of an RL stage in ``rlhfkit.train.<module>``."""
    import importlib

    def cfg_cls():
        return getattr(importlib.import_module(f"rlhfkit.train.{module}"), config)

    def run_fn(cfg):
        return getattr(importlib.import_module(f"rlhfkit.train.{module}"), run)(cfg)

    return cfg_cls, run_fn


def _demo_cfg():
    from rlhfkit.pipeline import DemoConfig

    return DemoConfig


def _demo_run(cfg):
    from rlhfkit.pipeline import run_demo

    return run_demo(cfg)


def _detox_cfg():
    from rlhfkit.experiments.detox import DetoxConfig

    return DetoxConfig


def _detox_run(cfg):
    from rlhfkit.experiments.detox import run_detox

    return run_detox(cfg)


def _control_cfg():
    from rlhfkit.control.train import ControlConfig

    return ControlConfig


def _control_run(cfg):
    from rlhfkit.control.train import train_control

    return train_control(cfg)


STAGES: list[Stage] = [
    Stage("sft", "Step 1: supervised fine-tuning on demonstrations", _sft_cfg, _sft_run),
    Stage("rm", "Step 2: train a reward model on comparisons, rankings or 👍/👎", _rm_cfg, _rm_run),
    Stage("segment-rm", "Step 2, fine-grained: a per-segment reward model (relevance, factuality) "
          "from span feedback (Wu et al. 2023)",
          *_rl_stage("segment_rm", "SegmentRMConfig", "train_segment_rm")),
    Stage("preference", "Train a pairwise preference model P(y > y' | x) on comparisons or "
          "rankings (for Nash-MD)", *_rl_stage("preference", "PreferenceConfig",
                                              "train_preference")),
    Stage("dpo", "Train the policy directly on preferences: DPO, IPO, KTO, preferred-FT, "
          "unlikelihood", _dpo_cfg, _dpo_run),
    Stage("online-dpo", "Iterative DPO: sample K per prompt, label (gold, reward model or AI "
          "judge), train, repeat", _online_dpo_cfg, _online_dpo_run),
    Stage("ppo", "Step 3: PPO against a reward model with a KL penalty (InstructGPT)",
          *_rl_stage("ppo", "PPOConfig", "train_ppo")),
    Stage("reinforce", "Step 3: REINFORCE with reward-to-go and a baseline",
          *_rl_stage("pg", "ReinforceConfig", "train_pg")),
    Stage("rloo", "Step 3: REINFORCE leave-one-out over k samples per prompt",
          *_rl_stage("pg", "RLOOConfig", "train_pg")),
    Stage("grpo", "Step 3: GRPO (group-normalised advantages, clipped ratio, KL loss)",
          *_rl_stage("pg", "GRPOConfig", "train_pg")),
    Stage("best-of-n", "Best-of-N sampling; rejection sampling into a new SFT dataset",
          *_rl_stage("best_of_n", "BestOfNConfig", "run_best_of_n")),
    Stage("nash", "Nash-MD: play against a mixture of the policy and the reference, payoff from "
          "a pairwise preference model (Munos et al. 2023)",
          *_rl_stage("nash", "NashConfig", "train_nash")),
    Stage("demo", "Run the whole loop on the default model and write a report", _demo_cfg,
          _demo_run),
    Stage("detox", "Detoxification: SFT, then PPO with holistic vs fine-grained (per-sentence) "
          "toxicity rewards, compared on held-out prompts (Wu et al. 2023)", _detox_cfg,
          _detox_run),
    Stage("control", "Preference-based RL for control: a Gymnasium agent learns from segment "
          "comparisons (Christiano et al. 2017)", _control_cfg, _control_run),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="rlhfkit",
        description="The whole loop of learning from human feedback for language models.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        cfglib.add_arguments(p, stage.config_cls())
        p.set_defaults(_stage=stage)
    try:
        from rlhfkit.feedback.cli import register
    except ImportError:  # the feedback app's optional pieces are missing
        register = None
    if register is not None:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlhfkit`` command."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.version:
        from rlhfkit import __version__

        print(__version__)
        return 0
    stage: Stage | None = getattr(args, "_stage", None)
    if stage is None:
        if hasattr(args, "_run"):
            return int(args._run(args) or 0)
        parser.print_help()
        return 2
    from rlhfkit.data.records import RecordError
    from rlhfkit.models.loading import ModelLoadError
    from rlhfkit.train.loop import TrainingError

    try:
        cfg = cfglib.from_args(stage.config_cls(), args)
        if os.environ.get("RANK", "0") == "0":  # once, not once per process
            print(f"[{stage.name}] config:\n" + _show_config(cfg))
        stage.run(cfg)
    except (cfglib.ConfigError, RecordError, ModelLoadError, TrainingError,
            FileNotFoundError) as err:
        print(f"rlhfkit {stage.name}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _show_config(cfg: Any) -> str:
    return "\n".join(f"  {k}: {v!r}" for k, v in cfglib.to_dict(cfg).items())


if __name__ == "__main__":
    sys.exit(main())
