"""The agreement statistics against the reference implementations, to 1e-15.

scikit-learn's ``cohen_kappa_score`` (unweighted, linear, quadratic), statsmodels'
``fleiss_kappa`` and the ``krippendorff`` package's ``alpha`` (nominal, ordinal, interval,
with missing answers), on random label sets drawn with a fixed seed: 2..7 categories, 5..60
items, 2..6 annotators, a fifth of the answers missing for alpha. rlhfkit computes them in
exact rational arithmetic and rounds once, so the gap is the references' own rounding.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from krippendorff import alpha as kd_alpha
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

from rlhfkit.feedback.agreement import cohen_kappa, fleiss_kappa, krippendorff_alpha

TOL = 1e-15
CASES = range(150)


def same(ours: float, ref: float) -> bool:
    return (math.isnan(ours) and math.isnan(ref)) or abs(ours - ref) <= TOL


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn(weights):
    rng = random.Random(1)
    for _ in CASES:
        n, k = rng.randint(5, 60), rng.randint(2, 7)
        a = [rng.randint(1, k) for _ in range(n)]
        b = [x if rng.random() < 0.6 else rng.randint(1, k) for x in a]
        cats = list(range(1, k + 1))
        ours = cohen_kappa(a, b, weights=weights, categories=cats if weights else None)
        ref = cohen_kappa_score(a, b, weights=weights, labels=cats if weights else None)
        assert same(ours, ref), (a, b, ours, ref)


def test_fleiss_kappa_matches_statsmodels():
    rng = random.Random(2)
    for _ in CASES:
        n, k, r = rng.randint(5, 60), rng.randint(2, 7), rng.randint(2, 6)
        data = [[rng.randint(1, k) for _ in range(r)] for _ in range(n)]
        table, _ = aggregate_raters(np.array(data))
        assert same(fleiss_kappa(data), sm_fleiss(table, method="fleiss")), data


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_alpha_matches_the_krippendorff_package(level):
    rng = random.Random(3)
    checked = 0
    for _ in CASES:
        n, k, r = rng.randint(5, 60), rng.randint(2, 7), rng.randint(2, 6)
        units = [[rng.randint(1, k) if rng.random() < 0.8 else None for _ in range(r)] for _ in range(n)]
        if len({v for u in units for v in u if v is not None}) < 2:
            continue  # one value only: the package refuses, rlhfkit says nan
        reliability = np.array([[np.nan if u[i] is None else u[i] for u in units] for i in range(r)],
                               dtype=float)  # annotators x units
        ours = krippendorff_alpha(units, level=level)
        assert same(ours, kd_alpha(reliability_data=reliability, level_of_measurement=level)), units
        checked += 1
    assert checked > 100


def test_krippendorffs_published_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: four
    observers, twelve units, some missing. Published: nominal .743, ordinal .815, interval .849."""
    observers = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
                 [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
                 [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
                 [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [list(u) for u in zip(*observers)]
    reliability = np.array([[np.nan if v is None else v for v in row] for row in observers], dtype=float)
    for level, published in (("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)):
        ours = krippendorff_alpha(units, level=level)
        assert round(ours, 3) == published
        assert same(ours, kd_alpha(reliability_data=reliability, level_of_measurement=level))
