"""The built-in advantage estimators and policy losses, registered by name.

Each is a pure function of tensors: an estimator takes an
:class:`~rlhfkit.train.algorithms.AdvantageInputs` and returns
:class:`~rlhfkit.train.algorithms.Advantages`, a loss takes an
:class:`~rlhfkit.train.algorithms.Update` and returns ``(loss, metrics)``; the maths is in
:mod:`rlhfkit.losses`. The algorithms that pair them are the table in
:mod:`rlhfkit.train.algorithms`.
"""

from __future__ import annotations

import torch

from rlhfkit.losses import (
    baseline_advantages,
    discounted_returns,
    gae,
    grpo_advantages,
    grpo_loss,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    rloo_advantages,
    whiten,
)
from rlhfkit.train.algorithms import (
    AdvantageInputs,
    Advantages,
    Update,
    register_advantage,
    register_policy_loss,
)

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# Advantage estimators
# ---------------------------------------------------------------------------------------------


@register_advantage("gae")
def gae_advantages(b: AdvantageInputs) -> Advantages:
    """PPO: GAE(gamma, lambda) on the per-token rewards and old values, then whitened."""
    adv, returns = gae(b.rewards, b.values, b.response_mask, b.cfg.gamma, b.cfg.lam)  # (B, R)
    if b.cfg.whiten_advantages:
        adv = whiten(adv, b.response_mask, reduce=b.reduce)
    return Advantages(adv, returns)


@register_advantage("reinforce")
def reinforce_advantages(b: AdvantageInputs) -> Advantages:
    """Reward-to-go (or the whole return) minus the baseline of ``--baseline``.

    Rewards given after each segment (fine-grained sources) reach only the tokens before them.
    """
    mask, cfg = b.response_mask, b.cfg
    if cfg.reward_to_go:
        returns = discounted_returns(b.rewards, mask, cfg.gamma)  # (B, R)
    else:
        returns = b.rewards.sum(-1, keepdim=True) * mask
    adv = baseline_advantages(returns, mask, cfg.baseline, b.values, reduce=b.reduce)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask, reduce=b.reduce)
    return Advantages(adv, returns)


@register_advantage("leave_one_out")
def leave_one_out_advantages(b: AdvantageInputs) -> Advantages:
    """RLOO: each response's sequence reward minus the mean of its k - 1 siblings'."""
    seq_reward = b.rewards.sum(-1)  # (B,) score - beta * sum_t k1_t
    adv = rloo_advantages(seq_reward.view(-1, b.group_size)).view(-1)[:, None] * b.response_mask
    if b.cfg.whiten_advantages:
        adv = whiten(adv, b.response_mask, reduce=b.reduce)
    return Advantages(adv)


@register_advantage("grpo")
def group_advantages(b: AdvantageInputs) -> Advantages:
    """GRPO: ``(score - group mean) / group std``; the KL is a loss term, not a reward."""
    adv = grpo_advantages(b.scores.view(-1, b.group_size), b.cfg.scale_advantages)
    return Advantages(adv.view(-1)[:, None] * b.response_mask)


# ---------------------------------------------------------------------------------------------
# Policy losses
# ---------------------------------------------------------------------------------------------


@register_policy_loss("reinforce")
def reinforce_objective(u: Update) -> tuple[Tensor, dict[str, Tensor]]:
    """``-A log pi`` on fresh samples, the clipped ratio on reused ones; + a value loss.

    With one pass over the whole batch the two have the same gradient; on reused samples
    (``--update-epochs > 1``, or mini-batches after the first optimizer step) plain
    ``-A log pi`` would be the gradient of another policy's samples, so PPO's clipped
    surrogate (``--clip-range``) weights each token instead.
    """
    weights = u.token_weights if u.token_weights is not None else 1.0
    metrics: dict[str, Tensor] = {}
    if u.on_policy:
        loss = masked_mean(weights * reinforce_loss(u.logprobs, u.advantages), u.mask)
    else:
        pg, diag = ppo_policy_loss(u.logprobs, u.old_logprobs, u.advantages, u.cfg.clip_range)
        loss = masked_mean(weights * pg, u.mask)
        metrics = {"policy/clipfrac": masked_mean(diag["clipped"], u.mask),
                   "policy/approx_kl_k3": masked_mean(diag["approx_kl_k3"], u.mask)}
    metrics["loss/policy"] = loss
    if u.values is not None:  # REINFORCE with a learned baseline
        loss_vf = masked_mean(0.5 * (u.values - u.returns) ** 2, u.mask)
        loss = loss + u.cfg.vf_coef * loss_vf
        metrics["loss/value"] = loss_vf
    return loss, metrics


@register_policy_loss("grpo")
def grpo_objective(u: Update) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`rlhfkit.losses.grpo_loss` with the options of the run."""
    cfg = u.cfg
    loss, diag = grpo_loss(
        u.logprobs, u.old_logprobs, u.ref_logprobs, u.advantages, u.mask,
        clip_range=cfg.clip_range, clip_range_high=cfg.clip_range_high or None,
        kl_coef=u.kl_coef, loss_type=cfg.loss_type, importance_level=cfg.importance_level,
        max_length=cfg.max_new_tokens, normalizer=u.normalizer, token_weights=u.token_weights)
    return loss, {"loss/policy": diag["policy"], "loss/kl": diag["kl"],
                  "policy/clipfrac": masked_mean(diag["clipped"], u.mask),
                  "policy/approx_kl_k3": masked_mean(diag["approx_kl_k3"], u.mask)}


@register_policy_loss("ppo")
def ppo_objective(u: Update) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (weighted by ``--tis-cap``) + ``vf_coef`` * the clipped value loss.

    Ouyang et al. 2022 (eq. 2) without the pretraining term, which the loop adds (PPO-ptx).
    """
    cfg, mask = u.cfg, u.mask
    pg, diag = ppo_policy_loss(u.logprobs, u.old_logprobs, u.advantages, cfg.clip_range)
    if u.token_weights is not None:  # --tis-cap: the engine's numerical gap
        pg = pg * u.token_weights
    vf, vdiag = ppo_value_loss(u.values, u.old_values, u.returns, cfg.clip_range_value)
    loss_pg, loss_vf = masked_mean(pg, mask), masked_mean(vf, mask)
    return loss_pg + cfg.vf_coef * loss_vf, {
        "loss/policy": loss_pg, "loss/value": loss_vf,
        "policy/approx_kl_k3": masked_mean(diag["approx_kl_k3"], mask),
        "policy/approx_kl_k2": masked_mean(diag["approx_kl_k2"], mask),
        "policy/clipfrac": masked_mean(diag["clipped"], mask),
        "value/clipfrac": masked_mean(vdiag["clipped"], mask)}
