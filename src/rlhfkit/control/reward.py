"""Reward learning from segment comparisons (Christiano et al. 2017, section 2.2).

The paper is "Deep Reinforcement Learning from Human Preferences".

- :class:`RewardEnsemble`: ``M`` small MLPs ``r(o, a)``, each trained on its own bootstrap sample
  of the comparisons (section 2.2.3: "we fit an ensemble of predictors, each trained on |D|
  triples sampled from D with replacement").
- :func:`disagreement`: the variance across members of ``P(s1 > s2)``, used to pick queries
  (section 2.2.4).
- :func:`oracle_preferences`: a synthetic labeler that prefers the segment with the higher true
  return (section 3: "synthetic feedback"), optionally with Bradley–Terry noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from rlhfkit.losses import segment_preference_loss


@dataclass
class Segments:
    """A batch of trajectory segments of fixed length ``K``.

    Steps after the episode terminated are padded with the absorbing state (the terminal
    observation, action 0, true reward 0), so every segment has the same length and the
    predictor can learn that ending the episode is bad.
    """

    obs: Tensor
    """(N, K, D) observations."""
    actions: Tensor
    """(N, K) discrete actions (long) or (N, K, A) continuous actions (float)."""
    true_rewards: Tensor
    """(N, K) the environment's reward, seen only by the oracle and for reporting."""
    absorbing: Tensor = field(default=None)  # type: ignore[assignment]
    """(N, K) True on padded steps after termination."""

    def __post_init__(self) -> None:
        if self.absorbing is None:
            self.absorbing = torch.zeros(self.true_rewards.shape, dtype=torch.bool)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, idx) -> Segments:
        return Segments(self.obs[idx], self.actions[idx], self.true_rewards[idx],
                        self.absorbing[idx])

    @staticmethod
    def cat(parts: list[Segments]) -> Segments:
        """Concatenate batches along the first axis."""
        return Segments(torch.cat([p.obs for p in parts]), torch.cat([p.actions for p in parts]),
                        torch.cat([p.true_rewards for p in parts]),
                        torch.cat([p.absorbing for p in parts]))


