"""Inter-annotator agreement, as pure functions of plain Python values.

* :func:`cohen_kappa` — two annotators on the same items (Cohen 1960), optionally weighted
  for ordered categories (Cohen 1968).
* :func:`fleiss_kappa` — any fixed number of annotators per item (Fleiss 1971).
* :func:`krippendorff_alpha` — any number of annotators, missing answers allowed, nominal /
  ordinal / interval distances (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability").
* :func:`majority_agreement` — how often each annotator agrees with the majority of the others.
* :func:`span_alpha` — agreement on marked spans: nominal alpha over the characters of the
  responses, each character's value being the category of the span that covers it (or none).

Each returns ``nan`` where the statistic is undefined (e.g. every answer is the same
category, so chance agreement is already perfect). The kappas and alpha are computed in exact
rational arithmetic (:class:`fractions.Fraction`) and rounded once at the end, so they agree
with scikit-learn, statsmodels and the ``krippendorff`` package to within those libraries' own
rounding (better than 1e-15; tested).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction
from itertools import combinations
from typing import Literal

Level = Literal["nominal", "ordinal", "interval"]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable], *,
                weights: Literal[None, "linear", "quadratic"] = None,
                categories: Sequence[Hashable] | None = None) -> float:
    """Cohen's kappa between two annotators' labels of the same items.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with observed agreement ``p_o`` and chance agreement
    ``p_e = sum_k p_a(k) p_b(k)``. With ``weights``, categories are taken in the order of
    ``categories`` (default: sorted) and disagreement costs ``|i-j|`` (linear) or
    ``(i-j)^2`` (quadratic): ``kappa_w = 1 - sum w o / sum w e``.

    Args:
        a: labels from annotator A, one per item.
        b: labels from annotator B, same items, same order.
        weights: None for nominal labels, or "linear" / "quadratic" for ordered ones.
        categories: the ordered category list (needed when labels are not sortable).
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs two equally long label lists, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan
    cats = list(categories) if categories is not None else sorted(set(a) | set(b))
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    observed = [[Fraction(0)] * k for _ in range(k)]
    for x, y in zip(a, b):
        observed[index[x]][index[y]] += Fraction(1, n)
    row = [sum(observed[i]) for i in range(k)]
    col = [sum(observed[i][j] for i in range(k)) for j in range(k)]

    def w(i: int, j: int) -> int:
        if weights is None:
            return 0 if i == j else 1
        if weights == "linear":
            return abs(i - j)
        if weights == "quadratic":
            return (i - j) ** 2
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")

    disagree_obs = sum(w(i, j) * observed[i][j] for i in range(k) for j in range(k))
    disagree_exp = sum(w(i, j) * row[i] * col[j] for i in range(k) for j in range(k))
    if disagree_exp == 0:
        return math.nan
    return float(1 - disagree_obs / disagree_exp)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa for items that each got the same number ``n >= 2`` of labels.

    With ``n_ij`` = how many annotators put item ``i`` in category ``j`` (N items):
    ``P_i = (sum_j n_ij^2 - n) / (n (n-1))``, ``P_bar = mean_i P_i``,
    ``p_j = sum_i n_ij / (N n)``, ``P_e = sum_j p_j^2``, ``kappa = (P_bar - P_e) / (1 - P_e)``.

    Args:
        ratings: one list of labels per item (who gave them does not matter).
    """
    if not ratings:
        return math.nan
    n = len(ratings[0])
    if n < 2 or any(len(r) != n for r in ratings):
        raise ValueError("fleiss_kappa needs the same number (>= 2) of labels on every item")
    big_n = len(ratings)
    totals: Counter = Counter()
    p_bar = Fraction(0)
    for labels in ratings:
        counts = Counter(labels)
        totals.update(counts)
        p_bar += Fraction(sum(c * c for c in counts.values()) - n, n * (n - 1))
    p_bar /= big_n
    p_e = sum(Fraction(c, big_n * n) ** 2 for c in totals.values())
    if p_e == 1:
        return math.nan
    return float((p_bar - p_e) / (1 - p_e))


def krippendorff_alpha(units: Sequence[Sequence[Hashable | float | None]], *,
                       level: Level = "nominal", counts: Sequence[float] | None = None) -> float:
    """Krippendorff's alpha over units that each got any number of values.

    Units with fewer than two (non-None) values carry no pairing information and are
    dropped. From the coincidence matrix ``o_ck = sum_u (pairs (c,k) in u) / (m_u - 1)``
    with marginals ``n_c`` and total ``n``:
    ``alpha = 1 - (n - 1) * sum_ck o_ck d(c,k) / sum_ck n_c n_k d(c,k)``.

    Distances ``d``: nominal ``[c != k]``; interval ``(c - k)^2``; ordinal
    ``(sum_{g between c and k} n_g - (n_c + n_k) / 2)^2`` over the values in sorted order.

    Args:
        units: for each unit (item), the values the annotators gave (None = no answer).
        level: "nominal", "ordinal" or "interval".
        counts: how many times each unit counts (default once each): identical units, such as
            a run of characters that every annotator marked alike, can be passed once.
    """
    if counts is not None and len(counts) != len(units):
        raise ValueError(f"counts has {len(counts)} entries for {len(units)} units")
    coincidence: dict[tuple, Fraction] = defaultdict(Fraction)
    for u, unit in enumerate(units):
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        share = Fraction(1 if counts is None else counts[u]) / (m - 1)
        for i, j in combinations(range(m), 2):
            coincidence[(values[i], values[j])] += share
            coincidence[(values[j], values[i])] += share
    if not coincidence:
        return math.nan
    marg: dict = defaultdict(Fraction)
    for (c, _k), o in coincidence.items():
        marg[c] += o
    n = sum(marg.values())
    values = sorted(marg)

    if level == "nominal":
        def delta(c, k):
            return 0 if c == k else 1
    elif level == "interval":
        def delta(c, k):
            return (Fraction(c) - Fraction(k)) ** 2
    elif level == "ordinal":
        rank = {v: i for i, v in enumerate(values)}
        cum = [Fraction(0)]
        for v in values:
            cum.append(cum[-1] + marg[v])

        def delta(c, k):
            lo, hi = sorted((rank[c], rank[k]))
            between = cum[hi + 1] - cum[lo]
            return (between - (marg[c] + marg[k]) / 2) ** 2
    else:
        raise ValueError(f"level must be nominal, ordinal or interval, got {level!r}")

    d_obs = sum(o * delta(c, k) for (c, k), o in coincidence.items())
    d_exp = sum(marg[c] * marg[k] * delta(c, k) for c in values for k in values)
    if d_exp == 0:
        return math.nan
    return float(1 - (n - 1) * d_obs / d_exp)


def majority_agreement(labels: Mapping[Hashable, Mapping[str, Hashable]], *,
                       min_others: int = 2) -> dict[str, dict[str, float]]:
    """How often each annotator agrees with the majority of the *other* annotators.

    An item counts for annotator ``a`` when at least ``min_others`` others labelled it and
    their most common label is unique (no tie for first place). Leaving ``a`` out of the
    majority keeps an annotator from agreeing with themselves.

    Args:
        labels: ``{item: {annotator: label}}``.
        min_others: how many other annotators an item needs to count.

    Returns:
        ``{annotator: {"agree": int, "n": int, "rate": float}}`` (rate nan when n = 0).
    """
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for by_annotator in labels.values():
        for who, mine in by_annotator.items():
            stats[who]  # every annotator appears, even with n = 0
            others = [v for a, v in by_annotator.items() if a != who]
            if len(others) < min_others:
                continue
            top = Counter(others).most_common(2)
            if len(top) > 1 and top[0][1] == top[1][1]:
                continue
            stats[who][1] += 1
            stats[who][0] += int(mine == top[0][0])
    return {who: {"agree": a, "n": n, "rate": a / n if n else math.nan}
            for who, (a, n) in sorted(stats.items())}


def pairwise_cohen(labels: Mapping[Hashable, Mapping[str, Hashable]], *, min_shared: int = 2,
                   weights: Literal[None, "linear", "quadratic"] = None,
                   categories: Sequence[Hashable] | None = None) -> dict[tuple[str, str], float]:
    """Cohen's kappa for every pair of annotators sharing at least ``min_shared`` items."""
    by_annotator: dict[str, dict] = defaultdict(dict)
    for item, row in labels.items():
        for who, value in row.items():
            by_annotator[who][item] = value
    out = {}
    for x, y in combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[x]) & set(by_annotator[y]), key=str)
        if len(shared) >= min_shared:
            out[(x, y)] = cohen_kappa([by_annotator[x][i] for i in shared],
                                      [by_annotator[y][i] for i in shared],
                                      weights=weights, categories=categories)
    return out


