"""Checkpoints keep the layout they had before the restructuring, so old runs still resume.

``fixtures/checkpoint_layout_95713f5.json`` is the layout of checkpoints written at commit
95713f5 (before one ``Run`` object took over the plumbing of the supervised and the RL stages):
the files, the model's tensor names and shapes, the optimizer's state, what each registered
object (the LR schedule, the RL stages' KL controller) saves, and the loop state. Accelerate
loads a checkpoint by exactly these names and this order, so a checkpoint of the same layout
resumes. (When the change was made, checkpoints written by 95713f5 for SFT, PPO and GRPO were
resumed with the new code, and the final weights were bit-identical to 95713f5's uninterrupted
runs.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rlhfkit.tasks import get_task

LAYOUT = json.loads((Path(__file__).parents[1] / "fixtures" / "checkpoint_layout_95713f5.json")
                    .read_text())


def layout(ckpt: Path) -> dict:
    out: dict = {"files": sorted(p.name for p in ckpt.iterdir()
                                 if not p.name.startswith("random_states"))}
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        out["model"] = {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}
    opt = torch.load(ckpt / "optimizer.bin", weights_only=False)
    out["optimizer"] = {
        "groups": [sorted(k for k in g if k != "params") for g in opt["param_groups"]],
        "params": [len(g["params"]) for g in opt["param_groups"]],
        "state": sorted({k for s in opt["state"].values() for k in s})}
    for p in sorted(ckpt.glob("custom_checkpoint_*.pkl")):
        obj = torch.load(p, weights_only=False)
        out[p.name] = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    out["loop_state"] = sorted(json.loads((ckpt / "loop_state.json").read_text()))
    return out


def run_stage(stage: str, model: Path, out: Path) -> Path:
    common = dict(model=str(model), output_dir=str(out), max_steps=2, save_every=1,
                  progress=False, report_to="none", seed=3)
    rl = dict(data="task:reviews", reward_model="scorer:sentiment", max_new_tokens=4,
              eval_prompts=2, system_prompt=get_task("reviews").system_prompt, **common)
    if stage == "sft":
        from rlhfkit.train.sft import SFTConfig, train_sft

        train_sft(SFTConfig(batch_size=4, max_length=64, **common))
    elif stage == "ppo":
        from rlhfkit.train.trainer import rl_config, train_rl

        train_rl(rl_config("ppo", batch_size=4, mini_batch_size=2, **rl))
    else:
        from rlhfkit.train.trainer import rl_config, train_rl

        train_rl(rl_config("grpo", batch_size=2, num_samples=2, **rl))
    return out / "checkpoints" / "step-0000001"


@pytest.mark.parametrize("stage", ["sft", "ppo", "grpo"])
def test_checkpoint_layout_is_the_one_older_runs_wrote(stage, tiny_lm, tmp_path):
    assert layout(run_stage(stage, tiny_lm, tmp_path / stage)) == LAYOUT[stage]
