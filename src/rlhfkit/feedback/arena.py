"""Arena: blind pairwise comparison of policies, Bradley–Terry ratings and win/tie/lose.

Each game is ``(model_a, model_b, outcome)`` with outcome 1 (a wins), 0 (b wins) or 0.5
(tie; "both bad" counts as a tie for the rating). Ratings follow the Bradley–Terry model
``P(a beats b) = p_a / (p_a + p_b)`` (Bradley & Terry 1952), fitted by the
minorisation–maximisation update of Hunter (2004, eq. 3); a tie counts as half a win for each
side. They are reported on the Elo scale, ``400 log10 p + 1000`` with the mean rating at 1000,
with percentile bootstrap intervals from resampling games.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations

Game = tuple[str, str, float]


def bradley_terry(games: Sequence[Game], *, prior: float = 0.1, iters: int = 1000,
                  tol: float = 1e-10) -> dict[str, float]:
    """Bradley–Terry strengths on the Elo scale (mean 1000).

    Args:
        games: ``(a, b, outcome)`` with outcome 1 = a won, 0 = b won, 0.5 = tie.
        prior: pseudo-games (split half and half) added between every pair of models, so
            that an undefeated model gets a finite rating and the fit always converges.
        iters: most MM iterations.
        tol: stop when no log-strength moves more than this.
    """
    models = sorted({g[0] for g in games} | {g[1] for g in games})
    if not models:
        return {}
    wins = defaultdict(float)  # total (fractional) wins of each model
    played = defaultdict(float)  # games between each unordered pair
    for a, b, outcome in games:
        if a == b:
            continue
        wins[a] += outcome
        wins[b] += 1 - outcome
        played[frozenset((a, b))] += 1
    for a, b in combinations(models, 2):
        wins[a] += prior / 2
        wins[b] += prior / 2
        played[frozenset((a, b))] += prior
    strength = {m: 1.0 for m in models}
    for _ in range(iters):
        new = {}
        for i in models:
            denom = sum(played[frozenset((i, j))] / (strength[i] + strength[j])
                        for j in models if j != i)
            new[i] = wins[i] / denom if denom > 0 else strength[i]
        log_mean = sum(math.log(v) for v in new.values()) / len(new)
        new = {m: v / math.exp(log_mean) for m, v in new.items()}
        moved = max(abs(math.log(new[m]) - math.log(strength[m])) for m in models)
        strength = new
        if moved < tol:
            break
    return {m: 1000 + 400 * math.log10(strength[m]) for m in models}


def bootstrap_ratings(games: Sequence[Game], *, rounds: int = 200, seed: int = 0,
                      level: float = 0.95, prior: float = 0.1) -> dict[str, dict[str, float]]:
    """Ratings with percentile bootstrap intervals.

    Returns:
        ``{model: {"rating", "low", "high"}}``.
    """
    point = bradley_terry(games, prior=prior)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {m: [] for m in point}
    games = list(games)
    for _ in range(rounds if games else 0):
        resampled = [games[rng.randrange(len(games))] for _ in games]
        fit = bradley_terry(resampled, prior=prior, iters=200, tol=1e-6)
        for m in point:
            samples[m].append(fit.get(m, 1000.0))
    out = {}
    for m, r in point.items():
        s = sorted(samples[m])
        if s:
            lo = s[int(math.floor((1 - level) / 2 * (len(s) - 1)))]
            hi = s[int(math.ceil((1 + level) / 2 * (len(s) - 1)))]
        else:
            lo = hi = r
        out[m] = {"rating": r, "low": lo, "high": hi}
    return out


def win_tie_lose(games: Sequence[Game]) -> dict[tuple[str, str], dict[str, float]]:
    """For each pair ``(a, b)`` (a < b by name), how often a won, tied and lost against b.

    Returns:
        ``{(a, b): {"win", "tie", "lose", "n"}}`` with fractions summing to 1.
    """
    table: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0])
    for a, b, outcome in games:
        if a == b:
            continue
        if b < a:
            a, b, outcome = b, a, 1 - outcome
        row = table[(a, b)]
        row[0 if outcome == 1 else 2 if outcome == 0 else 1] += 1
    out = {}
    for pair, (w, t, lo) in sorted(table.items()):
        n = w + t + lo
        out[pair] = {"win": w / n, "tie": t / n, "lose": lo / n, "n": n}
    return out
