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
    best_worst_signs,
    discounted_returns,
    gae,
    grpo_advantages,
    grpo_loss,
    kl_penalty,
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
from rlhfkit.train.dpo import PairBatch, pair_metrics, pairwise_losses

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


@register_advantage("best_worst")
def best_worst_advantages(b: AdvantageInputs) -> Advantages:
    """Online DPO: +1 on each group's best-scored response, -1 on its worst, 0 elsewhere.

    The signs mark the pair the pairwise loss reads (:func:`rlhfkit.losses.best_worst_signs`);
    a group whose scores all tie has no pair and all 0.
    """
    signs = best_worst_signs(b.scores.view(-1, b.group_size).float())  # (P, k)
    return Advantages(signs.view(-1)[:, None].to(b.response_mask.device) * b.response_mask)


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


@register_policy_loss("pairwise")
def pairwise_objective(u: Update) -> tuple[Tensor, dict[str, Tensor]]:
    """The pairwise ``--loss`` of offline DPO (dpo, ipo, pref-ft, unlikelihood) on each group's pair.

    The rows come in whole groups of ``u.group_size``; the advantages' sign marks the chosen
    (+) and rejected (-) response of a group (:func:`best_worst_advantages`). The sequence
    log-probs are the sums over the loss mask of the policy's token log-probs; the reference's
    are the reference policy's (``--ref-policy sft``) or those of the policy that sampled the
    batch (``--ref-policy previous``, the old log-probs). The loss is the mean over the pairs of
    the batch (0 with no pair); the implicit-reward metrics are their means too.
    """
    cfg, k = u.cfg, u.group_size
    mask = u.mask.to(u.logprobs.dtype)
    ref = u.old_logprobs if cfg.ref_policy == "previous" else u.ref_logprobs
    signs = u.advantages.sum(-1).sign().view(-1, k)  # (P, k)
    has_pair = (signs.max(-1).values > 0) & (signs.min(-1).values < 0)
    first = torch.arange(signs.shape[0], device=signs.device) * k
    c = (first + signs.argmax(-1))[has_pair]
    r = (first + signs.argmin(-1))[has_pair]
    logps = (u.logprobs * mask).sum(-1)  # (b,)
    ref_logps = (ref.to(mask.dtype) * mask).sum(-1).detach()
    lengths = mask.sum(-1)
    bool_mask = mask.bool()
    pairs = PairBatch(logps[c], logps[r], ref_logps[c], ref_logps[r], lengths[c], lengths[r],
                      u.logprobs[c], bool_mask[c], u.logprobs[r], bool_mask[r])
    n = max(int(c.numel()), 1)  # no pair: a loss of 0 (with its graph) and metrics of 0
    per_pair = pairwise_losses(pairs, cfg)  # (pairs,)
    loss = per_pair.sum() / n
    weight = torch.full_like(per_pair, 1.0 / n)
    moved = kl_penalty(u.old_logprobs, u.logprobs.detach(), "k3")  # from the sampling policy
    return loss, {"loss/policy": loss, **pair_metrics(pairs, weight, cfg.beta),
                  "policy/approx_kl_k3": masked_mean(moved, u.mask)}
