"""The question types an annotator answers, and how answers are checked and stored.

An annotator sees an item's responses in a per-annotator shuffled *display order*; the answer
they send is in display terms (``left``/``right``, a rank per displayed response). The store
keeps the answer in *canonical* terms (response index in the item) together with the order
that was shown, so agreement and export never depend on the shuffle. A response may carry an
image or animation (``media``, see :func:`is_media`) shown above its text, e.g. the animated
trajectory segments that ``rlhfkit control --labeler app`` asks people to compare with
``pairwise``.

| type          | responses on the item | answer sent (display terms)                  | stored (canonical)                  |
|---------------|-----------------------|----------------------------------------------|-------------------------------------|
| write_prompt  | 0                     | ``{"text": str}``                            | same                                |
| demonstration | 0                     | ``{"text": str}``                            | same                                |
| binary        | 1                     | ``{"value": "up" | "down"}``                 | same                                |
| likert        | 1                     | ``{"score": 1..7}``                          | same                                |
| spans         | 1                     | ``{"spans": [{start,end,category,note}], "missing": [str]}`` | same                |
| correction    | 1                     | ``{"text": str}``                            | same                                |
| pairwise      | 2                     | ``{"choice": "left"|"right"|"tie"|"both_bad"}`` | ``{"choice": 0 | 1 | "tie" | "both_bad"}`` |
| rank          | 2..9                  | ``{"ranks": [int per displayed response]}``, 1 = best, equal = tie | ``{"ranks": [...]}`` per item response, 0 = best |
"""

from __future__ import annotations

import re
from typing import Any

QUESTION_TYPES = (
    "write_prompt", "demonstration", "binary", "pairwise", "rank", "likert", "spans",
    "correction",
)
SPAN_CATEGORIES = ("irrelevant", "untruthful", "missing-information")
MAX_TEXT = 50_000  # characters in any one free-text answer
MAX_SPANS = 200
LIKERT_MIN, LIKERT_MAX = 1, 7
MIN_K, MAX_K = 2, 9
MAX_MEDIA = 2_000_000  # characters of one response's image (a base64 data: URI)
_MEDIA = re.compile(r"data:image/(gif|png|webp|jpeg);base64,[A-Za-z0-9+/]+={0,2}")


def is_media(value: Any) -> bool:
    """Whether ``value`` is an image a response may carry.

    That is a base64 ``data:`` URI of a GIF, PNG, WebP or JPEG (animated GIFs show trajectory
    segments) of at most ``MAX_MEDIA`` characters. Only such URIs are accepted, so nothing but an inline image can reach the page's ``src``.
    """
    return isinstance(value, str) and len(value) <= MAX_MEDIA and _MEDIA.fullmatch(value) is not None


class AnswerError(ValueError):
    """An answer that does not fit its question; the message says which field and why."""


def responses_needed(question: str) -> tuple[int, int]:
    """Smallest and largest number of responses an item needs for this question type."""
    if question in ("write_prompt", "demonstration"):
        return 0, 0
    if question in ("binary", "likert", "spans", "correction"):
        return 1, 1
    if question == "pairwise":
        return 2, 2
    if question == "rank":
        return MIN_K, MAX_K
    raise AnswerError(f"unknown question type {question!r}; expected one of {', '.join(QUESTION_TYPES)}")


def check_questions(questions: list[str]) -> tuple[int, int]:
    """Check a project's question list and return the response-count range its items need.

    Questions asked on the same item must agree on how many responses it shows, e.g.
    ``binary`` + ``likert`` + ``spans`` (one response) or ``pairwise`` alone (two).
    """
    if not questions:
        raise AnswerError("a project needs at least one question type")
    lo, hi = 0, MAX_K
    for q in questions:
        qlo, qhi = responses_needed(q)
        lo, hi = max(lo, qlo), min(hi, qhi)
    if lo > hi:
        raise AnswerError(
            f"question types {questions} need different numbers of responses per item; "
            "put them in separate projects")
    if len(set(questions)) != len(questions):
        raise AnswerError(f"question types repeat in {questions}")
    return lo, hi


def _text(answer: dict, field: str, question: str, *, allow_empty: bool = False) -> str:
    value = answer.get(field)
    if not isinstance(value, str):
        raise AnswerError(f"{question}: field {field!r} must be a string")
    if len(value) > MAX_TEXT:
        raise AnswerError(f"{question}: field {field!r} is {len(value)} characters; at most {MAX_TEXT}")
    if not allow_empty and not value.strip():
        raise AnswerError(f"{question}: field {field!r} is empty")
    return value


