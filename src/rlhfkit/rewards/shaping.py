"""Turning scores into per-token rewards, with a KL penalty to the reference policy.

For a response ``y = (y_1 .. y_n)`` to prompt ``x`` the per-token reward is

    r_t = sum_k w_k * sum_j 1(t = T_j^k) * R_k(x, y, j)  -  beta * (log pi(y_t) - log pi_ref(y_t))

(Wu et al. 2023, "Fine-Grained Human Feedback", eq. 1). A holistic reward model (InstructGPT,
Ouyang et al. 2022, eq. 2) is the special case of one source with one segment that ends at the
last response token ``n``. Sources are given as :class:`DenseRewards`: for each sample a list of
``(token position, score)``; :func:`sequence_rewards` builds that for one score per response.
So a sentence-level reward model drops in by producing its own list of positions.

A response that never ended (hit ``max_new_tokens`` without EOS) can be penalised: its score is
replaced by / lowered with ``missing_eos_penalty``, a common safeguard against the policy
learning to ramble until it is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhfkit.losses import kl_penalty

DenseRewards = list[list[tuple[int, float]]]
"""For each of B samples, ``(response token index, score)`` pairs (index 0 = first token)."""


def normalise_scores(
    scores: torch.Tensor,
    stats: tuple[float, float] | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Optionally standardise RM scores with the stats saved at RM training, then clip them.

    Args:
        scores: (B,) raw reward-model scores.
        stats: ``(mean, std)`` of the RM's rewards on its training responses
            (:attr:`rlhfkit.models.reward.RewardModel.reward_stats`), or None to keep the scale.
        clip: Clip to ``[-clip, clip]`` after normalising (None or 0 = no clipping).

    Returns:
        (B,) scores.
    """
    scores = scores.float()
    if stats is not None:
        mean, std = stats
        scores = (scores - mean) / (std if std > 0 else 1.0)
    if clip:
        scores = scores.clamp(-clip, clip)
    return scores


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last response token (0 for a row with none).

    For a rollout that is ``length - 1``; for a multi-turn episode, whose environment tokens
    are 0 in the mask, it is the last token the policy wrote.
    """
    mask = response_mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.zeros_like(positions)).amax(-1)


def sequence_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> DenseRewards:
    """One score per response, placed on its last response token (EOS, when it ended)."""
    last = last_token_index(response_mask)  # (B,)
    return [[(max(int(i), 0), float(s))] for i, s in zip(last.tolist(), scores.tolist())]


def place_rewards(dense: DenseRewards, response_mask: torch.Tensor) -> torch.Tensor:
    """Scatter ``(position, score)`` lists into a (B, R) tensor; positions past the end clamp.

    A position past the row's last response token goes to that token.
    """
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    last = last_token_index(response_mask).tolist()
    for b, items in enumerate(dense):
        for pos, score in items:
            out[b, min(max(pos, 0), last[b])] += score
    return out


def token_rewards(
    response_mask: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kl_coef: float,
    scores: torch.Tensor | None = None,
    dense: Sequence[DenseRewards] = (),
    weights: Sequence[float] | None = None,
    ended: torch.Tensor | None = None,
    missing_eos_penalty: float = 0.0,
    kl_kind: str = "k1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token rewards: the scores of every source, minus the per-token KL penalty.

    Args:
        response_mask: (B, R) 1 on response tokens (EOS included).
        logprobs: (B, R) policy log-probs of the sampled tokens at sampling time.
        ref_logprobs: (B, R) reference log-probs of the same tokens.
        kl_coef: ``beta``.
        scores: (B,) one (already normalised) score per response, placed on its last token.
        dense: More reward sources, each a :data:`DenseRewards` (fine-grained rewards).
        weights: One weight per source in ``dense`` (default 1 each); ``scores`` has weight 1.
        ended: (B,) bool, whether each response ended; needed for ``missing_eos_penalty``.
        missing_eos_penalty: Added (use a negative number) to the last token's reward of
            every response that never ended (0 = off).
        kl_kind: Estimator of the per-token penalty: ``k1`` (InstructGPT's log-ratio), or
            ``k2``/``k3`` (:func:`rlhfkit.losses.kl_penalty`).

    Returns:
        ``rewards`` (B, R) (0 on padding) and detached diagnostics: ``score`` (B,) the summed
        score rewards, ``kl`` (B, R) the per-token KL estimate, ``non_score`` (B, R)
        ``-beta * kl``.
    """
    mask = response_mask.float()
    kl = kl_penalty(logprobs, ref_logprobs, kl_kind) * mask  # (B, R)
    non_score = -kl_coef * kl
    score_part = torch.zeros_like(mask)
    if scores is not None:
        score_part = score_part + place_rewards(sequence_rewards(scores, response_mask),
                                                response_mask)
    weights = list(weights) if weights is not None else [1.0] * len(dense)
    if len(weights) != len(dense):
        raise ValueError(f"{len(dense)} dense reward sources but {len(weights)} weights")
    for w, source in zip(weights, dense):
        score_part = score_part + w * place_rewards(source, response_mask)
    if missing_eos_penalty and ended is not None:
        last = last_token_index(response_mask)  # (B,)
        penalty = (~ended.bool()).float() * missing_eos_penalty  # (B,)
        score_part[torch.arange(len(last), device=last.device), last] += penalty.to(mask.device)
    rewards = (score_part + non_score) * mask
    return rewards, {"score": score_part.sum(-1).detach(), "kl": kl.detach(),
                     "non_score": non_score.detach()}


@dataclass
class KLController:
    """The KL coefficient ``beta``: fixed, or adapted towards a target KL.

    Adaptive (Ziegler et al. 2019, sec. 2.2): after a batch with mean sequence KL ``KL``,
    ``e = clip(KL / target - 1, -0.2, 0.2)`` and ``beta <- beta * (1 + e * n / horizon)``, where
    ``n`` is the number of samples in the batch. ``beta`` grows while the policy drifts past the
    target and shrinks when it stays closer.

    Args:
        value: Starting ``beta``.
        target: Target KL per response in nats (None = keep ``beta`` fixed).
        horizon: Samples over which an error is corrected (10000 in the paper).
    """

    value: float = 0.05
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, n_samples: int) -> float:
        """Adapt ``beta`` after a batch; returns the new value."""
        if self.target is None or self.target <= 0:
            return self.value
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        """For checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from a checkpoint."""
        self.value = float(state["value"])
