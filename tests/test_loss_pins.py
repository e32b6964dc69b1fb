"""Loss values pinned across the restructuring: the same inputs give the same numbers.

``fixtures/loss_values_95713f5.json`` holds what every loss and estimator returned on the inputs
below at commit 95713f5, before the package was re-layered (losses moved into ``losses.py``,
GRPO's inline loss became :func:`rlhfkit.losses.grpo_loss`). The values must stay equal: a
change here is a change of behaviour, not of layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit import losses as L
from rlhfkit.rewards.shaping import token_rewards

PINNED = json.loads((Path(__file__).parent / "fixtures" / "loss_values_95713f5.json").read_text())


def compute() -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(1234)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).float()

    B, T, V = 4, 6, 11
    logits = r(B * T, V)
    targets = torch.randint(0, V, (B * T,), generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 2 + [0] * 4],
                        dtype=torch.float32)
    lp, old, ref = -r(B, T).abs(), -r(B, T).abs(), -r(B, T).abs()
    adv, vals, oldv, rets, rew = r(B, T), r(B, T), r(B, T), r(B, T), r(B, T)
    c, rj = r(8), r(8)
    margin = r(8).abs()
    tie = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    lens_c = torch.tensor([3., 5, 2, 7, 4, 6, 1, 3])
    lens_r = torch.tensor([4., 2, 6, 3, 5, 1, 2, 8])
    out: dict[str, list[float]] = {}

    def put(name, v):
        if isinstance(v, tuple):
            v = v[0]
        out[name] = [float(x) for x in v.detach().reshape(-1)]

    put("token_nll", L.token_nll(logits, targets))
    put("token_logprobs_T0.7", L.token_logprobs(logits, targets, 0.7))
    put("bradley_terry", L.bradley_terry_loss(c, rj, margin, tie))
    put("pointwise", L.pointwise_loss(c, (rj > 0).float()))
    put("centering", L.reward_centering_penalty(c, rj))
    put("dpo", L.dpo_loss(c, rj, c.flip(0), rj.flip(0), 0.1, 0.1))
    put("ipo", L.ipo_loss(c, rj, c.flip(0), rj.flip(0), lens_c, lens_r, 0.1))
    put("kto", L.kto_loss(c, rj, (margin > 0.5), c.flip(0), rj.flip(0), 0.1))
    put("preferred_ft", L.preferred_ft_loss(c, lens_c))
    put("unlikelihood", L.unlikelihood_loss(lp, mask, old, mask))
    put("whiten", L.whiten(adv, mask))
    for k in ("k1", "k2", "k3"):
        put(f"kl_{k}", L.kl_penalty(lp, ref, k))
    put("discounted_returns", L.discounted_returns(rew, mask, 0.9))
    a, ret = L.gae(rew, vals, mask, 0.99, 0.95)
    put("gae_adv", a)
    put("gae_ret", ret)
    put("ppo_policy", L.ppo_policy_loss(lp, old, adv, 0.2))
    put("ppo_value", L.ppo_value_loss(vals, oldv, rets, 0.2))
    put("entropy", L.entropy_from_logits(logits))
    put("rloo_adv", L.rloo_advantages(c.view(2, 4)))
    put("grpo_adv", L.grpo_advantages(c.view(2, 4)))
    put("grpo_adv_noscale", L.grpo_advantages(c.view(2, 4), False))
    put("reinforce", L.reinforce_loss(lp, adv))
    for b in ("none", "mean", "value"):
        put(f"baseline_{b}", L.baseline_advantages(rets, mask, b, vals))
    put("antisym", L.antisymmetric_logit(c, rj))
    put("preference_bce", L.preference_bce_loss(c, rj, (margin > 0.5).float()))
    put("geometric_mixture", L.geometric_mixture(lp, ref, 0.3))
    put("nash_md_step", L.nash_md_step(torch.log_softmax(r(5), 0), torch.log_softmax(r(5), 0),
                                       torch.rand(5, generator=g), 0.5, 0.1))
    put("segment_preference", L.segment_preference_loss(r(4, 3), r(4, 3),
                                                        torch.tensor([1., 0, 0.5, 1])))
    put("segment_bce", L.segment_bce_loss(c, (rj > 0).float(), 2.0))
    rwd, _ = token_rewards(mask, lp, ref, 0.05, scores=c[:4],
                           ended=torch.tensor([True, False, True, False]), missing_eos_penalty=-1.0)
    put("token_rewards", rwd)
    # Before, train/pg.py assembled GRPO's loss inline: token mean of the clipped surrogate plus
    # beta times the token mean of k3. grpo_loss with loss_type="bnpo" is that loss.
    put("grpo_total_bnpo", L.grpo_loss(lp, old, ref, adv[:, :1].expand(B, T) * mask, mask,
                                       clip_range=0.2, kl_coef=0.04, loss_type="bnpo")[0])
    return out


def test_every_pinned_value_is_unchanged():
    got = compute()
    assert set(got) == set(PINNED)
    for name, values in PINNED.items():
        assert got[name] == pytest.approx(values, rel=1e-6, abs=1e-7), name
