"""Bradley–Terry strengths from pairwise results, and the estimators of verifiable tasks.

The second part (at the end) holds ``pass@k`` (Chen et al. 2021) and the majority vote of
self-consistency (Wang et al. 2022), for :mod:`rlhfkit.evaluate.accuracy` and
``rlhfkit self-improve``.

The arena's ratings (:mod:`rlhfkit.feedback.arena`), the league ratings of
:func:`rlhfkit.evaluate.metrics.bradley_terry_ratings` and the reward that Nash-MD's tabular
demo fits to a preference matrix (:func:`rlhfkit.train.nash.fit_bradley_terry`) all call
:func:`bradley_terry` here.

Model (Bradley & Terry 1952): ``P(i beats j) = p_i / (p_i + p_j) = sigmoid(r_i - r_j)`` with
``r_i = log p_i``. Fitted by the minorisation–maximisation update of Hunter (2004, eq. 3)::

    p_i <- W_i / sum_j n_ij / (p_i + p_j)

where ``W_i`` is i's (weighted) number of wins, a tie or a soft outcome ``y`` counting ``y`` for
i and ``1 - y`` for j, and ``n_ij`` the (weighted) number of games between i and j. The
fixed point is the maximum-likelihood estimate; ``tests/test_stats.py`` checks it against
``choix.mm_pairwise`` (Maystre & Grossglauser 2015).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["bootstrap_bradley_terry", "bradley_terry", "elo", "majority_vote", "pass_at_k"]

Game = tuple[Hashable, Hashable, float]
"""``(i, j, outcome)``: outcome 1 = i won, 0 = j won, 0.5 = a tie (any value in [0, 1])."""

ELO_BASE = 1000.0
"""The mean rating on the Elo scale."""


def bradley_terry(
    games: Sequence[Game],
    *,
    weights: Sequence[float] | None = None,
    prior: float = 0.0,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> dict[Hashable, float]:
    """Bradley–Terry log-strengths, centred so that they average 0.

    Args:
        games: ``(i, j, outcome)`` per game, outcome in [0, 1] (1 = i won, 0.5 = tie); any
            hashable names. A game of a player against itself is ignored.
        weights: weight of each game (default 1); a weight-0.25 game counts a quarter.
        prior: pseudo-games against a virtual opponent of log-strength 0, for every player:
            ``prior`` wins and ``prior`` losses. It keeps an undefeated (or winless) player's
            strength finite and the fit convergent; 0 = plain maximum likelihood.
        max_iter: iteration cap.
        tol: stop when no log-strength moves more than this.

    Returns:
        Name -> log-strength ``r_i`` (natural-log scale; ``r_i - r_j`` is the log-odds that i
        beats j). With ``prior=0`` a player that never lost (or never won) diverges: use a small
        prior then.

    Raises:
        ValueError: an outcome is outside [0, 1], a weight is negative, or the lengths differ.
    """
    if weights is not None and len(weights) != len(games):
        raise ValueError(f"bradley_terry: {len(games)} games but {len(weights)} weights")
    players = sorted({p for g in games for p in g[:2]}, key=repr)
    if not players:
        return {}
    index = {p: k for k, p in enumerate(players)}
    m = len(players)
    wins = [float(prior)] * m
    played: dict[tuple[int, int], float] = {}  # (i, j), i < j -> n_ij
    for k, (a, b, y) in enumerate(games):
        w = 1.0 if weights is None else float(weights[k])
        if not 0.0 <= y <= 1.0 or w < 0:
            raise ValueError(f"bradley_terry: game {k} has outcome {y} and weight {w}; "
                             "expected an outcome in [0, 1] and a weight >= 0")
        i, j = index[a], index[b]
        if i == j:
            continue
        wins[i] += w * y
        wins[j] += w * (1.0 - y)
        key = (min(i, j), max(i, j))
        played[key] = played.get(key, 0.0) + w
    opponents: list[list[tuple[int, float]]] = [[] for _ in range(m)]
    for (i, j), n in played.items():
        opponents[i].append((j, n))
        opponents[j].append((i, n))
    strength = _mm(wins, opponents, prior, max_iter, tol)
    logs = [math.log(s) for s in strength]
    mean = sum(logs) / m
    return {p: logs[index[p]] - mean for p in players}


def _mm(wins: list[float], opponents: list[list[tuple[int, float]]], prior: float,
        max_iter: int, tol: float) -> list[float]:
    """Hunter's MM iterations; returns the strengths ``p_i``."""
    m = len(wins)
    strength = [1.0] * m
    for _ in range(max_iter):
        new = []
        for i in range(m):
            denom = sum(n / (strength[i] + strength[j]) for j, n in opponents[i])
            denom += 2.0 * prior / (strength[i] + 1.0)  # the virtual opponent has p = exp(0)
            new.append(max(wins[i] / denom, 1e-300) if denom > 0 else strength[i])
        if prior == 0.0:  # only ratios are identified; fix the geometric mean at 1
            g = math.exp(sum(math.log(s) for s in new) / m)
            new = [s / g for s in new]
        delta = max(abs(math.log(a) - math.log(b)) for a, b in zip(new, strength))
        strength = new
        if delta < tol:
            break
    return strength


