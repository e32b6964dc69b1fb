"""Run by test_rl.py under torchrun: GRPO with 2 processes where only rank 1's loss turns NaN.

Before the fix, rank 1 raised alone and rank 0 waited in the gradient all-reduce forever; now
both processes stop at the same step with the same message.
"""

import sys

import torch

from rlhfkit.train import estimators
from rlhfkit.train.trainer import rl_config, train_rl


def good_share(prompts, texts, rollout=None):
    return [sum(w == "good" for w in t.split()) / max(len(t.split()), 1) for t in texts]


if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    grpo_loss = estimators.grpo_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, diag = grpo_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2 and torch.distributed.get_rank() == 1:
            loss = loss * float("nan")
        return loss, diag

    estimators.grpo_loss = poisoned
    train_rl(rl_config("grpo", model=model, output_dir=out, max_steps=3, batch_size=1,
                       num_samples=2, max_new_tokens=3, precision="fp32", progress=False,
                       eval_prompts=0, report_to="none", gradient_checkpointing=False),
             reward_fn=good_share)
