"""Every loss and estimator of rlhfkit as a pure function of tensors.

Conventions: each loss returns a per-example (or per-token) tensor and a small dict of
diagnostics; trainers reduce (sum, or mean over the right units) themselves. Nothing here touches
a model, an optimizer or global state, so each function is tested against values worked out by
hand in ``tests/test_losses.py``.
"""

from __future__ import annotations

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

    Returns:
        Per-example loss (N,) and detached diagnostics: ``rewards`` (N,) = ``beta * r`` and
        ``kl`` () = ``z0``.
    """
    ratio = logps.float() - ref_logps.float()  # (N,)
    z0 = (kl_logps.float() - kl_ref_logps.float()).mean().detach().clamp(min=0)  # ()
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
