"""Judgements of one response on its own: thumbs up/down and scalar scores.

Holds :class:`BinaryFeedback` (kind ``binary``: KTO-style desirable or not) and
:class:`ScoreFeedback` (kind ``score``: a Likert rating or gold reward), and
:func:`score_pairs`, which turns the scores given to one prompt's responses into weighted
comparisons (returning a :class:`ScorePairs`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar, NamedTuple

from .base import Record, _plain, _take_response
from .comparisons import Comparison
from .fields import Prompt, _check_bool, _check_number, _check_prompt, _check_text


@dataclass
class BinaryFeedback(Record):
    """A thumbs up / thumbs down on one response (KTO-style data).

    Attributes:
        prompt: a non-empty string or a list of chat messages.
        response: the judged response.
        label: True = thumbs up (desirable), False = thumbs down.
    """

    KIND: ClassVar[str] = "binary"
    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response", "label")

    prompt: Prompt
    response: str
    label: bool

    def _validate(self) -> None:
        _check_prompt(self.prompt)
        _check_text(self.response, "response")
        _check_bool(self.label, "label")

    @classmethod
    def _normalize(cls, d: dict[str, Any]) -> dict[str, Any]:
        return _take_response(d)


@dataclass
class ScoreFeedback(Record):
    """A scalar score for one response (a Likert rating, a gold reward).

    Attributes:
        prompt: a non-empty string or a list of chat messages.
        response: the judged response.
        score: higher is better.
    """

    KIND: ClassVar[str] = "score"
    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response", "score")

    prompt: Prompt
    response: str
    score: float

    def _validate(self) -> None:
        _check_prompt(self.prompt)
        _check_text(self.response, "response")
        self.score = _check_number(self.score, "score")

    @classmethod
    def _normalize(cls, d: dict[str, Any]) -> dict[str, Any]:
        return _take_response(d)


class ScorePairs(NamedTuple):
    """What :func:`score_pairs` returns.

    Attributes:
        pairs: the comparisons, ``chosen`` the higher-scored response.
        n_ties: pairs whose two responses have the same (mean) score, included as ``tie=True``.
        n_prompts: prompts with at least two distinct scored responses.
        n_unpaired: score records left out: the only scored response to their prompt.
    """

    pairs: list[Comparison]
    n_ties: int
    n_prompts: int
    n_unpaired: int


def score_pairs(records: Sequence[ScoreFeedback]) -> ScorePairs:
    """Turn score (Likert) records into comparisons within each prompt.

    Several scores of one response (several annotators) are averaged first. For a prompt
    with K distinct scored responses, every one of the C(K, 2) pairs becomes a comparison: the
    higher mean score is ``chosen``, ``margin`` is the score gap, equal means are a tie, and
    each pair weighs ``1 / C(K, 2)`` with ``group`` shared by the prompt's pairs, so a prompt
    counts as much as one comparison, as a K-ranking's pairs do (Ouyang et al. 2022, eq. 1).
    The scores behave like a ranking by scores (:meth:`Ranking.to_comparisons`) without its
    K <= 9 limit.

    Args:
        records: ScoreFeedback records, in any order.

    Returns:
        The pairs and the counts (see :class:`ScorePairs`).

    Raises:
        TypeError: a record is not a ScoreFeedback.
    """
    by_prompt: dict[str, tuple[Prompt, dict[str, list[ScoreFeedback]]]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, ScoreFeedback):
            raise TypeError(f"score_pairs takes ScoreFeedback records; record {index} is a "
                            f"{type(record).__name__}")
        key = record.prompt if isinstance(record.prompt, str) else \
            json.dumps(record.prompt, sort_keys=True)
        responses = by_prompt.setdefault(key, (record.prompt, {}))[1]
        responses.setdefault(record.response, []).append(record)
    pairs: list[Comparison] = []
    n_ties = n_prompts = n_unpaired = 0
    for number, (prompt, responses) in enumerate(by_prompt.values()):
        if len(responses) < 2:
            n_unpaired += sum(len(v) for v in responses.values())
            continue
        n_prompts += 1
        texts = list(responses)
        mean = {t: sum(r.score for r in responses[t]) / len(responses[t]) for t in texts}
        weight = 1.0 / math.comb(len(texts), 2)
        for a, b in combinations(texts, 2):
            win, lose = (b, a) if mean[b] > mean[a] else (a, b)
            tie = mean[a] == mean[b]
            n_ties += tie
            sources = {r.source for r in responses[a] + responses[b]}
            pairs.append(Comparison(
                prompt=_plain(prompt), chosen=win, rejected=lose, margin=abs(mean[a] - mean[b]),
                tie=tie, weight=weight, group=f"scores-{number}",
                source=sources.pop() if len(sources) == 1 else None,
                meta={"scores": [mean[win], mean[lose]]},
            ))
    return ScorePairs(pairs, n_ties, n_prompts, n_unpaired)
