"""Arena: blind pairwise comparison of policies, Bradley–Terry ratings and win/tie/lose.

Each game is ``(model_a, model_b, outcome)`` with outcome 1 (a wins), 0 (b wins) or 0.5
(tie; "both bad" counts as a tie for the rating). Ratings are Bradley–Terry strengths
(Bradley & Terry 1952) fitted by :func:`rlhfkit.stats.bradley_terry`, the package's one
implementation (Hunter 2004's MM updates; a tie is half a win for each side), reported on the
Elo scale, ``400 log10 p + 1000`` with the mean rating at 1000, with percentile bootstrap
intervals from resampling games (:func:`rlhfkit.stats.bootstrap_bradley_terry`, through
``scipy.stats.bootstrap``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rlhfkit import stats

Game = tuple[str, str, float]


def bradley_terry(games: Sequence[Game], *, prior: float = 0.1, iters: int = 1000,
                  tol: float = 1e-10) -> dict[str, float]:
    """Bradley–Terry strengths on the Elo scale (mean 1000).

    Args:
        games: ``(a, b, outcome)`` with outcome 1 = a won, 0 = b won, 0.5 = tie.
        prior: pseudo-games, ``prior`` won and ``prior`` lost by every model against a virtual
            opponent of mean strength, so that an undefeated model gets a finite rating and the
            fit always converges (see :func:`rlhfkit.stats.bradley_terry`).
        iters: most MM iterations.
        tol: stop when no log-strength moves more than this.
    """
    return stats.elo(stats.bradley_terry(games, prior=prior, max_iter=iters, tol=tol))


def bootstrap_ratings(games: Sequence[Game], *, rounds: int = 200, seed: int = 0,
                      level: float = 0.95, prior: float = 0.1) -> dict[str, dict[str, float]]:
    """Ratings with percentile bootstrap intervals over games.

    Returns:
        ``{model: {"rating", "low", "high"}}``.
    """
    return stats.bootstrap_bradley_terry(games, rounds=rounds, level=level, seed=seed,
                                         prior=prior)


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
