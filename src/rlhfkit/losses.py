"""Every loss and estimator of rlhfkit as a pure function of tensors.

Conventions: each loss returns a per-example (or per-token) tensor and a small dict of
diagnostics; trainers reduce (sum, or mean over the right units) themselves. Nothing here touches
a model, an optimizer or global state, so each function is tested against values worked out by
hand in ``tests/test_losses.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# Step 1: supervised fine-tuning
# --------------------------------------------------------------------------------------------


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Negative log-likelihood of each target token (teacher forcing).

    Args:
        logits: (N, V) unnormalised scores for N positions.
        targets: (N,) the token that follows each position.

    Returns:
        (N,) ``-log softmax(logits)[target]``, computed in fp32 for stability.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none")


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each target token under ``softmax(logits / temperature)``.

    Args:
        logits: (..., V).
        targets: (...) token ids.
        temperature: Sampling temperature the tokens were drawn with.

    Returns:
        (...) log-probs in fp32.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    # log_softmax at the target = logit[target] - logsumexp(logits), without a (…, V) copy.
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# --------------------------------------------------------------------------------------------
# Step 2: reward models
# --------------------------------------------------------------------------------------------


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    tie: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley–Terry negative log-likelihood of each comparison.

    ``P(chosen > rejected) = sigmoid(r_c - r_r)`` (Ouyang et al. 2022, eq. 1). With a margin m
    (Llama 2, Touvron et al. 2023, eq. 2) the loss is ``-log sigmoid(r_c - r_r - m)``. A tie is
    the outcome "each wins with probability 1/2": ``-(log sigmoid(d) + log sigmoid(-d)) / 2``,
    minimal at ``d = 0``.

    Args:
        chosen_rewards: (P,) rewards of the preferred responses.
        rejected_rewards: (P,) rewards of the other responses.
        margin: Optional (P,) required margin (0 where absent).
        tie: Optional (P,) bool, True where the labeler judged a tie.

    Returns:
        Per-pair loss (P,) and diagnostics: ``accuracy`` (P,) 1.0 where r_c > r_r strictly and the
        pair is not a tie (ties count as wrong), and ``margin`` (P,) = r_c - r_r.
    """
    diff = chosen_rewards.float() - rejected_rewards.float()
    shifted = diff - margin.float() if margin is not None else diff
    loss = -F.logsigmoid(shifted)
    if tie is not None:
        tie_loss = -(F.logsigmoid(diff) + F.logsigmoid(-diff)) / 2
        loss = torch.where(tie, tie_loss, loss)
        correct = (diff > 0) & ~tie
    else:
        correct = diff > 0
    return loss, {"accuracy": correct.float(), "margin": diff.detach()}