def to_canonical(question: str, answer: Any, order: list[int], responses: list[str],
                 categories: list[str] | None = None) -> dict:
    """Validate a display-terms answer and turn it into the stored canonical form.

    Args:
        question: the question type.
        answer: the JSON object the annotator sent for this question.
        order: display position ``j`` shows item response ``order[j]``.
        responses: the item's response texts (canonical order), for span offsets.
        categories: span categories allowed in this project.

    Raises:
        AnswerError: naming the question, the field and what was expected.
    """
    if not isinstance(answer, dict):
        raise AnswerError(f"{question}: answer must be a JSON object")
    if question in ("write_prompt", "demonstration", "correction"):
        return {"text": _text(answer, "text", question)}
    if question == "binary":
        value = answer.get("value")
        if value not in ("up", "down"):
            raise AnswerError(f"binary: field 'value' must be 'up' or 'down', got {value!r}")
        return {"value": value}
    if question == "likert":
        score = answer.get("score")
        if isinstance(score, bool) or not isinstance(score, int) or not LIKERT_MIN <= score <= LIKERT_MAX:
            raise AnswerError(f"likert: field 'score' must be an integer {LIKERT_MIN}..{LIKERT_MAX}, got {score!r}")
        return {"score": score}
    if question == "pairwise":
        choice = answer.get("choice")
        if choice in ("tie", "both_bad"):
            return {"choice": choice}
        if choice not in ("left", "right"):
            raise AnswerError(
                f"pairwise: field 'choice' must be 'left', 'right', 'tie' or 'both_bad', got {choice!r}")
        return {"choice": order[0 if choice == "left" else 1]}
    if question == "rank":
        ranks = answer.get("ranks")
        k = len(order)
        if (not isinstance(ranks, list) or len(ranks) != k
                or any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= k for r in ranks)):
            raise AnswerError(f"rank: field 'ranks' must be a list of {k} integers in 1..{k} (1 = best)")
        canonical = [0] * k
        for position, rank in enumerate(ranks):
            canonical[order[position]] = rank - 1
        return {"ranks": canonical}
    if question == "spans":
        return _spans(answer, responses[0], categories or list(SPAN_CATEGORIES))
    raise AnswerError(f"unknown question type {question!r}")


def _spans(answer: dict, text: str, categories: list[str]) -> dict:
    spans = answer.get("spans", [])
    missing = answer.get("missing", [])
    if not isinstance(spans, list) or len(spans) > MAX_SPANS:
        raise AnswerError(f"spans: field 'spans' must be a list of at most {MAX_SPANS} spans")
    if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
        raise AnswerError("spans: field 'missing' must be a list of strings")
    if sum(len(m) for m in missing) > MAX_TEXT:
        raise AnswerError(f"spans: 'missing' notes exceed {MAX_TEXT} characters")
    out = []
    for i, span in enumerate(spans):
        if not isinstance(span, dict):
            raise AnswerError(f"spans: spans[{i}] must be an object")
        start, end, category = span.get("start"), span.get("end"), span.get("category")
        note = span.get("note")
        if (isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int)
                or not isinstance(end, int) or not 0 <= start < end <= len(text)):
            raise AnswerError(
                f"spans: spans[{i}] needs integer 'start' < 'end' within the response (0..{len(text)})")
        if category not in categories:
            raise AnswerError(f"spans: spans[{i}].category must be one of {categories}, got {category!r}")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_TEXT):
            raise AnswerError(f"spans: spans[{i}].note must be a string of at most {MAX_TEXT} characters")
        out.append({"start": start, "end": end, "category": category, "note": note or None})
    out.sort(key=lambda s: (s["start"], s["end"]))
    return {"spans": out, "missing": [m for m in missing if m.strip()]}


def agreement_value(question: str, stored: dict) -> Any:
    """The value agreement statistics compare for one stored answer (None: not comparable)."""
    if question == "binary":
        return stored["value"]
    if question == "likert":
        return stored["score"]
    if question == "pairwise":
        return str(stored["choice"])
    if question == "rank":
        return tuple(stored["ranks"])
    return None


def answers_match(question: str, stored: dict, gold: dict) -> bool | None:
    """Whether an answer matches a honeypot's gold answer (None: question not gradable).

    Likert counts as a match within one point; rank matches when the best response agrees.
    """
    if question == "binary":
        return stored["value"] == gold["value"]
    if question == "pairwise":
        return str(stored["choice"]) == str(gold["choice"])
    if question == "likert":
        return abs(stored["score"] - gold["score"]) <= 1
    if question == "rank":
        best = [i for i, r in enumerate(gold["ranks"]) if r == min(gold["ranks"])]
        return stored["ranks"].index(min(stored["ranks"])) in best
    return None
