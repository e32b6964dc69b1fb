"""Preferences between responses: pairwise comparisons and rankings of K responses.

Holds :class:`Comparison` (kind ``comparison``: ``chosen`` over ``rejected``, or a tie),
:class:`Ranking` (kind ``ranking``: K = 2..9 responses ordered by ranks or scores, expanding
into its C(K, 2) comparisons) and :func:`as_comparisons`, which flattens a mix of the two for
the preference trainers (returning a :class:`ComparisonSet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar, NamedTuple

from .base import Record, _plain, _unwrap_conversation
from .errors import RecordError, _show
from .fields import (
    _EXPECTED,
    MAX_K,
    MIN_K,
    Prompt,
    _check_bool,
    _check_number,
    _check_optional_text,
    _check_prompt,
    _check_text,
)


@dataclass
class Comparison(Record):
    """A pairwise preference: ``chosen`` is preferred to ``rejected`` (or they tie).

    Attributes:
        prompt: a non-empty string or a list of chat messages.
        chosen: the preferred response.
        rejected: the other response.
        margin: how much better ``chosen`` is (>= 0), e.g. from a Likert scale
            (Llama 2, Touvron et al. 2023, eq. 2), or None.
        tie: the two were judged equally good; ``chosen``/``rejected`` order is then arbitrary.
        weight: weight of this pair in the loss (> 0); pairs from a ranking of K carry
            ``1 / C(K, 2)`` (InstructGPT, Ouyang et al. 2022, eq. 1).
        group: pairs that come from one ranking share a group (the ranking's id).
    """

    KIND: ClassVar[str] = "comparison"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "prompt",
        "chosen",
        "rejected",
        "margin",
        "tie",
        "weight",
        "group",
    )

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None
    tie: bool = False
    weight: float = 1.0
    group: str | None = None

    def _validate(self) -> None:
        _check_prompt(self.prompt)
        _check_text(self.chosen, "chosen")
        _check_text(self.rejected, "rejected")
        _check_bool(self.tie, "tie")
        if self.chosen == self.rejected and not self.tie:
            raise RecordError(
                "'chosen' and 'rejected' are the same text",
                field="rejected",
                expected="a response different from 'chosen' (or tie=true)",
            )
        if self.margin is not None:
            self.margin = _check_number(self.margin, "margin", expected="a finite number >= 0")
            if self.margin < 0:
                raise RecordError(
                    _show(self.margin), field="margin", expected="a finite number >= 0"
                )
        self.weight = _check_number(self.weight, "weight", expected="a finite number > 0")
        if self.weight <= 0:
            raise RecordError(_show(self.weight), field="weight", expected="a finite number > 0")
        _check_optional_text(self.group, "group")

    @classmethod
    def _normalize(cls, d: dict[str, Any]) -> dict[str, Any]:
        for name in ("chosen", "rejected"):
            if isinstance(d.get(name), list):
                _unwrap_conversation(d, name, name)
        return d


@dataclass
class Ranking(Record):
    """K responses to one prompt put in order (K = 2..9, all distinct).

    Give exactly one of ``ranks`` (0 = best; equal ranks are ties) or ``scores`` (higher is
    better; equal scores are ties).

    Attributes:
        prompt: a non-empty string or a list of chat messages.
        responses: the K responses.
        ranks: rank of each response, or None.
        scores: score of each response, or None.
    """

    KIND: ClassVar[str] = "ranking"
    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "responses", "ranks", "scores")

    prompt: Prompt
    responses: list[str]
    ranks: list[int] | None = None
    scores: list[float] | None = None

    def _validate(self) -> None:
        _check_prompt(self.prompt)
        expected = _EXPECTED["responses"]
        if not isinstance(self.responses, list):
            raise RecordError(_show(self.responses), field="responses", expected=expected)
        k = len(self.responses)
        if not MIN_K <= k <= MAX_K:
            raise RecordError(f"got {k} responses", field="responses", expected=expected)
        seen: dict[str, int] = {}
        for i, response in enumerate(self.responses):
            _check_text(response, f"responses[{i}]")
            if response in seen:
                raise RecordError(
                    f"responses {seen[response]} and {i} are the same text",
                    field=f"responses[{i}]",
                    expected=expected,
                )
            seen[response] = i
        if (self.ranks is None) == (self.scores is None):
            raise RecordError(
                "both are set" if self.ranks is not None else "neither is set",
                field="ranks",
                expected="exactly one of 'ranks' or 'scores'",
            )
        name = "ranks" if self.ranks is not None else "scores"
        values = self.ranks if self.ranks is not None else self.scores
        if not isinstance(values, list) or len(values) != k:
            got = f"got {len(values)} values" if isinstance(values, list) else _show(values)
            raise RecordError(got, field=name, expected=f"a list of {k} values, one per response")
        if self.ranks is not None:
            for i, rank in enumerate(self.ranks):
                if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
                    raise RecordError(
                        _show(rank), field=f"ranks[{i}]", expected="an int >= 0 (0 = best)"
                    )
        else:
            self.scores = [_check_number(s, f"scores[{i}]") for i, s in enumerate(values)]

    def _better(self, i: int, j: int) -> int:
        """+1 if response i beats j, -1 if j beats i, 0 on a tie."""
        if self.ranks is not None:
            a, b = -self.ranks[i], -self.ranks[j]
        else:
            a, b = self.scores[i], self.scores[j]
        return (a > b) - (a < b)

    def to_comparisons(self, group: str | None = None) -> list[Comparison]:
        """Expand into all C(K, 2) pairs.

        Pairs come in the order of ``itertools.combinations(range(K), 2)``: (0, 1), (0, 2), ...,
        (K-2, K-1). In each pair the better response is ``chosen``; a tie keeps the listed order
        and sets ``tie=True``. Every pair has ``weight = 1 / C(K, 2)`` so that one ranking
        counts as much as one comparison (InstructGPT, Ouyang et al. 2022, sec. 3.5, eq. 1), and
        ``group`` = the ranking's id. With ``scores``, ``margin`` is the score difference;
        with ``ranks`` it is None.

        Args:
            group: the group for the pairs; defaults to this ranking's ``id``.

        Returns:
            The C(K, 2) comparisons; ids are ``"{id}:{i}-{j}"`` when the ranking has an id.
        """
        group = self.id if group is None else group
        k = len(self.responses)
        weight = 1.0 / math.comb(k, 2)
        pairs = []
        for i, j in combinations(range(k), 2):
            order = self._better(i, j)
            win, lose = (j, i) if order < 0 else (i, j)
            margin = None
            if self.scores is not None:
                margin = abs(self.scores[i] - self.scores[j])
            pairs.append(
                Comparison(
                    prompt=_plain(self.prompt),
                    chosen=self.responses[win],
                    rejected=self.responses[lose],
                    margin=margin,
                    tie=order == 0,
                    weight=weight,
                    group=group,
                    id=None if self.id is None else f"{self.id}:{i}-{j}",
                    annotator=self.annotator,
                    source=self.source,
                    created_at=self.created_at,
                    meta=_plain(self.meta),
                )
            )
        return pairs


class ComparisonSet(NamedTuple):
    """What :func:`as_comparisons` returns.

    Attributes:
        pairs: the flat list of comparisons.
        n_ties: how many of the pairs seen were ties (counted even when ties are dropped).
        n_rankings: how many rankings were expanded.
    """

    pairs: list[Comparison]
    n_ties: int
    n_rankings: int


def as_comparisons(records: Sequence[Record], *, drop_ties: bool = False) -> ComparisonSet:
    """Flatten comparisons and rankings into one list of pairwise comparisons.

    Comparisons pass through unchanged; each ranking becomes its C(K, 2) pairs (see
    :meth:`Ranking.to_comparisons`), each with weight ``1 / C(K, 2)``. A ranking without an
    id gets the group ``"ranking-{index}"`` (its position in ``records``) so that groups stay
    distinct.

    Args:
        records: Comparison and Ranking records, in any mix.
        drop_ties: leave tied pairs out (Bradley-Terry has no likelihood for a tie).

    Returns:
        The pairs, the number of ties among them, and the number of rankings.

    Raises:
        TypeError: a record is neither a Comparison nor a Ranking.
    """
    pairs: list[Comparison] = []
    n_ties = n_rankings = 0
    for index, record in enumerate(records):
        if isinstance(record, Comparison):
            expanded = [record]
        elif isinstance(record, Ranking):
            n_rankings += 1
            group = record.id if record.id is not None else f"ranking-{index}"
            expanded = record.to_comparisons(group=group)
        else:
            raise TypeError(
                f"as_comparisons takes Comparison and Ranking records; record {index} is a "
                f"{type(record).__name__}"
            )
        for pair in expanded:
            n_ties += pair.tie
            if not (drop_ties and pair.tie):
                pairs.append(pair)
    return ComparisonSet(pairs, n_ties, n_rankings)
