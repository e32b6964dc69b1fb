"""Agreement statistics and arena ratings against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlhfkit.feedback.agreement import (
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    majority_agreement,
    pairwise_cohen,
    span_alpha,
    span_units,
)
from rlhfkit.feedback.arena import bootstrap_ratings, bradley_terry, win_tie_lose


def test_cohen_kappa_two_categories():
    """a = 1111000010, b = 1110000111 agree on 7 of 10: p_o = 0.7.
    a says 1 on 5/10, b on 6/10: p_e = .5*.6 + .5*.4 = 0.5.  kappa = (0.7-0.5)/(1-0.5) = 0.4."""
    a = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_cohen_kappa_below_chance_is_negative():
    """Always opposite: p_o = 0, p_e = .5*.5 + .5*.5 = .5, kappa = -1."""
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_weighted_cohen_kappa_quadratic():
    """a = [1,2,3], b = [1,3,3] over categories 1,2,3 (indices 0,1,2), w = (i-j)^2.
    Observed: one third each at (0,0), (1,2), (2,2) -> sum w*o = 1 * 1/3 = 1/3.
    Marginals a = (1/3, 1/3, 1/3), b = (1/3, 0, 2/3); expected sum w*a_i*b_j =
    4*(1/3*2/3) + 1*(1/3*1/3) + 1*(1/3*2/3) + 4*(1/3*1/3) = 8/9 + 1/9 + 2/9 + 4/9 = 15/9.
    kappa_w = 1 - (1/3)/(15/9) = 1 - 1/5 = 0.8."""
    k = cohen_kappa([1, 2, 3], [1, 3, 3], weights="quadratic", categories=[1, 2, 3])
    assert k == pytest.approx(0.8)
    # linear: sum w*o = 1/3; expected 2*(2/9) + 1*(1/9) + 1*(2/9) + 2*(1/9) = 9/9 -> 1 - 1/3
    k_lin = cohen_kappa([1, 2, 3], [1, 3, 3], weights="linear", categories=[1, 2, 3])
    assert k_lin == pytest.approx(2 / 3)


def test_cohen_kappa_undefined_when_one_category():
    assert math.isnan(cohen_kappa(["up", "up"], ["up", "up"]))


def test_fleiss_kappa():
    """Items [a,a,a], [a,a,b], [b,b,b], n = 3 raters:
    P_i = (sum n_ij^2 - 3)/6 = 1, (4+1-3)/6 = 1/3, 1  -> P_bar = 7/9.
    p_a = 5/9, p_b = 4/9 -> P_e = 41/81.  kappa = (63/81 - 41/81)/(40/81) = 22/40 = 0.55."""
    assert fleiss_kappa([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        fleiss_kappa([["a", "b"], ["a"]])


def test_fleiss_equals_one_for_perfect_agreement_across_categories():
    assert fleiss_kappa([["x", "x"], ["y", "y"]]) == pytest.approx(1.0)


def test_krippendorff_alpha_nominal():
    """Units [a,a], [a,b], [b,b], [a] (the last is dropped: nothing to pair).
    Coincidences: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.
    alpha = 1 - (n-1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 5*2/18 = 4/9."""
    alpha = krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"], ["a"]], level="nominal")
    assert alpha == pytest.approx(4 / 9)


def test_krippendorff_alpha_missing_values_and_uneven_units():
    """None is 'no answer'. Units [1,1,None], [2,2,2]: perfect agreement -> alpha = 1."""
    assert krippendorff_alpha([[1, 1, None], [2, 2, 2]]) == pytest.approx(1.0)


def test_krippendorff_alpha_interval_and_ordinal():
    """Units [1,2], [2,3], [3,3]: o_12 = o_21 = o_23 = o_32 = 1, o_33 = 2;
    n_1 = 1, n_2 = 2, n_3 = 3, n = 6.
    Interval d = (c-k)^2: observed sum = 4; expected sum = 2*(n1 n2*1 + n1 n3*4 + n2 n3*1) = 40;
    alpha = 1 - 5*4/40 = 0.5.
    Ordinal d(c,k) = (sum_{g=c..k} n_g - (n_c+n_k)/2)^2: d12 = (3-1.5)^2 = 2.25,
    d23 = (5-2.5)^2 = 6.25, d13 = (6-2)^2 = 16. observed = 2*2.25 + 2*6.25 = 17;
    expected = 2*(2*2.25 + 3*16 + 6*6.25) = 180; alpha = 1 - 5*17/180 = 95/180."""
    units = [[1, 2], [2, 3], [3, 3]]
    assert krippendorff_alpha(units, level="interval") == pytest.approx(0.5)
    assert krippendorff_alpha(units, level="ordinal") == pytest.approx(95 / 180)
    # nominal on the same data: o_diff = 4, n_c n_k over c != k = 2*(2+3+6) = 22 -> 1 - 20/22
    assert krippendorff_alpha(units, level="nominal") == pytest.approx(1 - 20 / 22)


def test_krippendorff_equals_fleiss_like_values_on_large_samples_sign():
    # systematic disagreement is below chance
    assert krippendorff_alpha([["x", "y"], ["y", "x"], ["x", "y"]]) < 0


def test_krippendorff_alpha_counts_equal_repeated_units():
    units = [["a", "a"], ["a", "b"], ["b", "b"]]
    repeated = [["a", "a"]] * 3 + [["a", "b"]] + [["b", "b"]] * 2
    assert krippendorff_alpha(units, counts=[3, 1, 2]) == pytest.approx(krippendorff_alpha(repeated))


# Two responses marked by annotators A and B (end offsets exclusive):
#   response 1, 10 characters: A irrelevant [0, 4); B irrelevant [2, 6)
#       chars 0-1 (irr, none) · 2-3 (irr, irr) · 4-5 (none, irr) · 6-9 (none, none)
#   response 2, 4 characters: A untruthful [0, 2); B untruthful [0, 2) and irrelevant [2, 4)
#       chars 0-1 (unt, unt) · 2-3 (none, irr)
SPANS_1 = (10, {"A": [(0, 4, "irrelevant")], "B": [(2, 6, "irrelevant")]})
SPANS_2 = (4, {"A": [(0, 2, "untruthful")], "B": [(0, 2, "untruthful"), (2, 4, "irrelevant")]})


def test_span_units_cut_at_span_boundaries():
    units, counts = span_units(SPANS_1[1], SPANS_1[0])
    assert units == [["irrelevant", "none"], ["irrelevant", "irrelevant"],
                     ["none", "irrelevant"], ["none", "none"]]
    assert counts == [2, 2, 2, 4]
    # overlapping spans of one annotator join their categories; offsets past the end are clipped
    units, counts = span_units({"A": [(0, 3, "x"), (2, 9, "y")], "B": []}, 4)
    assert units == [["x", "none"], ["x+y", "none"], ["y", "none"]] and counts == [2, 1, 1]


def test_span_alpha_one_response():
    """Response 1, every character a unit with two values (each ordered pair adds 1/(m-1) = 1):
    o(irr,none) = o(none,irr) = 2 + 2 = 4, o(irr,irr) = 2*2 = 4, o(none,none) = 2*4 = 8;
    n_irr = 8, n_none = 12, n = 20.
    alpha = 1 - (n-1) (o_in + o_ni) / (n_irr n_none + n_none n_irr) = 1 - 19*8/192 = 5/24."""
    assert span_alpha([SPANS_1]) == pytest.approx(5 / 24)
    assert span_alpha([SPANS_1], category="irrelevant") == pytest.approx(5 / 24)


def test_span_alpha_two_responses_all_and_per_category():
    """Adding response 2: o(unt,unt) = 4, o(none,irr) = o(irr,none) += 2.
    All categories: o_ii = 4, o_in = o_ni = 6, o_nn = 8, o_uu = 4; n_i = 10, n_n = 14, n_u = 4,
    n = 28; expected = 2 (n_i n_n + n_i n_u + n_n n_u) = 2 (140 + 40 + 56) = 472;
    alpha = 1 - 27*12/472 = 37/118.
    Irrelevant only (present T / absent F): o_TT = 4, o_TF = o_FT = 6, o_FF = 8 + 4 = 12;
    n_T = 10, n_F = 18; alpha = 1 - 27*12/(2*10*18) = 0.1.
    Untruthful only: no character disagrees, and both values occur -> alpha = 1.
    A third response marked by one annotator only carries no pairs and changes nothing."""
    alone = (5, {"A": [(0, 5, "irrelevant")]})
    assert span_alpha([SPANS_1, SPANS_2, alone]) == pytest.approx(37 / 118)
    assert span_alpha([SPANS_1, SPANS_2], category="irrelevant") == pytest.approx(0.1)
    assert span_alpha([SPANS_1, SPANS_2], category="untruthful") == pytest.approx(1.0)
    # identical marks everywhere: perfect agreement
    same = (6, {"A": [(1, 3, "irrelevant")], "B": [(1, 3, "irrelevant")]})
    assert span_alpha([same]) == pytest.approx(1.0)
    # nothing marked by anyone: one value only, alpha undefined
    assert math.isnan(span_alpha([(6, {"A": [], "B": []})]))


def test_majority_agreement_leaves_the_annotator_out():
    """i1: all say x -> everyone agrees with the others' majority.
    i2: a=x, b=y, c=y: a disagrees with {y,y}; b's others {x,y} tie -> not counted; c likewise.
    i3: all different: every 'others' pair ties -> nothing counted."""
    labels = {"i1": {"a": "x", "b": "x", "c": "x"},
              "i2": {"a": "x", "b": "y", "c": "y"},
              "i3": {"a": "y", "b": "x", "c": "z"}}
    got = majority_agreement(labels)
    assert got["a"] == {"agree": 1, "n": 2, "rate": 0.5}
    assert got["b"] == {"agree": 1, "n": 1, "rate": 1.0}
    assert got["c"] == {"agree": 1, "n": 1, "rate": 1.0}


def test_pairwise_cohen_uses_shared_items_only():
    labels = {1: {"a": "x", "b": "x"}, 2: {"a": "y", "b": "y"}, 3: {"a": "x", "c": "y"}}
    got = pairwise_cohen(labels)
    assert got == {("a", "b"): pytest.approx(1.0)}  # a-c share one item only


def test_bradley_terry_two_models():
    """a beats b 3 times of 4 (no prior): p_a/p_b = 3, so the Elo gap is 400 log10 3 = 190.85,
    centred on 1000."""
    games = [("a", "b", 1), ("a", "b", 1), ("b", "a", 0), ("a", "b", 0)]
    r = bradley_terry(games, prior=0.0)
    gap = 400 * math.log10(3)
    assert r["a"] == pytest.approx(1000 + gap / 2, abs=1e-4)
    assert r["b"] == pytest.approx(1000 - gap / 2, abs=1e-4)


def test_bradley_terry_ties_and_transitivity():
    # ties only: equal strengths
    r = bradley_terry([("a", "b", 0.5), ("b", "c", 0.5), ("a", "c", 0.5)], prior=0.0)
    assert all(v == pytest.approx(1000) for v in r.values())
    # a > b > c with margins: ordering recovered; an undefeated model stays finite (prior)
    games = [("a", "b", 1)] * 8 + [("b", "a", 1)] * 2 + [("b", "c", 1)] * 8 + [("c", "b", 1)] * 2
    r = bradley_terry(games + [("a", "c", 1)] * 5)
    assert r["a"] > r["b"] > r["c"] and all(math.isfinite(v) for v in r.values())


def test_bootstrap_interval_contains_estimate_and_shrinks_with_data():
    few = [("a", "b", 1)] * 6 + [("a", "b", 0)] * 4
    many = few * 20
    small, big = bootstrap_ratings(few, rounds=200), bootstrap_ratings(many, rounds=200)
    for res in (small, big):
        for r in res.values():
            assert r["low"] <= r["rating"] <= r["high"]
    width = lambda res: res["a"]["high"] - res["a"]["low"]  # noqa: E731
    assert width(big) < width(small) / 2


def test_win_tie_lose_table():
    """x vs y: x wins games 1 and 4, ties game 2, loses game 3 -> 50% / 25% / 25%."""
    games = [("x", "y", 1), ("x", "y", 0.5), ("y", "x", 1), ("y", "x", 0)]
    assert win_tie_lose(games) == {("x", "y"): {"win": 0.5, "tie": 0.25, "lose": 0.25, "n": 4}}