def elo(log_strengths: dict[Hashable, float], base: float = ELO_BASE) -> dict[Hashable, float]:
    """Log-strengths on the Elo scale: ``base + 400 log10 p`` (mean ``base`` when centred)."""
    return {p: base + 400.0 * r / math.log(10) for p, r in log_strengths.items()}


def bootstrap_bradley_terry(
    games: Sequence[Game],
    *,
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
    prior: float = 0.1,
) -> dict[Hashable, dict[str, float]]:
    """Elo ratings with percentile bootstrap intervals over games.

    Each bootstrap round resamples the games with replacement and refits (a model missing from
    a resample keeps the mean rating); the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` percentiles of the refitted ratings. This is
    ``scipy.stats.bootstrap(..., method="percentile")`` (Efron & Tibshirani 1993, sec. 13.3):
    the same meaning as resampling by hand, with scipy's percentile interpolation.

    Args:
        games: ``(i, j, outcome)`` games.
        rounds: bootstrap resamples.
        level: confidence level of the interval.
        seed: seed of the resampling.
        prior: passed to :func:`bradley_terry` (a small prior keeps resamples finite).

    Returns:
        ``{model: {"rating", "low", "high"}}``; with fewer than two games the interval is the
        point itself.
    """
    point = elo(bradley_terry(games, prior=prior))
    models = list(point)
    if len(games) < 2 or rounds < 1:
        return {m: {"rating": r, "low": r, "high": r} for m, r in point.items()}
    import numpy as np
    from scipy.stats import bootstrap

    games = list(games)

    def ratings(idx: Any) -> Any:
        fit = elo(bradley_terry([games[int(k)] for k in idx], prior=prior, max_iter=200,
                                tol=1e-6))
        return np.array([fit.get(m, ELO_BASE) for m in models])

    result = bootstrap((np.arange(len(games)),), ratings, vectorized=False, n_resamples=rounds,
                       confidence_level=level, method="percentile", rng=seed)
    low, high = result.confidence_interval
    return {m: {"rating": point[m], "low": float(low[k]), "high": float(high[k])}
            for k, m in enumerate(models)}


# ---------------------------------------------------------------------------------------------
# Verifiable tasks: pass@k and the majority vote
# ---------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct.

    pass@k is the chance that at least one of k samples is correct. Drawing k of the n
    samples without replacement, that fails only when all k come from the ``n - c`` wrong ones:
    ``pass@k = 1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021, eq. 1), computed as the product
    ``prod_{i = n - c + 1}^{n} (1 - k / i)`` to stay stable for large n. pass@1 is ``c / n``.

    Args:
        n: Samples drawn for the problem.
        c: How many of them are correct.
        k: Samples allowed, ``1 <= k <= n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    out = 1.0
    for i in range(n - c + 1, n + 1):
        out *= 1.0 - k / i
    return 1.0 - out


def majority_vote(answers: Sequence[Hashable | None]) -> tuple[Hashable | None, int]:
    """The most common answer that is not None and how many gave it (ties: the first seen).

    Self-consistency (Wang et al. 2022): sample several reasoning paths and take the answer
    most of them reach. ``(None, 0)`` when no path gave an answer.
    """
    counts: dict[Hashable, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None, 0
    best = max(counts, key=lambda a: counts[a])  # dicts keep first-seen order: ties go first
    return best, counts[best]
