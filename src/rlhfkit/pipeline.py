"""The demo pipeline: the whole loop on the default model, from no files to a report.

Stages run in order, each writing its own run folder under ``--output-dir``::

    sft/   Step 1 on the built-in task's demonstrations
    rm/    Step 2 on K-rankings of responses, labeled by the task's simulated labeler
    ...    Step 3 and the report are added by the RL stages

``--quick`` shrinks every stage so the whole loop finishes in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit import config as cfglib
from rlhfkit.models.loading import DEFAULT_MODEL


@dataclass
class DemoConfig:
    """The whole loop on one command (``rlhfkit demo``)."""

    model: str = DEFAULT_MODEL
    """Starting model: a HF id, a local folder, a .gguf file, or the alias smollm2-135m."""
    task: str = "reviews"
    """Built-in task that supplies prompts, demonstrations and the gold labeler."""
    output_dir: str = "runs/demo"
    """Folder for the run; each stage writes a sub-folder."""
    quick: bool = False
    """Small settings that finish in a few minutes on a 2-core CPU."""
    precision: str = "auto"
    """fp32, bf16, or auto (bf16 where the hardware has it)."""
    lora: bool = False
    """Train LoRA adapters instead of all weights."""
    seed: int = 0
    """Seed for every stage."""
    sft_steps: int = 0
    """SFT optimizer steps (0 = the preset's)."""
    rm_steps: int = 0
    """Reward-model optimizer steps (0 = the preset's)."""
    progress: bool = True
    """Show progress bars."""


def run_demo(cfg: DemoConfig) -> Path:
    """Run SFT then the reward model (then RL and the report, where available)."""
    from rlhfkit.train.rm import RMConfig, train_rm
    from rlhfkit.train.sft import SFTConfig, train_sft

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    data = f"task:{cfg.task}"
    sft_steps = cfg.sft_steps or (8 if cfg.quick else 32)
    rm_steps = cfg.rm_steps or (12 if cfg.quick else 48)
    common = dict(precision=cfg.precision, lora=cfg.lora, seed=cfg.seed, progress=cfg.progress)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    policy = train_sft(SFTConfig(model=cfg.model, data=data, output_dir=str(out / "sft"),
                                 max_steps=sft_steps, batch_size=8, learning_rate=5e-5,
                                 max_length=128, **common))
    timings["sft_s"] = time.perf_counter() - t

    t = time.perf_counter()
    reward_model = train_rm(RMConfig(model=str(policy), data=data, output_dir=str(out / "rm"),
                                     max_steps=rm_steps, batch_size=4, learning_rate=2e-5,
                                     max_length=128, eval_fraction=0.15, **common))
    timings["rm_s"] = time.perf_counter() - t
    rm_eval = json.loads((out / "rm" / "eval.json").read_text())
    summary = {"policy": str(policy), "reward_model": str(reward_model),
               "rm_eval": rm_eval, "timings": timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n[demo] done in {sum(timings.values()):.0f}s")
    print(f"[demo] SFT policy:    {policy}")
    print(f"[demo] reward model:  {reward_model} (held-out accuracy "
          f"{rm_eval.get('eval/rm_accuracy', float('nan')):.3f} against the simulated labeler)")
    print(f"[demo] summary:       {out / 'summary.json'}")
    return out