Span = tuple[int, int, str]
"""A marked span: ``(start, end, category)``, character offsets, end exclusive."""
NO_SPAN = "none"
"""The value of a character that no span covers."""


def span_units(marks: Mapping[str, Sequence[Span]], length: int, *,
               category: str | None = None) -> tuple[list[list[Hashable]], list[int]]:
    """One response's characters as agreement units, run-length compressed.

    Each character is a unit; an annotator's value for it is the category of the span that
    covers it (several categories joined with ``+``, sorted), or :data:`NO_SPAN`. With
    ``category``, the value is whether a span of that category covers it (True/False).
    Characters between the same span boundaries carry the same values, so each stretch is
    one unit with a count (its length), for :func:`krippendorff_alpha`'s ``counts``.

    Args:
        marks: ``{annotator: [(start, end, category), ...]}`` (an empty list = nothing marked).
        length: the response's length in characters.
        category: look at one category only, or None for all of them at once.

    Returns:
        ``(units, counts)``: the annotators' values per stretch, and each stretch's length.
    """
    cuts = {0, length}
    for spans in marks.values():
        for start, end, _cat in spans:
            cuts.update((min(max(start, 0), length), min(max(end, 0), length)))
    bounds = sorted(cuts)
    units, counts = [], []
    for a, b in zip(bounds, bounds[1:]):
        row: list[Hashable] = []
        for spans in marks.values():
            cats = sorted({c for start, end, c in spans if start <= a < end})
            if category is not None:
                row.append(category in cats)
            else:
                row.append("+".join(cats) if cats else NO_SPAN)
        units.append(row)
        counts.append(b - a)
    return units, counts


