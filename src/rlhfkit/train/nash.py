"""Nash learning from human feedback (Munos et al. 2023, "Nash Learning from Human Feedback").

The objective is a policy preferred to any other one, ``pi* = argmax_pi min_pi' P(pi > pi')``:
the Nash equilibrium of the two-player symmetric game whose payoff is a pairwise preference
``P(y > y' | x)``. Unlike the maximiser of a Bradley–Terry reward it exists and is sensible even
when preferences are non-transitive (rock > scissors > paper > rock): then it mixes.

This module holds the tabular solver (a finite set of responses to one prompt), which states the
algorithm in a few lines and is what the unit tests check:

- :func:`nash_md` iterates Nash-MD (eq. 8): play against the geometric mixture
  ``pi_mix ∝ pi^(1 - eta*tau) * pi_ref^(eta*tau)`` and take the mirror-descent step
  ``pi_next ∝ pi_mix * exp(eta * P(y > pi_mix))``. Its last iterate converges to the
  tau-regularised Nash equilibrium (Munos et al. 2023, Theorem 1).
- :func:`fit_bradley_terry` and :func:`maximise_reward` are the RLHF baseline on the same
  preferences: fit one scalar reward per response, then solve
  ``argmax_pi E_pi[r] - tau * KL(pi || pi_ref)``, whose solution ``pi_ref * exp(r / tau)``
  collapses on the best-rewarded response as tau shrinks.
- :func:`exploitability` measures how far a policy is from the Nash equilibrium:
  ``max_y P(y > pi) - 1/2``, zero exactly at a Nash equilibrium of the unregularised game.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.losses import bradley_terry_loss, nash_md_step

Tensor = torch.Tensor


def check_preference(preference: Tensor, atol: float = 1e-5) -> None:
    """Raise ``ValueError`` unless ``P`` is a (K, K) matrix in [0, 1] with ``P + P^T = 1``."""
    if preference.ndim != 2 or preference.shape[0] != preference.shape[1]:
        raise ValueError(f"preference must be (K, K), got {tuple(preference.shape)}")
    if (preference < 0).any() or (preference > 1).any():
        raise ValueError("preference probabilities must lie in [0, 1]")
    if not torch.allclose(preference + preference.T, torch.ones_like(preference), atol=atol):
        raise ValueError("preference must satisfy P(y > y') = 1 - P(y' > y)")


def exploitability(preference: Tensor, probs: Tensor) -> float:
    """``max_y P(y > pi) - 1/2``: how much the best response beats ``pi`` (0 at a Nash)."""
    return float((preference.double() @ probs.double()).max() - 0.5)


@dataclass
class NashMDResult:
    """Outcome of the tabular solver."""

    probs: Tensor
    """(K,) the last iterate pi_T."""
    exploitability: list[float] = field(default_factory=list)
    """Exploitability of each iterate, pi_0 first."""


def nash_md(
    preference: Tensor,
    ref_probs: Tensor | None = None,
    eta: float = 0.5,
    tau: float = 0.1,
    steps: int = 500,
    init_probs: Tensor | None = None,
) -> NashMDResult:
    """Run Nash-MD on a finite set of K responses (Munos et al. 2023, eq. 8).

    Args:
        preference: (K, K) ``P[y, y'] = P(y > y')`` with ``P + P^T = 1``.
        ref_probs: (K,) reference policy mu (uniform if None).
        eta: Step size of mirror descent; ``eta * tau`` must be at most 1.
        tau: Strength of the regularisation towards the reference.
        steps: Number of updates.
        init_probs: (K,) pi_0 (the reference if None).

    Returns:
        The last iterate and the exploitability along the way.
    """
    check_preference(preference)
    pref = preference.double()
    k = pref.shape[0]
    ref = torch.full((k,), 1.0 / k, dtype=torch.float64) if ref_probs is None \
        else ref_probs.double()
    log_ref = ref.log()
    log_pi = log_ref.clone() if init_probs is None else init_probs.double().log()
    history = [exploitability(pref, log_pi.exp())]
    for _ in range(steps):
        log_pi = nash_md_step(log_pi, log_ref, pref, eta, tau).double()
        history.append(exploitability(pref, log_pi.exp()))
    return NashMDResult(probs=log_pi.exp(), exploitability=history)


def fit_bradley_terry(preference: Tensor, steps: int = 300, lr: float = 1.0) -> Tensor:
    """Fit one scalar reward per response to every pairwise probability (soft-label BT).

    Minimises ``sum_{y != y'} BCE(sigmoid(r_y - r_y'), P[y, y'])`` by gradient descent; the
    rewards are centred (BT cannot see a shift).

    Args:
        preference: (K, K) pairwise probabilities.
        steps: Gradient steps.
        lr: Learning rate of plain gradient descent.

    Returns:
        (K,) rewards with mean 0.
    """
    check_preference(preference)
    k = preference.shape[0]
    rows, cols = torch.triu_indices(k, k, offset=1)
    target = preference[rows, cols].double()  # (K(K-1)/2,) P(y_i > y_j)
    rewards = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([rewards], lr=lr)
    for _ in range(steps):
        # A soft label p is the mixture of "i wins" (weight p) and "j wins" (weight 1 - p).
        win, _ = bradley_terry_loss(rewards[rows], rewards[cols])
        lose, _ = bradley_terry_loss(rewards[cols], rewards[rows])
        loss = (target * win + (1 - target) * lose).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return rewards - rewards.mean()


def maximise_reward(rewards: Tensor, ref_probs: Tensor | None = None, tau: float = 0.1) -> Tensor:
    """Solve ``argmax_pi E_pi[r] - tau * KL(pi || pi_ref)``: ``pi ∝ pi_ref * exp(r / tau)``.

    The closed form of the KL-regularised RLHF objective (e.g. Rafailov et al. 2023, eq. 4).

    Args:
        rewards: (K,) one reward per response.
        ref_probs: (K,) reference policy (uniform if None).
        tau: KL coefficient.

    Returns:
        (K,) the optimal policy.
    """
    k = rewards.shape[0]
    ref = torch.full((k,), 1.0 / k, dtype=torch.float64) if ref_probs is None \
        else ref_probs.double()
    return torch.softmax(ref.log() + rewards.double() / tau, dim=-1)