def pointwise_loss(rewards: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Logistic loss for binary feedback: ``P(👍) = sigmoid(r)``.

    Args:
        rewards: (N,) scalar rewards.
        labels: (N,) 1.0 for 👍, 0.0 for 👎.

    Returns:
        Per-example loss (N,) and ``accuracy`` (N,): the sign of r agrees with the label.
    """
    labels = labels.float()
    loss = F.binary_cross_entropy_with_logits(rewards.float(), labels, reduction="none")
    correct = (rewards > 0).float() == labels
    return loss, {"accuracy": correct.float()}


def score_regression_loss(rewards: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Squared error to a score: ``(r - t)^2``, for score (Likert) feedback read as a target.

    The targets are standardised scores ``t = (s - mean) / std`` over the training records, so
    the reward keeps the unit scale the pairwise losses give it and ``mean + std * r`` reads
    back as a score.

    Args:
        rewards: (N,) scalar rewards.
        targets: (N,) standardised scores.

    Returns:
        Per-example loss (N,) and ``abs_error`` (N,): ``|r - t|``.
    """
    error = rewards.float() - targets.float()
    return error ** 2, {"abs_error": error.abs().detach()}


def reward_centering_penalty(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Per-pair ``(r_c + r_r)^2``, which pulls the mean reward towards zero.

    BT is invariant to adding a constant to every reward, so the scale the RM settles on is
    arbitrary; a small multiple of this penalty (Eisenstein et al. 2023) keeps rewards centred,
    which helps a downstream KL-regularised policy objective.
    """
    return (chosen_rewards.float() + rejected_rewards.float()) ** 2


# --------------------------------------------------------------------------------------------
# Direct preference optimisation
# --------------------------------------------------------------------------------------------
# Inputs are log-probabilities of whole responses, log pi(y | x) = sum_t log pi(y_t | x, y_<t)
# over response tokens only (the prompt is context), under the policy being trained and under
# the frozen reference. ``*_ratio = logps - ref_logps`` is the log-ratio whose multiple
# beta * log(pi / pi_ref) is the DPO implicit reward (Rafailov et al. 2023, eq. 5).


def _implicit_reward_diagnostics(
    chosen_rewards: Tensor, rejected_rewards: Tensor
) -> dict[str, Tensor]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    margins = chosen_rewards - rejected_rewards
    return {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "margins": margins,
        "accuracy": (margins > 0).float(),
    }


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO loss of each preference pair, optionally with label smoothing (conservative DPO).

    With ``h = beta * ((log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r)))``
    the loss is ``-log sigmoid(h)`` (Rafailov et al. 2023, eq. 7): Bradley–Terry on the
    implicit rewards ``r = beta * log pi / pi_ref``, whose partition function cancels in the
    difference. Label smoothing ``eps`` assumes each label is flipped with probability ``eps``
    (conservative DPO, Mitchell 2023): ``-(1 - eps) log sigmoid(h) - eps log sigmoid(-h)``,
    which stops pushing once ``sigmoid(h) = 1 - eps`` instead of driving the margin to infinity.

    Args:
        chosen_logps: (P,) summed response log-probs of the preferred responses, policy.
        rejected_logps: (P,) the same for the other responses.
        ref_chosen_logps: (P,) the preferred responses under the reference.
        ref_rejected_logps: (P,) the other responses under the reference.
        beta: Strength of the KL constraint; the implicit reward is ``beta * log-ratio``.
        label_smoothing: Assumed label-flip probability ``eps`` in [0, 0.5).

    Returns:
        Per-pair loss (P,) and detached diagnostics, each (P,): ``chosen_rewards`` and
        ``rejected_rewards`` (``beta * log-ratio``), ``margins`` (their difference) and
        ``accuracy`` (1.0 where the margin is strictly positive).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_rewards = beta * (chosen_logps.float() - ref_chosen_logps.float())  # (P,)
    rejected_rewards = beta * (rejected_logps.float() - ref_rejected_logps.float())  # (P,)
    h = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(h)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-h)
    return loss, _implicit_reward_diagnostics(chosen_rewards, rejected_rewards)


def ipo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO loss of each pair: the log-ratio gap regressed onto ``1 / (2 beta)``.

    ``h = (log pi(y_c) - log pi_ref(y_c)) / |y_c| - (log pi(y_r) - log pi_ref(y_r)) / |y_r|``
    and the loss is ``(h - 1 / (2 beta))^2`` (Azar et al. 2023, eq. 17, with ``tau = beta``).
    Unlike DPO the target is finite, so a deterministic preference cannot push the policy
    arbitrarily far from the reference. The log-ratios are averaged per token, as the IPO
    authors recommend for sequences and TRL does; ``beta`` is on that per-token scale.

    Args:
        chosen_logps: (P,) summed response log-probs of the preferred responses, policy.
        rejected_logps: (P,) the same for the other responses.
        ref_chosen_logps: (P,) the preferred responses under the reference.
        ref_rejected_logps: (P,) the other responses under the reference.
        chosen_lengths: (P,) number of response tokens in each preferred response.
        rejected_lengths: (P,) number of response tokens in each other response.
        beta: Regularisation ``tau``; the target gap is ``1 / (2 beta)``.

    Returns:
        Per-pair loss (P,) and detached diagnostics as in :func:`dpo_loss`, with rewards
        ``beta * per-token log-ratio`` (so a margin of 0.5 is the target).
    """
    chosen_ratio = (chosen_logps.float() - ref_chosen_logps.float()) / chosen_lengths.clamp(min=1)
    rejected_ratio = (rejected_logps.float() - ref_rejected_logps.float()) / rejected_lengths.clamp(
        min=1
    )
    h = chosen_ratio - rejected_ratio  # (P,)
    loss = (h - 1.0 / (2.0 * beta)) ** 2
    return loss, _implicit_reward_diagnostics(beta * chosen_ratio, beta * rejected_ratio)


def kto_loss(
    logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl_logps: Tensor,
    kl_ref_logps: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO loss of each example with binary feedback (Ethayarajh et al. 2024, eq. 8).

    With ``r = log pi(y|x) - log pi_ref(y|x)`` and the reference point ``z0``, the value is
    ``lambda_D * sigmoid(beta * (r - z0))`` for a desirable response and
    ``lambda_U * sigmoid(beta * (z0 - r))`` for an undesirable one, and the loss is
    ``lambda_y - value``. ``z0`` estimates ``KL(pi || pi_ref)`` from *mismatched* pairs
    ``(x_i, y'_i)``, a prompt with another example's response: the mean of their log-ratios,
    clamped at 0 and detached, as in the paper (sec. 4.1), so no gradient flows through it.

    Args:
        logps: (N,) summed response log-probs under the policy.
        ref_logps: (N,) the same under the reference.
        desirable: (N,) bool, True for thumbs up.
        kl_logps: (M,) policy log-probs of the mismatched prompt-response pairs.
        kl_ref_logps: (M,) reference log-probs of the same mismatched pairs.
        beta: Scale of the implicit reward inside the sigmoid.
        desirable_weight: ``lambda_D``.
        undesirable_weight: ``lambda_U``; the paper suggests
            ``lambda_D * n_D / (lambda_U * n_U)`` in [1, 4/3].
        reduce: Sums a tensor over processes: ``z0`` is then the mean over the mismatched
            pairs of every process, clamped once, as one process holding them all would get
            (a mean of per-process clamped means is larger). None = these pairs alone.

    Returns:
        Per-example loss (N,) and detached diagnostics: ``rewards`` (N,) = ``beta * r`` and
        ``kl`` () = ``z0``.
    """
    ratio = logps.float() - ref_logps.float()  # (N,)
    kl_ratio = (kl_logps.float() - kl_ref_logps.float()).detach()  # (M,)
    if reduce is None:
        z0 = kl_ratio.mean().clamp(min=0)  # ()
    else:
        total = reduce(torch.stack([kl_ratio.sum(), kl_ratio.new_tensor(float(kl_ratio.numel()))]))
        z0 = (total[0] / total[1].clamp(min=1)).clamp(min=0)
    desirable = desirable.bool()
    loss = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio))),
    )
    return loss, {"rewards": (beta * ratio).detach(), "kl": z0}


def preferred_ft_loss(chosen_logps: Tensor, chosen_lengths: Tensor) -> tuple[Tensor, dict]:
    """Preferred-FT baseline: supervised fine-tuning on the preferred response only.

    The per-pair loss is the mean token NLL of the chosen response, ``-log pi(y_c) / |y_c|``
    (the "Preferred-FT" baseline of Rafailov et al. 2023, sec. 6); the rejected response is
    ignored.

    Args:
        chosen_logps: (P,) summed response log-probs of the preferred responses.
        chosen_lengths: (P,) number of response tokens in each.

    Returns:
        Per-pair loss (P,) and an empty dict.
    """
    return -chosen_logps.float() / chosen_lengths.clamp(min=1), {}


def unlikelihood_loss(
    chosen_token_logps: Tensor,
    chosen_mask: Tensor,
    rejected_token_logps: Tensor,
    rejected_mask: Tensor,
    alpha: float = 1.0,
    eps: float = 1e-5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Unlikelihood baseline: raise p(chosen) and lower p(rejected), token by token.

    Per pair: ``mean_t -log p(y_c,t)  +  alpha * mean_t -log(1 - p(y_r,t))`` (unlikelihood
    training, Welleck et al. 2019, eq. 4, applied to the rejected response's tokens; the DPO
    paper's "Unlikelihood" baseline). ``1 - p`` is computed as ``-expm1(log p)`` and clamped
    at ``eps`` so that a token the policy is sure of gives a large but finite loss.
    Masked positions may hold anything (padding); they never reach the result.

    Args:
        chosen_token_logps: (P, T) per-token log-probs of the preferred responses.
        chosen_mask: (P, T) bool, True at response tokens.
        rejected_token_logps: (P, T') per-token log-probs of the other responses.
        rejected_mask: (P, T') bool, True at response tokens.
        alpha: Weight of the unlikelihood term.
        eps: Floor of ``1 - p``.

    Returns:
        Per-pair loss (P,) and diagnostics (P,): ``nll`` and ``unlikelihood``, the two terms.
    """
    chosen_mask, rejected_mask = chosen_mask.bool(), rejected_mask.bool()
    zero = chosen_token_logps.new_zeros(()).float()
    nll = torch.where(chosen_mask, -chosen_token_logps.float(), zero).sum(-1)
    nll = nll / chosen_mask.sum(-1).clamp(min=1)  # (P,)
    one_minus_p = (-torch.expm1(rejected_token_logps.float())).clamp(min=eps)
    ul = torch.where(rejected_mask, -torch.log(one_minus_p), zero).sum(-1)
    ul = ul / rejected_mask.sum(-1).clamp(min=1)  # (P,)
    return nll + alpha * ul, {"nll": nll.detach(), "unlikelihood": ul.detach()}


# --------------------------------------------------------------------------------------------
# Policy optimisation
# --------------------------------------------------------------------------------------------
# Inputs are per-token tensors over the response tokens of sampled sequences, (B, T) with a
# ``mask`` (B, T) that is 1 on the response tokens (up to and including EOS) and 0 on padding.
# Masked positions may hold anything; no function lets them reach a result. ``logprobs`` are
# the current policy's log-probs of the sampled tokens, ``old_logprobs`` those at sampling time,
# ``ref_logprobs`` the reference (SFT) policy's.


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over ``dim``, or all of them)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the unmasked entries.

    ``(x - mean) / sqrt(var + eps)`` with the population variance over every position where
    ``mask`` is 1; with ``shift_mean=False`` the mean is added back, so only the scale changes.
    Masked positions come out as 0.

    Args:
        x: (B, T) or (B,) values, e.g. advantages.
        mask: Same shape, 1 where ``x`` counts; default all ones.
        shift_mean: Subtract the mean (True) or keep it (False).
        eps: Added to the variance.
        reduce: Sums a tensor over processes (data parallelism), so the mean and variance
            are those of the global batch; None = this batch alone.

    Returns:
        The whitened tensor, same shape.
    """
    mask = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    mean = _global_mean(x, mask, reduce)
    var = _global_mean((x - mean) ** 2, mask, reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def _global_mean(x: Tensor, mask: Tensor, reduce: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Masked mean of ``x``, over all processes when ``reduce`` sums across them."""
    if reduce is None:
        return masked_mean(x, mask)
    total = reduce(torch.stack([(x * mask).sum(), mask.sum()]).double())
    return (total[0] / total[1].clamp(min=1)).to(x.dtype)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    With ``r = log pi(y_t) - log pi_ref(y_t)`` (Schulman 2020, "Approximating KL divergence"):

    - ``k1 = r``: unbiased, can be negative per token; the InstructGPT reward penalty.
    - ``k2 = r^2 / 2``: biased, never negative, low variance; its gradient is that of KL.
    - ``k3 = exp(-r) - 1 + r``: unbiased and never negative (``(ratio - 1) - log ratio`` with
      ``ratio = pi_ref / pi``); GRPO's KL loss term (Shao et al. 2024, eq. 4).

    Args:
        logprobs: (B, T) policy log-probs of the sampled tokens.
        ref_logprobs: (B, T) reference log-probs of the same tokens.
        kind: ``k1``, ``k2`` or ``k3``.

    Returns:
        (B, T) per-token estimates (fp32).
    """
    r = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        return r
    if kind == "k2":
        return 0.5 * r * r
    if kind == "k3":
        return torch.expm1(-r) + r
    raise ValueError(f"kl kind must be k1, k2 or k3, got {kind!r}")


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go ``G_t = sum_{s >= t} gamma^(s-t) r_s`` over the unmasked tokens.

    The REINFORCE weight of the action at ``t`` (only rewards that come after an action can be
    credited to it). Masked positions count as reward 0, come out as 0, and are skipped: ``s``
    counts the unmasked tokens only, so in a multi-turn episode (the environment's tokens
    masked, :mod:`rlhfkit.train.episodes`) the discount runs over the policy's own tokens.

    Args:
        rewards: (B, T) per-token rewards.
        mask: (B, T) 1 on response tokens.
        gamma: Discount factor in [0, 1].

    Returns:
        (B, T) returns.
    """
    keep = mask.bool()
    mask = mask.to(rewards.dtype)
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(keep[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns * mask


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``A_t = sum_l (gamma lam)^l delta_{t+l}``,
    with the value after the last response token taken as 0 (the episode ends there). Masked
    positions count as reward 0 and value 0 and are skipped: ``s_{t+1}`` is the state before
    the next *unmasked* token, so the environment's tokens inside a multi-turn episode (0 in
    the mask, :mod:`rlhfkit.train.episodes`) do not cut the bootstrap from one turn to the next.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value estimates ``V(s_t)`` of the state before each token.
        mask: (B, T) 1 on response tokens.
        gamma: Discount factor.
        lam: GAE lambda (1 = Monte-Carlo returns minus V, 0 = one-step TD error).

    Returns:
        ``advantages`` (B, T) and ``returns`` (B, T) = advantages + values (the value targets),
        both 0 at masked positions.
    """
    keep = mask.bool()
    mask = mask.to(rewards.dtype)
    rewards, values = rewards.float() * mask, values.float() * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(last)  # V of the next unmasked token's state (0 at the end)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(keep[:, t], delta + gamma * lam * last, last)
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, per token (Schulman et al. 2017, eq. 7), as a loss.

    With ``rho = exp(logprobs - old_logprobs)`` the loss is
    ``max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``: the gradient vanishes once the ratio has
    moved past the clip edge in the direction the advantage favours.

    Args:
        logprobs: (B, T) log-probs under the policy being updated.
        old_logprobs: (B, T) log-probs at sampling time (no gradient).
        advantages: (B, T) advantages (no gradient).
        clip_range: ``eps``.

    Returns:
        Per-token loss (B, T) and detached per-token diagnostics: ``clipped`` (1.0 where the
        clipped term is the larger one, i.e. the token gets no gradient), ``approx_kl_k3``
        (``(rho - 1) - log rho``, the k3 estimate of ``KL(old || new)`` per token: what
        ``--target-kl`` is compared with), ``approx_kl_k2`` (``(log rho)^2 / 2``, the estimate
        TRL's PPO logged as ``approxkl``) and ``ratio``.
    """
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    return loss, _ratio_diagnostics(log_ratio, clipped > unclipped)


def _ratio_diagnostics(log_ratio: Tensor, clipped: Tensor) -> dict[str, Tensor]:
    """Detached per-token diagnostics of an importance ratio ``exp(log_ratio)``."""
    log_ratio = log_ratio.detach()
    return {"clipped": clipped.detach().float(),
            "approx_kl_k3": torch.expm1(log_ratio) - log_ratio,
            "approx_kl_k2": 0.5 * log_ratio * log_ratio,
            "ratio": torch.exp(log_ratio)}


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss, per token: ``0.5 max((V - R)^2, (clip(V, V_old +- eps) - R)^2)``.

    The value analogue of the clipped policy objective used by OpenAI's PPO baselines and
    InstructGPT-era RLHF code (Ziegler et al. 2019): a value prediction cannot move more than
    ``eps`` from its value at sampling time without losing its gradient.

    Args:
        values: (B, T) current value predictions.
        old_values: (B, T) predictions at sampling time.
        returns: (B, T) value targets (e.g. from :func:`gae`).
        clip_range: ``eps`` (in reward units).

    Returns:
        Per-token loss (B, T) and ``clipped`` (B, T): 1.0 where the clipped error is larger.
    """
    values = values.float()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * torch.maximum(err, err_clipped)
    return loss, {"clipped": (err_clipped > err).float().detach()}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of ``softmax(logits)`` at each position.

    Args:
        logits: (..., V).

    Returns:
        (...) entropies in nats (fp32).
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def rloo_advantages(scores: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, eq. 5).

    For K samples of one prompt, sample i's baseline is the mean score of the *other* K - 1:
    ``A_i = r_i - (sum_j r_j - r_i) / (K - 1) = K / (K - 1) * (r_i - mean_j r_j)``. The baseline
    does not depend on sample i, so the gradient stays unbiased.

    Args:
        scores: (P, K) one score per sample, K >= 2 samples for each of P prompts.

    Returns:
        (P, K) advantages; each row sums to 0.
    """
    k = scores.shape[-1]
    if k < 2:
        raise ValueError("rloo_advantages needs at least 2 samples per prompt")
    total = scores.sum(-1, keepdim=True)
    return scores - (total - scores) / (k - 1)


def grpo_advantages(scores: Tensor, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's group-relative advantages (Shao et al. 2024, sec. 4.1.2, outcome supervision).

    ``A_i = (r_i - mean(r)) / (std(r) + eps)`` over the K samples of one prompt, with the sample
    standard deviation (Bessel-corrected, as in the reference implementations). ``scale=False``
    drops the division (Dr. GRPO, Liu et al. 2025), which avoids up-weighting prompts whose
    samples all score alike.

    Args:
        scores: (P, K) one score per sample, K >= 2 samples for each of P prompts.
        scale: Divide by the group's standard deviation.
        eps: Added to the standard deviation.

    Returns:
        (P, K) advantages.
    """
    if scores.shape[-1] < 2:
        raise ValueError("grpo_advantages needs at least 2 samples per prompt")
    centred = scores - scores.mean(-1, keepdim=True)
    if not scale:
        return centred
    return centred / (scores.std(-1, keepdim=True) + eps)


def best_worst_signs(scores: Tensor) -> Tensor:
    """Online preference pairs: +1 on each group's best response, -1 on its worst, 0 elsewhere.

    The pair of a group of K sampled responses is its highest-scored one (chosen) against its
    lowest-scored one (rejected), as online DPO picks them from a reward model's or a labeler's
    scores (Guo et al. 2024; Xiong et al. 2024 take the best and worst of K). Among equal
    scores the first response counts. A group whose scores are all equal (a tie, or K copies
    of one response) gives no pair: its row is all 0.

    Args:
        scores: (G, K) one score per response, higher is better, K >= 2.

    Returns:
        (G, K) float: +1 at the chosen response, -1 at the rejected one, 0 elsewhere.
    """
    if scores.ndim != 2 or scores.shape[-1] < 2:
        raise ValueError(f"best_worst_signs needs (G, K >= 2) scores, got {tuple(scores.shape)}")
    signs = torch.zeros_like(scores, dtype=torch.float32)
    signs.scatter_(1, scores.argmax(-1, keepdim=True), 1.0)
    signs.scatter_(1, scores.argmin(-1, keepdim=True), -1.0)
    has_pair = scores.max(-1).values > scores.min(-1).values  # (G,)
    return signs * has_pair[:, None]


def groups_with_signal(scores: Tensor, tol: float = 1e-6) -> Tensor:
    """(P,) True for the groups whose K scores are not all equal (DAPO's dynamic sampling).

    A group whose samples all score the same (all right, or all wrong, on a 0/1 verifier) has
    group-relative advantages of 0: it gives the policy no gradient, only a KL term, and under a
    token-mean loss it dilutes the groups that do (Yu et al. 2025, sec. 3.2, eq. 11 keeps
    ``0 < |{correct}| < G``).

    Args:
        scores: (P, K) one score per sample.
        tol: Scores closer than this count as equal.
    """
    return (scores.amax(-1) - scores.amin(-1)) > tol


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int,
                     penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment, a length-aware reward added to the score (eq. 13).

    With ``L_max`` = ``max_length`` and the buffer ``L_cache``::

        R(y) = 0                                   if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
             = -1                                  if |y| > L_max

    times ``penalty``: 0 up to the buffer, then falling linearly to ``-penalty`` at the limit, so
    the policy learns to finish before it is cut without a cliff at the limit. A response cut at
    ``max_new_tokens`` has ``|y| = L_max`` and gets the full ``-penalty``.

    Args:
        lengths: (B,) response lengths in tokens.
        max_length: ``L_max`` (``--max-new-tokens``).
        buffer: ``L_cache``, 0 < buffer <= max_length.
        penalty: The largest punishment.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in 1..max_length={max_length}, got {buffer}")
    lengths = lengths.float()
    start = max_length - buffer
    ramp = (start - lengths) / buffer  # <= 0 past the start
    out = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    return penalty * torch.where(lengths > max_length, torch.full_like(lengths, -1.0), out)


def reinforce_loss(logprobs: Tensor, advantages: Tensor) -> Tensor:
    """Per-token REINFORCE loss ``-A_t log pi(y_t)`` (Williams 1992).

    Its gradient is ``-A_t grad log pi(y_t)``, whose expectation is the policy gradient when
    ``A_t`` is the reward-to-go minus any baseline that does not depend on ``y_t``.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the policy.
        advantages: (B, T) weights (no gradient): returns, or returns minus a baseline.

    Returns:
        (B, T) per-token loss.
    """
    return -advantages.detach() * logprobs.float()


def baseline_advantages(returns: Tensor, mask: Tensor, baseline: str = "mean",
                        values: Tensor | None = None,
                        reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Subtract a baseline from per-token returns: ``A_t = G_t - b``.

    - ``none``: ``b = 0``.
    - ``mean``: ``b`` = the mean return over every response token in the batch (Dayan 1990;
      the batch-mean baseline of the lecture notes).
    - ``value``: ``b = V(s_t)``, a learned state value (no gradient flows into it here).

    Args:
        returns: (B, T) reward-to-go.
        mask: (B, T) 1 on response tokens.
        baseline: ``none``, ``mean`` or ``value``.
        values: (B, T) value estimates, required for ``value``.
        reduce: Sums a tensor over processes, so ``mean`` is the global batch's mean.

    Returns:
        (B, T) advantages, 0 at masked positions.
    """
    mask = mask.to(returns.dtype)
    if baseline == "none":
        return returns * mask
    if baseline == "mean":
        return (returns - _global_mean(returns, mask, reduce)) * mask
    if baseline == "value":
        if values is None:
            raise ValueError("baseline='value' needs values")
        return (returns - values.detach().float()) * mask
    raise ValueError(f"baseline must be none, mean or value, got {baseline!r}")


GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
"""How :func:`grpo_loss` averages its per-token terms (see there)."""
IMPORTANCE_LEVELS = ("token", "sequence")
"""Where :func:`grpo_loss` takes the importance ratio: per token (PPO, GRPO) or per sequence (GSPO)."""


def aggregate_token_loss(per_token: Tensor, mask: Tensor, loss_type: str = "bnpo",
                         max_length: int | None = None, normalizer: float | Tensor | None = None
                         ) -> Tensor:
    """Average a (B, T) per-token loss into one number, in one of four ways.

    With ``l_it`` the loss of token t of response i, ``|o_i|`` its length and B responses:

    - ``grpo``: ``1/B sum_i (1/|o_i| sum_t l_it)``, the mean over responses of each response's
      token mean (Shao et al. 2024, eq. 3). A token of a short response weighs more than one of
      a long response, which Liu et al. (2025) show biases towards short correct answers and
      long wrong ones.
    - ``bnpo``: ``sum_it l_it / sum_i |o_i|``, the token mean over the batch given (TRL's name;
      rlhfkit's default): every token of the batch weighs the same.
    - ``dr_grpo``: ``sum_it l_it / (B * max_length)``, a constant normaliser (Dr. GRPO, Liu et al.
      2025): no length term at all.
    - ``dapo``: ``sum_it l_it / normalizer``, the token-level sum divided by a normaliser the
      caller computes over the whole generation batch (Yu et al. 2025, eq. 8): with several
      mini-batches or processes every token of the generation batch weighs the same, where
      ``bnpo`` weighs the tokens of each mini-batch by that mini-batch's own count.
      Without ``normalizer`` it is ``bnpo``.

    Args:
        per_token: (B, T) per-token loss.
        mask: (B, T) 1 on response tokens.
        loss_type: One of :data:`GRPO_LOSS_TYPES`.
        max_length: The longest response allowed (``max_new_tokens``), for ``dr_grpo``.
        normalizer: The token count that ``dapo`` divides by.

    Returns:
        A scalar.
    """
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "bnpo" or (loss_type == "dapo" and normalizer is None):
        return total / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        if not max_length:
            raise ValueError("loss_type 'dr_grpo' needs max_length")
        return total / (per_token.shape[0] * max_length)
    if loss_type == "dapo":
        return total / max(float(normalizer), 1.0)
    raise ValueError(f"loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")


def grpo_loss(
    logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, advantages: Tensor,
    mask: Tensor, *, clip_range: float = 0.2, clip_range_high: float | None = None,
    kl_coef: float = 0.04, loss_type: str = "bnpo", importance_level: str = "token",
    max_length: int | None = None, normalizer: float | Tensor | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO's loss: the clipped surrogate plus ``beta`` times the k3 KL to the reference.

    Per token (Shao et al. 2024, eq. 3-4)
    ``l_it = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i) + beta k3_it`` with
    ``k3 = exp(ref - logp) - (ref - logp) - 1``, averaged by :func:`aggregate_token_loss`.
    ``clip_range_high`` above ``clip_range`` is DAPO's clip-higher (Yu et al. 2025, sec. 3.1).
    The ratio ``rho`` is per token (``importance_level="token"``) or, for GSPO (Zheng et al.
    2025, eq. 7), the per-sequence ``s_i = exp(mean_t(logp_it - old_it))`` given to every token
    of response i, so a response is clipped as a whole.

    Args:
        logprobs: (B, T) log-probs under the policy being updated.
        old_logprobs: (B, T) log-probs at sampling time (no gradient).
        ref_logprobs: (B, T) reference log-probs (no gradient).
        advantages: (B, T) advantages, one value per response repeated over its tokens.
        mask: (B, T) 1 on response tokens.
        clip_range: ``eps_low`` (and ``eps_high`` when ``clip_range_high`` is None).
        clip_range_high: ``eps_high``.
        kl_coef: ``beta`` (0 = no KL term).
        loss_type: How tokens are averaged (:data:`GRPO_LOSS_TYPES`).
        importance_level: ``token`` or ``sequence`` (:data:`IMPORTANCE_LEVELS`).
        max_length: For ``loss_type="dr_grpo"``.
        normalizer: For ``loss_type="dapo"``.
        token_weights: (B, T) weights of each token's surrogate (no gradient), e.g. truncated
            importance weights between the trainer and the sampling engine; None = 1.

    Returns:
        The scalar loss and detached diagnostics: ``policy`` and ``kl`` (the two terms, each
        averaged the same way), and the per-token ``clipped``, ``approx_kl_k3``,
        ``approx_kl_k2``, ``ratio`` of :func:`ppo_policy_loss`.
    """
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_level must be token or sequence, got {importance_level!r}")
    m = mask.to(torch.float32)
    log_ratio = (logprobs.float() - old_logprobs.float()) * m
    if importance_level == "sequence":
        seq = log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        log_ratio = seq.expand_as(log_ratio) * m
    ratio = torch.exp(log_ratio)
    high = clip_range if clip_range_high is None else clip_range_high
    adv = advantages.detach().float()
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    pg = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        pg = pg * token_weights.detach()
    kl = kl_penalty(logprobs, ref_logprobs.detach(), "k3")
    opts = dict(loss_type=loss_type, max_length=max_length, normalizer=normalizer)
    loss = aggregate_token_loss(pg + kl_coef * kl, m, **opts)
    with torch.no_grad():
        diag = _ratio_diagnostics(log_ratio, clipped > unclipped)
        diag["policy"] = aggregate_token_loss(pg, m, **opts)
        diag["kl"] = aggregate_token_loss(kl, m, **opts)
    return loss, diag


# --------------------------------------------------------------------------------------------
# Nash learning
# --------------------------------------------------------------------------------------------
# A pairwise preference model P(y > y' | x) = sigmoid(f(x, y, y')) takes two responses, so it
# can represent non-transitive preferences that no scalar reward can (Munos et al. 2023, §3).
# Nash-MD plays the policy against a geometric mixture of itself and the reference and updates
# it by mirror descent with the preference as the payoff (Munos et al. 2023, §6, eq. 8).


def antisymmetric_logit(logit_ab: Tensor, logit_ba: Tensor) -> Tensor:
    """Symmetrised preference logit ``g(A, B) = (f(A, B) - f(B, A)) / 2``.

    Evaluating the model in both orders and antisymmetrising makes
    ``sigmoid(g(A, B)) = 1 - sigmoid(g(B, A))`` exactly, and ``P(A > A) = 1/2``, whatever the
    backbone does with the order of its inputs.

    Args:
        logit_ab: (N,) raw logit with A in the first slot.
        logit_ba: (N,) raw logit with B in the first slot.

    Returns:
        (N,) antisymmetric logit of ``A > B``.
    """
    return (logit_ab.float() - logit_ba.float()) / 2


def preference_bce_loss(logit_ab: Tensor, logit_ba: Tensor,
                        labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Binary cross-entropy of a pairwise preference model on comparisons.

    ``P(A > B) = sigmoid(g)`` with ``g`` the antisymmetric logit; the target is 1 when A was
    preferred, 0 when B was, and 1/2 for a tie. Because ``g`` is antisymmetric, swapping A and B
    and flipping the label gives the same loss.

    Args:
        logit_ab: (N,) raw logit with A first.
        logit_ba: (N,) raw logit with B first.
        labels: (N,) probability that A is preferred (1, 0 or 1/2).

    Returns:
        Per-comparison loss (N,) and diagnostics: ``prob`` (N,) = P(A > B), ``accuracy`` (N,)
        1.0 where the predicted winner (P != 1/2) matches a non-tie label.
    """
    g = antisymmetric_logit(logit_ab, logit_ba)
    labels = labels.float()
    loss = F.binary_cross_entropy_with_logits(g, labels, reduction="none")
    decided = labels != 0.5
    correct = ((g > 0) & (labels > 0.5)) | ((g < 0) & (labels < 0.5))
    return loss, {"prob": torch.sigmoid(g).detach(), "accuracy": (correct & decided).float()}


def geometric_mixture(logprobs: Tensor, ref_logprobs: Tensor, beta: float) -> Tensor:
    """Log of the normalised geometric mixture ``pi^(1-beta) * pi_ref^beta / Z``.

    Munos et al. (2023), eq. 7, with ``beta = eta * tau``; over the last dimension (a finite set
    of responses, or a vocabulary for the token-level version).

    Args:
        logprobs: (..., K) log pi.
        ref_logprobs: (..., K) log pi_ref.
        beta: Weight of the reference, in [0, 1].

    Returns:
        (..., K) log pi_mix.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    mixed = (1 - beta) * logprobs.float() + beta * ref_logprobs.float()
    return torch.log_softmax(mixed, dim=-1)


def nash_md_step(logprobs: Tensor, ref_logprobs: Tensor, preference: Tensor, eta: float,
                 tau: float) -> Tensor:
    """One Nash-MD update on a finite set of K responses (Munos et al. 2023, eq. 8).

    ``pi_mix = geometric_mixture(pi, pi_ref, eta * tau)`` and
    ``pi_next(y) ∝ pi_mix(y) * exp(eta * P(y > pi_mix))`` with
    ``P(y > pi_mix) = sum_y' P(y > y') pi_mix(y')``: the closed form of
    ``argmax_pi eta * P(pi > pi_mix) - KL(pi || pi_mix)``.

    Args:
        logprobs: (..., K) log pi_t.
        ref_logprobs: (..., K) log pi_ref.
        preference: (..., K, K) ``P[y, y'] = P(y > y')``.
        eta: Mirror-descent step size.
        tau: KL-regularisation strength towards the reference.

    Returns:
        (..., K) log pi_{t+1}.
    """
    log_mix = geometric_mixture(logprobs, ref_logprobs, eta * tau)  # (..., K)
    payoff = (preference.float() @ log_mix.exp().unsqueeze(-1)).squeeze(-1)  # (..., K)
    return torch.log_softmax(log_mix + eta * payoff, dim=-1)


# Preference RL for control


def segment_preference_loss(
    segment_rewards_1: Tensor,
    segment_rewards_2: Tensor,
    preference: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley–Terry loss over summed per-step rewards of two trajectory segments.

    Christiano et al. (2017), eqs. 1–2: ``P(s1 > s2) = exp(sum r1) / (exp(sum r1) + exp(sum r2))
    = sigmoid(R1 - R2)`` with ``R = sum_t r(o_t, a_t)``, and the loss is the cross-entropy
    ``-(mu log P(s1 > s2) + (1 - mu) log P(s2 > s1))`` where ``mu`` is 1 if the first segment is
    preferred, 0 if the second, and 1/2 when they are judged equal.

    Args:
        segment_rewards_1: (B, K) predicted reward of each step of the first segments.
        segment_rewards_2: (B, K) the same for the second segments.
        preference: (B,) ``mu``, the probability that the first segment is preferred.

    Returns:
        (B,) per-pair loss, and diagnostics: ``accuracy`` (the prediction agrees with a strict
        label) and ``margin`` (mean ``R1 - R2``).
    """
    diff = segment_rewards_1.float().sum(-1) - segment_rewards_2.float().sum(-1)  # (B,)
    mu = preference.to(diff.dtype)
    loss = -(mu * F.logsigmoid(diff) + (1 - mu) * F.logsigmoid(-diff))  # (B,)
    strict = mu != 0.5
    correct = ((diff > 0) == (mu > 0.5)) & strict
    accuracy = correct.sum() / strict.sum().clamp(min=1)
    return loss, {"accuracy": accuracy.detach(), "margin": diff.detach().mean()}


def segment_bce_loss(logits: Tensor, labels: Tensor, error_weight: float = 1.0
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-segment binary cross-entropy of "this segment has an error".

    ``loss_j = -w_j [y_j log sigmoid(z_j) + (1 - y_j) log(1 - sigmoid(z_j))]`` with
    ``w_j = error_weight`` for error segments (``y_j = 1``) and 1 otherwise.

    Args:
        logits: (N,) error logits at the segment ends.
        labels: (N,) 1 for an error segment, 0 for a clean one.
        error_weight: Weight of error segments (above 1 when errors are rare).

    Returns:
        The (N,) loss and detached diagnostics: ``correct`` (N,) 1 where the prediction
        (``logit > 0``) matches the label, and ``weight`` (N,).
    """
    labels = labels.float()
    weight = 1.0 + (error_weight - 1.0) * labels
    loss = weight * F.binary_cross_entropy_with_logits(
        logits.float(), labels, reduction="none")
    correct = ((logits > 0).float() == labels).float()
    return loss, {"correct": correct.detach(), "weight": weight.detach()}