class RewardEnsemble(nn.Module):
    """``M`` independent MLPs ``r_m(o, a)``; the reward is their mean.

    Args:
        obs_dim: Size of an observation.
        action_dim: Number of discrete actions (one-hot encoded), or the size of a continuous
            action vector.
        discrete: Whether actions are discrete indices.
        members: Ensemble size ``M``.
        hidden: Width of the two hidden layers.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool = True, members: int = 3,
                 hidden: int = 64) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.discrete = discrete
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(obs_dim + action_dim, hidden), nn.Tanh(),
                          nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            for _ in range(members)
        )

    def _inputs(self, obs: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            actions = nn.functional.one_hot(actions.long(), self.action_dim).to(obs.dtype)
        return torch.cat([obs, actions], dim=-1)  # (..., D + A)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Per-member rewards.

        Args:
            obs: (..., D) observations.
            actions: (...) discrete or (..., A) continuous actions.

        Returns:
            (M, ...) the reward each member predicts.
        """
        x = self._inputs(obs.float(), actions)
        return torch.stack([m(x).squeeze(-1) for m in self.members])

    def reward(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Ensemble-mean reward, (...)."""
        return self(obs, actions).mean(0)


def preference_probs(model: RewardEnsemble, seg_1: Segments, seg_2: Segments) -> Tensor:
    """``P(s1 > s2) = sigmoid(R1 - R2)`` under each member (eq. 1); returns (M, B)."""
    returns_1 = model(seg_1.obs, seg_1.actions).sum(-1)  # (M, B)
    returns_2 = model(seg_2.obs, seg_2.actions).sum(-1)  # (M, B)
    return torch.sigmoid(returns_1 - returns_2)


@torch.no_grad()
def disagreement(model: RewardEnsemble, seg_1: Segments, seg_2: Segments) -> Tensor:
    """Variance across ensemble members of ``P(s1 > s2)`` (section 2.2.4); returns (B,)."""
    return preference_probs(model, seg_1, seg_2).var(0, unbiased=False)


def select_queries(model: RewardEnsemble, seg_1: Segments, seg_2: Segments, n: int) -> Tensor:
    """Indices of the ``n`` candidate pairs on which the ensemble disagrees most, (n,)."""
    scores = disagreement(model, seg_1, seg_2)
    return torch.topk(scores, min(n, len(scores))).indices


def oracle_preferences(seg_1: Segments, seg_2: Segments, noise: float = 0.0,
                       generator: torch.Generator | None = None) -> Tensor:
    """Synthetic labels from the true returns (Christiano et al. 2017, section 3).

    Without noise the segment with the higher true return is preferred (``mu = 1`` or ``0``) and
    equal returns are a tie (``mu = 1/2``, as the paper records "equally preferable"). With
    ``noise = T > 0`` the oracle is itself Bradley–Terry: it prefers the first segment with
    probability ``sigmoid((R1 - R2) / T)``.

    Returns:
        (B,) ``mu``, the probability mass on the first segment.
    """
    diff = seg_1.true_rewards.sum(-1) - seg_2.true_rewards.sum(-1)  # (B,)
    if noise <= 0:
        return torch.where(diff > 0, 1.0, torch.where(diff < 0, 0.0, 0.5))
    p_first = torch.sigmoid(diff / noise)
    return (torch.rand(p_first.shape, generator=generator) < p_first).float()


@dataclass
class PreferenceData:
    """The growing set of labelled comparisons ``D``."""

    seg_1: Segments | None = None
    seg_2: Segments | None = None
    mu: Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return len(self.mu)

    def add(self, seg_1: Segments, seg_2: Segments, mu: Tensor) -> None:
        """Append labelled pairs."""
        if self.seg_1 is None:
            self.seg_1, self.seg_2 = seg_1, seg_2
        else:
            self.seg_1 = Segments.cat([self.seg_1, seg_1])
            self.seg_2 = Segments.cat([self.seg_2, seg_2])
        self.mu = torch.cat([self.mu, mu.float()])


def train_reward_model(model: RewardEnsemble, data: PreferenceData,
                       optimizer: torch.optim.Optimizer, epochs: int = 20,
                       batch_size: int = 64, rng: np.random.Generator | None = None
                       ) -> dict[str, float]:
    """Fit every member on its own bootstrap resample of ``D`` (section 2.2.3).

    Returns:
        ``loss/reward`` and ``rewards/accuracy`` of the ensemble mean on the whole of ``D``.
    """
    rng = rng or np.random.default_rng(0)
    n = len(data)
    assert data.seg_1 is not None and data.seg_2 is not None
    boots = [rng.integers(0, n, size=n) for _ in model.members]
    for _ in range(epochs):
        orders = [rng.permutation(boot) for boot in boots]  # each member's own shuffle
        for start in range(0, n, batch_size):
            total = torch.zeros(())
            for member, order in zip(model.members, orders):
                idx = torch.as_tensor(order[start:start + batch_size])
                s1, s2 = data.seg_1[idx], data.seg_2[idx]
                r1 = member(model._inputs(s1.obs.float(), s1.actions)).squeeze(-1)  # (b, K)
                r2 = member(model._inputs(s2.obs.float(), s2.actions)).squeeze(-1)  # (b, K)
                loss, _ = segment_preference_loss(r1, r2, data.mu[idx])
                total = total + loss.mean()  # members share no weights: one backward for all
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    with torch.no_grad():
        r1 = model.reward(data.seg_1.obs, data.seg_1.actions)
        r2 = model.reward(data.seg_2.obs, data.seg_2.actions)
        loss, diag = segment_preference_loss(r1, r2, data.mu)
    return {"loss/reward": loss.mean().item(), "rewards/accuracy": diag["accuracy"].item()}
