"""The one Bradley–Terry fit: by hand, against choix, and its bootstrap."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from rlhfkit.stats import bootstrap_bradley_terry, bradley_terry, elo


def _tournament(seed: int, players: int = 6, games: int = 300, ties: float = 0.1):
    rng = random.Random(seed)
    truth = [rng.gauss(0, 1) for _ in range(players)]
    out = []
    for _ in range(games):
        i, j = rng.sample(range(players), 2)
        if rng.random() < ties:
            out.append((i, j, 0.5))
        else:
            p = 1 / (1 + math.exp(truth[j] - truth[i]))
            out.append((i, j, 1.0 if rng.random() < p else 0.0))
    return out


def test_two_players_by_hand():
    """A beats B 3 times in 4: sigmoid(r_A - r_B) = 3/4, so r_A - r_B = log 3, centred."""
    r = bradley_terry([("A", "B", 1)] * 3 + [("A", "B", 0)])
    assert r["A"] == pytest.approx(math.log(3) / 2, abs=1e-8)
    assert r["B"] == pytest.approx(-math.log(3) / 2, abs=1e-8)
    # A weight-3 win and a loss is the same data.
    assert bradley_terry([("A", "B", 1), ("A", "B", 0)], weights=[3, 1]) == pytest.approx(r)
    assert elo(r)["A"] - elo(r)["B"] == pytest.approx(400 * math.log10(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_choix_maximum_likelihood(seed):
    """choix.mm_pairwise (Hunter's MM, alpha=0) on the same games gives the same strengths.

    choix takes (winner, loser) pairs only, so every game enters twice: a win as two copies,
    a tie as one each way (a tie is half a win for each side); doubling every count leaves the
    maximum-likelihood estimate where it was.
    """
    import choix  # in the dev extra
    games = _tournament(seed)
    data = []
    for i, j, y in games:
        data += [(i, j), (i, j)] if y == 1 else [(j, i), (j, i)] if y == 0 else [(i, j), (j, i)]
    theirs = choix.mm_pairwise(6, data, alpha=0.0, max_iter=100_000, tol=1e-12)
    ours = bradley_terry(games)
    assert np.allclose([ours[k] for k in range(6)], theirs - theirs.mean(), atol=1e-6)


def test_prior_is_a_virtual_opponent():
    """An unbeaten A: with prior a, A's score equation is
    W_A = 5 + a = 5 p_A/(p_A+p_B) + 2a p_A/(p_A+1), and the same for B; check it at the fit."""
    a = 0.5
    r = bradley_terry([("A", "B", 1)] * 5, prior=a)
    assert r["A"] > 0 > r["B"] and r["A"] == pytest.approx(-r["B"])
    # strengths before centring are only defined up to the virtual opponent's scale: solve
    # p_B = 1 / p_A (symmetry), then check A's score equation.
    p_a = math.exp(r["A"])
    p_b = 1 / p_a
    assert 5 + a == pytest.approx(5 * p_a / (p_a + p_b) + 2 * a * p_a / (p_a + 1), abs=1e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="outcome 2"):
        bradley_terry([("A", "B", 2)])
    with pytest.raises(ValueError, match="2 games but 1 weights"):
        bradley_terry([("A", "B", 1), ("B", "A", 1)], weights=[1.0])
    assert bradley_terry([]) == {}


def test_the_three_callers_agree():
    """Arena (Elo), evaluate.metrics (log scale) and nash (a preference matrix) are one fit."""
    import torch

    from rlhfkit.evaluate.metrics import bradley_terry_ratings
    from rlhfkit.feedback.arena import bradley_terry as arena_bt
    from rlhfkit.train.nash import fit_bradley_terry

    games = _tournament(3, players=3, games=200)
    log_scale = bradley_terry_ratings([(i, j) for i, j, _ in games], [y for *_, y in games])
    assert elo(log_scale) == pytest.approx(arena_bt(games, prior=0.0))
    pref = torch.tensor([[0.5, 0.7, 0.9], [0.3, 0.5, 0.6], [0.1, 0.4, 0.5]])
    soft = [(i, j, float(pref[i, j])) for i in range(3) for j in range(i + 1, 3)]
    expected = bradley_terry(soft)
    assert fit_bradley_terry(pref).tolist() == pytest.approx([expected[k] for k in range(3)])


def test_bootstrap_is_scipy_percentile_over_games():
    """The interval is scipy's percentile bootstrap of the refitted Elo ratings."""
    from scipy.stats import bootstrap

    games = [("a", "b", 1)] * 6 + [("a", "b", 0)] * 4 + [("b", "c", 1)] * 3 + [("c", "b", 1)]
    got = bootstrap_bradley_terry(games, rounds=300, seed=7)
    models = sorted(got)

    def stat(idx):
        fit = elo(bradley_terry([games[int(k)] for k in idx], prior=0.1, max_iter=200, tol=1e-6))
        return np.array([fit.get(m, 1000.0) for m in models])

    ref = bootstrap((np.arange(len(games)),), stat, vectorized=False, n_resamples=300,
                    method="percentile", rng=7).confidence_interval
    for k, m in enumerate(models):
        assert got[m]["low"] == pytest.approx(ref.low[k])
        assert got[m]["high"] == pytest.approx(ref.high[k])
        assert got[m]["low"] < got[m]["rating"] < got[m]["high"]
    one = bootstrap_bradley_terry([("a", "b", 1)])
    assert one["a"]["low"] == one["a"]["rating"] == one["a"]["high"]
