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
