"""The policy-gradient table: every entry is a command, and its losses treat reused samples right."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.cli.main import BY_NAME
from rlhfkit.rollout import Rollout
from rlhfkit.train.pg import ALGORITHMS, ReinforceConfig, Update, reinforce_objective


def test_every_algorithm_of_the_table_is_a_command_with_its_config():
    for name, algo in ALGORITHMS.items():
        assert name in BY_NAME, f"add a row for {name!r} to rlhfkit.cli.main.COMMANDS"
        assert BY_NAME[name].load("config") is algo.config
        assert BY_NAME[name].run == "rlhfkit.train.pg:train_pg"


def _update(logprobs, old, adv, on_policy):
    mask = torch.ones_like(old, dtype=torch.bool)
    mb = Rollout.__new__(Rollout)
    mb.response_mask, mb.logprobs = mask, old
    mb.extras = {"advantages": adv}
    return Update({"logprobs": logprobs}, mb, on_policy, kl_coef=0.0, normalizer=1.0)


def test_reinforce_on_reused_samples_weights_tokens_by_the_clipped_ratio():
    """pi(y) = 0.6 where the sampler had 0.4: ratio 1.5, past 1 + eps = 1.2 with A = 1.

    On fresh samples (one pass) the loss is -A log pi and its gradient -A. On reused samples
    (the second epoch, another mini-batch) the clipped surrogate gives the token no gradient:
    it has already moved as far as the clip allows.
    """
    cfg = ReinforceConfig(clip_range=0.2)
    old = torch.log(torch.tensor([[0.4]]))
    adv = torch.ones(1, 1)
    logp = torch.log(torch.tensor([[0.6]])).requires_grad_()
    loss, _ = reinforce_objective(cfg, _update(logp, old, adv, on_policy=True))
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(0.6))
    assert logp.grad.item() == pytest.approx(-1.0)
    logp.grad = None
    loss, metrics = reinforce_objective(cfg, _update(logp, old, adv, on_policy=False))
    loss.backward()
    assert loss.item() == pytest.approx(-1.2)
    assert logp.grad.item() == 0.0 and metrics["policy/clipfrac"].item() == 1.0
