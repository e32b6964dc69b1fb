"""Simulated labelers: Bradley–Terry / Plackett–Luce probabilities, flips, ties, determinism.

A table scorer with chosen scores makes every probability computable by hand.
"""

import math
from datetime import datetime
from itertools import permutations

import pytest

from rlhfkit.data.records import BinaryFeedback, Comparison, Ranking, ScoreFeedback
from rlhfkit.feedback.simulated import SimulatedLabeler, sigmoid


class TableScorer:
    """Gold score looked up from a dict by response text."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def __call__(self, prompts, responses):
        return [self.table[r] for r in responses]


TABLE = {"best": 0.5, "good": 0.3, "meh": 0.1, "bad": -0.4, "meh-too": 0.1}


def labeler(**kw):
    return SimulatedLabeler(TableScorer(TABLE), **kw)


def test_sigmoid_values():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0  # no overflow


def test_records_carry_provenance():
    lab = labeler(seed=3)
    records = [
        lab.binary("p", "good"),
        lab.compare("p", "good", "bad"),
        lab.rank("p", ["good", "bad", "best"]),
        lab.score("p", "meh"),
    ]
    kinds = (BinaryFeedback, Comparison, Ranking, ScoreFeedback)
    for record, kind in zip(records, kinds):
        assert isinstance(record, kind)
        assert record.source == "simulated"
        assert record.annotator == "sim-table" == lab.name
        datetime.fromisoformat(record.created_at)
        assert record.id
    assert len({r.id for r in records}) == 4
    assert (
        SimulatedLabeler(TableScorer(TABLE), name="alice").compare("p", "good", "bad").annotator
        == "alice"
    )


def test_temperature_zero_picks_the_higher_score():
    lab = labeler(temperature=0.0)
    for a, b in [("good", "bad"), ("bad", "good"), ("meh", "best"), ("best", "meh")]:
        c = lab.compare("p", a, b)
        assert c.chosen == max(a, b, key=TABLE.get) and not c.tie
    assert lab.binary("p", "meh").label is True  # 0.1 > threshold 0
    assert lab.binary("p", "bad").label is False
    assert lab.score("p", "good").score == 0.3


def test_exact_score_tie_is_reported_as_tie():
    # "meh" and "meh-too" both score 0.1: a tie whatever the temperature, never flipped.
    for temperature, flip_rate in [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0)]:
        c = labeler(temperature=temperature, flip_rate=flip_rate).compare("p", "meh", "meh-too")
        assert c.tie and c.chosen == "meh" and c.rejected == "meh-too"
        assert c.meta["flipped"] is False


def test_bradley_terry_probability_measured():
    """s_good - s_meh = 0.2, T = 0.2: P(good chosen) = sigmoid(1) = 0.7311."""
    lab = labeler(temperature=0.2, seed=1)
    n = 20_000
    pairs = lab.compare_batch(["p"] * n, ["good"] * n, ["meh"] * n)
    frac = sum(c.chosen == "good" for c in pairs) / n
    assert frac == pytest.approx(sigmoid(1.0), abs=0.015)  # ~5 standard errors
    assert pairs[0].meta["p_chosen"] in (
        pytest.approx(sigmoid(1.0)),
        pytest.approx(1 - sigmoid(1.0)),
    )


def test_flip_rate_measured():
    """Noiseless labeler with flip_rate 0.2: the worse one is chosen 20% of the time."""
    lab = labeler(temperature=0.0, flip_rate=0.2, seed=2)
    n = 20_000
    pairs = lab.compare_batch(["p"] * n, ["good"] * n, ["bad"] * n)
    wrong = [c.chosen == "bad" for c in pairs]
    assert sum(wrong) / n == pytest.approx(0.2, abs=0.015)
    assert wrong == [c.meta["flipped"] for c in pairs]


def test_flip_and_temperature_combine():
    """P(good) = p (1 - f) + (1 - p) f with p = sigmoid(1), f = 0.1 -> 0.6849."""
    lab = labeler(temperature=0.2, flip_rate=0.1, seed=4)
    n = 20_000
    pairs = lab.compare_batch(["p"] * n, ["good"] * n, ["meh"] * n)
    p, f = sigmoid(1.0), 0.1
    assert sum(c.chosen == "good" for c in pairs) / n == pytest.approx(
        p * (1 - f) + (1 - p) * f, abs=0.015
    )


def test_binary_probability_measured():
    """P(👍) = sigmoid((0.1 - (-0.1)) / 0.4) = sigmoid(0.5) = 0.6225."""
    lab = labeler(temperature=0.4, threshold=-0.1, seed=5)
    n = 20_000
    labels = lab.binary_batch(["p"] * n, ["meh"] * n)
    assert sum(r.label for r in labels) / n == pytest.approx(sigmoid(0.5), abs=0.015)


def test_score_noise():
    lab = labeler(temperature=0.2, seed=6)
    n = 5_000
    scores = [r.score for r in lab.score_batch(["p"] * n, ["good"] * n)]
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
    assert mean == pytest.approx(0.3, abs=0.02) and std == pytest.approx(0.2, abs=0.02)


def test_determinism_and_batch_equals_sequential():
    def labels(lab):
        return (
            [c.chosen for c in lab.compare_batch(["p"] * 50, ["good"] * 50, ["meh"] * 50)]
            + [r.label for r in lab.binary_batch(["p"] * 50, ["meh"] * 50)]
            + [
                tuple(r.ranks)
                for r in lab.rank_batch(["p"] * 20, [["best", "good", "meh", "bad"]] * 20)
            ]
        )

    assert labels(labeler(temperature=0.3, flip_rate=0.1, seed=7)) == labels(
        labeler(temperature=0.3, flip_rate=0.1, seed=7)
    )
    assert labels(labeler(temperature=0.3, seed=7)) != labels(labeler(temperature=0.3, seed=8))

    batch = labeler(temperature=0.3, flip_rate=0.1, seed=9)
    single = labeler(temperature=0.3, flip_rate=0.1, seed=9)
    got = batch.compare_batch(["p"] * 30, ["good"] * 30, ["meh"] * 30)
    one_by_one = [single.compare("p", "good", "meh") for _ in range(30)]
    assert [c.chosen for c in got] == [c.chosen for c in one_by_one]
    assert [c.id for c in got] == [c.id for c in one_by_one]


def test_higher_flip_rate_flips_a_superset():
    n = 2_000
    low = labeler(temperature=0.0, flip_rate=0.1, seed=10).compare_batch(
        ["p"] * n, ["good"] * n, ["bad"] * n
    )
    high = labeler(temperature=0.0, flip_rate=0.3, seed=10).compare_batch(
        ["p"] * n, ["good"] * n, ["bad"] * n
    )
    assert all(h.meta["flipped"] for lo, h in zip(low, high) if lo.meta["flipped"])


def test_rank_temperature_zero_sorts_and_ties_share_a_rank():
    r = labeler(temperature=0.0).rank("p", ["meh", "best", "bad", "meh-too", "good"])
    # scores 0.1, 0.5, -0.4, 0.1, 0.3 -> dense ranks: best 0, good 1, meh & meh-too 2, bad 3
    assert r.ranks == [2, 0, 3, 2, 1]
    assert r.meta["gold_scores"] == [0.1, 0.5, -0.4, 0.1, 0.3]


def test_plackett_luce_order_probabilities():
    """Scores 0.5, 0.3, -0.4 at T = 0.5: weights w = exp(s / T) = e^1, e^0.6, e^-0.8.

    P(order i, j, k) = w_i / (w_i + w_j + w_k) * w_j / (w_j + w_k); e.g.
    P(best, good, bad) = 2.718 / (2.718 + 1.822 + 0.449) * 1.822 / (1.822 + 0.449) = 0.4366.
    """
    names = ["best", "good", "bad"]
    w = {k: math.exp(TABLE[k] / 0.5) for k in names}
    lab = labeler(temperature=0.5, seed=11)
    n = 20_000
    rankings = lab.rank_batch(["p"] * n, [names] * n)
    counts = {}
    for r in rankings:
        order = tuple(sorted(names, key=lambda k: r.ranks[names.index(k)]))
        counts[order] = counts.get(order, 0) + 1
    for i, j, k in permutations(names):
        expected = w[i] / (w[i] + w[j] + w[k]) * w[j] / (w[j] + w[k])
        assert counts.get((i, j, k), 0) / n == pytest.approx(expected, abs=0.015)


def test_ranking_expands_to_weighted_pairs():
    r = labeler(temperature=0.0).rank("p", ["meh", "best", "bad", "good"])
    pairs = r.to_comparisons()
    assert len(pairs) == 6  # C(4, 2)
    assert all(c.weight == pytest.approx(1 / 6) and c.group == r.id for c in pairs)
    assert all(TABLE[c.chosen] > TABLE[c.rejected] for c in pairs)
    assert all(c.source == "simulated" for c in pairs)


def test_scorer_by_name_and_bad_arguments():
    lab = SimulatedLabeler("sentiment", temperature=0.0)
    assert lab.name == "sim-sentiment"
    assert (
        lab.compare("p", "A dull, awful film.", "A wonderful film.").chosen == "A wonderful film."
    )
    with pytest.raises(ValueError):
        SimulatedLabeler("sentiment", temperature=-1)
    with pytest.raises(ValueError):
        SimulatedLabeler("sentiment", flip_rate=1.5)
