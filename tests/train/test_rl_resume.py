"""A resumed RL run ends with exactly the weights of an uninterrupted one.

RL draws far more random numbers than supervised training (sampling every response, shuffling
mini-batches, drawing PPO-ptx demonstrations), so resuming exactly needs every one of those
streams restored or derived from the step. The run is PPO with the value head and PPO-ptx,
which touches all of them; the policy is the random tiny model (learning is not the point).
"""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.tasks import get_task


def n_words(prompts, texts, rollout=None):
    return [float(len(t.split())) for t in texts]


def ppo_cfg(tiny_lm: Path, out: Path, **kw):
    from rlhfkit.train.trainer import rl_config

    base = dict(model=str(tiny_lm), output_dir=str(out), max_steps=4, batch_size=4,
                mini_batch_size=2, update_epochs=2, max_new_tokens=3, learning_rate=1e-3,
                precision="fp32", progress=False, eval_prompts=2, ptx_coef=0.5,
                system_prompt=get_task("reviews").system_prompt, report_to="none",
                gradient_checkpointing=False)
    base.update(kw)
    return rl_config("ppo", **base)


def test_resumed_ppo_matches_uninterrupted_run(tiny_lm, tmp_path):
    from rlhfkit.train.trainer import train_rl

    full = train_rl(ppo_cfg(tiny_lm, tmp_path / "full", save_every=2), reward_fn=n_words)
    checkpoint = tmp_path / "full" / "checkpoints" / "step-0000002"
    assert checkpoint.exists()
    # A run that "stopped" after step 2: a new folder holding only that checkpoint, resumed.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    os.symlink(checkpoint, part / "checkpoints" / checkpoint.name)
    resumed = train_rl(ppo_cfg(tiny_lm, part, resume=True), reward_fn=n_words)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    head_a = torch.load(full / "value_head.pt")
    head_b = torch.load(resumed / "value_head.pt")
    assert all(torch.allclose(head_a[k], head_b[k], atol=1e-6) for k in head_a)
    # The resumed run trained only steps 3 and 4 (plus the final evaluation row).
    steps = [row for row in read_metrics(part) if "reward/score" in row]
    assert len(steps) == 2