def span_alpha(responses: Sequence[tuple[int, Mapping[str, Sequence[Span]]]], *,
               category: str | None = None) -> float:
    """Krippendorff's nominal alpha for span marking, with characters as the units.

    Two annotators agree on a character when both leave it unmarked or both put it in the
    same category, so alpha rewards marking the same stretch of text with the same category
    and penalises both a missed span and a wrong category, in proportion to how many
    characters they cover. Characters are treated as predefined units, which is simpler than
    Krippendorff's alpha for unitizing (alpha_U, Krippendorff 1995) and, like it, gives no
    credit to a span whose boundaries are off by a little beyond the characters that overlap
    (Mathet et al. 2015's gamma does).

    Args:
        responses: ``(length, {annotator: spans})`` for every response that was marked;
            responses with a single annotator carry no pairing information and drop out.
        category: agreement on one category only (present / absent per character).
    """
    units: list[list[Hashable]] = []
    counts: list[int] = []
    for length, marks in responses:
        if len(marks) < 2:
            continue
        u, c = span_units(marks, length, category=category)
        units.extend(u)
        counts.extend(c)
    return krippendorff_alpha(units, level="nominal", counts=counts)


def categorical_agreement(units: Mapping[Hashable, Mapping[str, Hashable]], *,
                          levels: Sequence[Level] = ("nominal",),
                          weights: Literal[None, "linear", "quadratic"] = None,
                          categories: Sequence[Hashable] | None = None, kappas: bool = True,
                          majority: bool = True) -> dict:
    """The agreement statistics of one question over ``{unit: {annotator: value}}``.

    ``krippendorff_alpha_<level>`` for each of ``levels``; with ``kappas``, Fleiss' kappa
    over the units with the commonest number of labels (``fleiss_items`` of them: Fleiss needs
    the same count on every unit) and Cohen's kappa for every pair of annotators
    (``cohen_kappa_pairs``, their mean ``cohen_kappa_mean``; ``weights`` and ``categories`` as
    for :func:`cohen_kappa`); with ``majority``, :func:`majority_agreement`. Undefined values
    are ``nan``.
    """
    per_unit = [list(row.values()) for row in units.values()]
    multi = [u for u in per_unit if len(u) >= 2]
    out: dict = {"units": len(units), "units_multi": len(multi)}
    for level in levels:
        out[f"krippendorff_alpha_{level}"] = krippendorff_alpha(per_unit, level=level)
    if kappas:
        out["fleiss_kappa"] = math.nan
        if multi:
            n = max({len(u) for u in multi}, key=lambda c: sum(len(u) == c for u in multi))
            out["fleiss_kappa"] = fleiss_kappa([u for u in multi if len(u) == n])
            out["fleiss_items"] = sum(len(u) == n for u in multi)
        pairs = pairwise_cohen(units, weights=weights, categories=categories)
        defined = [k for k in pairs.values() if not math.isnan(k)]
        out["cohen_kappa_mean"] = sum(defined) / len(defined) if defined else math.nan
        out["cohen_kappa_pairs"] = [{"a": a, "b": b, "kappa": k} for (a, b), k in pairs.items()]
    else:
        out["cohen_kappa_mean"] = out["fleiss_kappa"] = math.nan
    if majority:
        out["majority"] = majority_agreement(units)
    return out


def span_agreement(units: Mapping[Hashable, Mapping[str, tuple[int, Sequence[Span]]]]) -> dict:
    """Per-character nominal alpha of span marks, over all categories and per category.

    Args:
        units: ``{item: {annotator: (response length, spans)}}``.

    Returns:
        ``units``, ``units_multi``, ``krippendorff_alpha_nominal``, ``alpha_by_category``
        and ``characters`` (how many characters were compared by two or more annotators).
    """
    responses = []
    for row in units.values():
        lengths = {length for length, _ in row.values()}
        responses.append((lengths.pop(), {who: spans for who, (_, spans) in row.items()}))
    categories = sorted({c for _, marks in responses for spans in marks.values() for *_, c in spans})
    return {
        "units": len(units),
        "units_multi": sum(len(marks) >= 2 for _, marks in responses),
        "krippendorff_alpha_nominal": span_alpha(responses),
        "alpha_by_category": {c: span_alpha(responses, category=c) for c in categories},
        "characters": sum(length for length, marks in responses if len(marks) >= 2),
    }
