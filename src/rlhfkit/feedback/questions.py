"""The question types an annotator answers: one object per type, registered by name.

An annotator sees an item's responses in a per-annotator shuffled *display order*; the answer
they send is in display terms (``left``/``right``, a rank per displayed response). The store
keeps the answer in *canonical* terms (response index in the item) together with the order
that was shown, so agreement and export never depend on the shuffle. A response may carry an
image or animation (``media``, see :func:`is_media`) shown above its text.

| type          | responses | answer sent (display terms)                  | stored (canonical)                  |
|---------------|-----------|----------------------------------------------|-------------------------------------|
| write_prompt  | 0         | ``{"text": str}``                            | same                                |
| demonstration | 0         | ``{"text": str}``                            | same                                |
| binary        | 1         | ``{"value": "up" | "down"}``                 | same                                |
| likert        | 1         | ``{"score": 1..7}``                          | same                                |
| spans         | 1         | ``{"spans": [{start,end,category,note}], "missing": [str]}`` | same (sorted)       |
| correction    | 1         | ``{"text": str}``                            | same                                |
| pairwise      | 2         | ``{"choice": "left"|"right"|"tie"|"both_bad"}`` | ``{"choice": 0 | 1 | "tie" | "both_bad"}`` |
| rank          | 2..9      | ``{"ranks": [int per displayed response]}``, 1 = best, equal = tie | ``{"ranks": [...]}`` per item response, 0 = best |

Span offsets count Unicode code points (Python ``str`` indices), end exclusive; the page
converts the browser's UTF-16 offsets before sending them.

A type is a subclass of :class:`QuestionType` decorated with :func:`register`. It says how
many responses an item needs, its help text, how an answer is checked and made canonical,
what agreement compares, how a honeypot is graded, the record it exports and how such a
record is imported, and how a simulated labeler answers it. The labelling page draws each
question from ``templates/questions/<name>.html`` and collects its answer with the handler
that ``static/questions/<script>.js`` registers. Adding a type is that class, that partial and
that handler; nothing else names question types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from ..data import records as R
from ..data.records import MAX_K, MIN_K, SPAN_CATEGORIES
from . import agreement as A
from .errors import InputError, check_json, check_text

MAX_TEXT = 50_000  # characters in any one free-text answer or response
MAX_SPANS = 200
LIKERT_MIN, LIKERT_MAX = 1, 7
MAX_MEDIA = 2_000_000  # characters of one response's image (a base64 data: URI)
_MEDIA = re.compile(r"data:image/(gif|png|webp|jpeg);base64,[A-Za-z0-9+/]+={0,2}")

Units = Mapping[Hashable, Mapping[str, Any]]
"""``{unit: {annotator: value}}``: what agreement statistics compare."""


def is_media(value: Any) -> bool:
    """Whether ``value`` is an image a response may carry.

    That is a base64 ``data:`` URI of a GIF, PNG, WebP or JPEG (animated GIFs show trajectory
    segments) of at most ``MAX_MEDIA`` characters. Only such URIs are accepted, so nothing but
    an inline image can reach the page's ``src``.
    """
    return isinstance(value, str) and len(value) <= MAX_MEDIA and _MEDIA.fullmatch(value) is not None


class AnswerError(InputError):
    """An answer (or item) that does not fit its question; the message says which field and why."""


class QuestionType:
    """One kind of question: everything the app needs to know about it, in one place.

    Subclasses set the class attributes and override the methods whose default does not fit.
    """

    name: ClassVar[str]
    """The name projects list (``"pairwise"``)."""
    kind: ClassVar[str]
    """The kind of record a label exports as (``"comparison"``)."""
    responses: ClassVar[tuple[int, int]] = (1, 1)
    """Fewest and most responses an item of this type shows."""
    help: ClassVar[str]
    """The question as the labelling page asks it."""
    layout: ClassVar[str] = "single"
    """How the page lays the responses out when this type is asked: none, single, pair or list."""
    marks_text: ClassVar[bool] = False
    """Whether the annotator selects stretches of the response text (the page makes it selectable)."""
    needs_prompt: ClassVar[bool] = True
    """Whether an item must have a prompt."""
    script: ClassVar[str | None] = None
    """The page's answer handler: ``static/questions/<script>.js`` registers it under this
    name (default: the type's name). The partial is always ``templates/questions/<name>.html``."""

    # -- answers ---------------------------------------------------------------------------

    def validate(self, answer: dict, order: list[int], texts: list[str],
                 categories: list[str]) -> dict:
        """Check a display-terms answer and return it in canonical terms.

        Args:
            answer: the JSON object the annotator sent for this question.
            order: display position ``j`` shows item response ``order[j]``.
            texts: the item's response texts (canonical order).
            categories: span categories allowed in the project.

        Raises:
            AnswerError: naming the question, the field and what was expected.
        """
        raise NotImplementedError

    def display(self, stored: dict, order: list[int]) -> dict:
        """The display-terms answer that :meth:`validate` turns into ``stored`` (its inverse)."""
        return dict(stored)

    def canonical_gold(self, gold: Any, texts: list[str], categories: list[str]) -> dict:
        """Check a honeypot's gold answer (canonical terms) and return it normalised."""
        if not isinstance(gold, dict):
            raise AnswerError(f"{self.name}: the gold answer must be a JSON object")
        identity = list(range(len(texts)))
        return self.validate(self.display(gold, identity), identity, texts, categories)

    # -- agreement and honeypots -----------------------------------------------------------

    def agreement_units(self, item: Hashable, texts: list[str],
                        stored: dict) -> Iterable[tuple[Hashable, Any]]:
        """The ``(unit, value)`` pairs one stored answer adds to the agreement statistics."""
        return ()

    def agreement(self, units: Units) -> dict | None:
        """Agreement statistics of this question over ``{unit: {annotator: value}}`` (None: none)."""
        return None

    def gold_match(self, stored: dict, gold: dict) -> bool | None:
        """Whether an answer matches a honeypot's gold answer (None: not gradable)."""
        return None

    def gold_record(self, gold: dict, texts: list[str]) -> dict:
        """The gold answer in the terms of the exported record (for reliability estimates)."""
        return dict(gold)

    # -- items and records -----------------------------------------------------------------

    def check_item(self, prompt: Any, texts: list[str], where: str) -> None:
        """Refuse an item this question cannot be asked about (or exported from)."""
        if self.needs_prompt:
            try:
                R.PromptRecord(prompt=prompt)
            except R.RecordError as err:
                raise AnswerError(f"{where}: {self.name} needs a prompt: {err}") from None
        for j, text in enumerate(texts):
            if not text.strip():
                raise AnswerError(f"{where}: responses[{j}] is empty")
        if len(set(texts)) != len(texts):
            raise AnswerError(f"{where}: two responses are the same text; {self.name} compares "
                              "different responses")

    def to_record(self, prompt: Any, texts: list[str], stored: dict, meta: dict,
                  common: dict) -> R.Record:
        """The record one stored answer exports as (``meta`` may gain question keys)."""
        raise NotImplementedError

    def claims(self, record: R.Record) -> bool:
        """Whether a labelled record of another tool answers this question."""
        return record.kind == self.kind

    def record_item(self, record: R.Record) -> tuple[Any, list[str]]:
        """The prompt and responses of the item a labelled record is about."""
        return record.prompt, [record.response]

    def record_answer(self, record: R.Record, texts: list[str]) -> dict:
        """A labelled record's answer in display terms, the responses shown in ``texts`` order."""
        raise NotImplementedError

    # -- simulated labelers ----------------------------------------------------------------

    def simulate(self, labeler: Any, task: dict, writer: Callable[[dict, str], str] | None) -> dict:
        """How a simulated labeler (or AI judge) answers this question for ``task`` (display terms).

        Args:
            labeler: anything with the ``binary``/``compare``/``rank``/``score`` methods of
                :class:`~rlhfkit.feedback.simulated.SimulatedLabeler`.
            task: the task JSON (``prompt``, ``responses`` in display order, ...).
            writer: ``writer(task, question) -> text`` for the writing questions.
        """
        raise NotImplementedError


QUESTIONS: dict[str, QuestionType] = {}
"""Every registered question type by name, in registration order."""


def register(cls: type[QuestionType]) -> type[QuestionType]:
    """Class decorator: make a question type available by its ``name``."""
    if cls.name in QUESTIONS:
        raise ValueError(f"question type {cls.name!r} is registered twice")
    QUESTIONS[cls.name] = cls()
    return cls


def get(name: Any) -> QuestionType:
    """The question type called ``name``; AnswerError naming the known ones otherwise."""
    q = QUESTIONS.get(name) if isinstance(name, str) else None
    if q is None:
        raise AnswerError(f"unknown question type {name!r}; expected one of {', '.join(QUESTIONS)}")
    return q


def responses_needed(question: str) -> tuple[int, int]:
    """Smallest and largest number of responses an item needs for this question type."""
    return get(question).responses


def check_questions(questions: Any) -> tuple[int, int]:
    """Check a project's question list and return the response-count range its items need.

    Questions asked on the same item must agree on how many responses it shows, e.g.
    ``binary`` + ``likert`` + ``spans`` (one response) or ``pairwise`` alone (two).
    """
    if not isinstance(questions, list | tuple) or not questions:
        raise AnswerError("a project needs at least one question type")
    lo, hi = 0, MAX_K
    for q in questions:
        qlo, qhi = get(q).responses
        lo, hi = max(lo, qlo), min(hi, qhi)
    if lo > hi:
        raise AnswerError(
            f"question types {list(questions)} need different numbers of responses per item; "
            "put them in separate projects")
    if len(set(questions)) != len(questions):
        raise AnswerError(f"question types repeat in {list(questions)}")
    return lo, hi


def question_for_record(record: R.Record) -> QuestionType:
    """The question a labelled record answers (a demonstration with ``meta.corrects`` is a correction)."""
    for q in QUESTIONS.values():
        if q.claims(record):
            return q
    raise AnswerError(f"{record.kind!r} records carry no label to import")


def record_kinds() -> list[str]:
    """The record kinds some question type imports."""
    return list(dict.fromkeys(q.kind for q in QUESTIONS.values()))


def page_view(questions: Sequence[str], k: int) -> dict:
    """What the labelling page needs to draw an item of ``k`` responses for these questions."""
    types = [get(q) for q in questions]
    layouts = {t.layout for t in types}
    if k == 0:
        layout = "none"
    elif k == 1:
        layout = "single"
    else:
        layout = "pair" if k == 2 and "pair" in layouts else "list"
    return {
        "layout": layout,
        "marks_text": any(t.marks_text for t in types),
        "prompt_is_instructions": not all(t.needs_prompt for t in types),
        "partials": {t.name: f"questions/{t.name}.html" for t in types},
        "handlers": {t.name: t.script or t.name for t in types},
        "help": {t.name: t.help for t in types},
        "scripts": list(dict.fromkeys(f"questions/{t.script or t.name}.js" for t in types)),
    }


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _answer(answer: Any, name: str) -> dict:
    if not isinstance(answer, dict):
        raise AnswerError(f"{name}: answer must be a JSON object")
    return answer


def _integer(value: Any, lo: int, hi: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and lo <= value <= hi


class _Categorical(QuestionType):
    """A question with one categorical value per answer (agreement: kappas, alpha, majority)."""

    alpha_levels: ClassVar[tuple[str, ...]] = ("nominal",)
    kappa_weights: ClassVar[str | None] = None
    kappa_categories: ClassVar[list | None] = None

    def value(self, stored: dict) -> Hashable:
        """The categorical value agreement compares."""
        raise NotImplementedError

    def agreement_units(self, item, texts, stored):
        """One unit per item."""
        return [(item, self.value(stored))]

    def agreement(self, units: Units) -> dict:
        """Kappas (Cohen over pairs, Fleiss), alpha at ``alpha_levels``, agreement with the majority."""
        return A.categorical_agreement(units, levels=self.alpha_levels, weights=self.kappa_weights,
                                       categories=self.kappa_categories)


class _Writing(QuestionType):
    """An answer that is free text the annotator writes."""

    kind = "demonstration"
    responses = (0, 0)
    layout = "none"
    script = "text"

    def validate(self, answer, order, texts, categories):
        """``{"text": non-empty str}``."""
        answer = _answer(answer, self.name)
        return {"text": check_text(answer.get("text"), f"{self.name}: field 'text'",
                                   max_chars=MAX_TEXT, allow_empty=False)}

    def record_answer(self, record, texts):
        """The response the record holds."""
        return {"text": record.response}

    def simulate(self, labeler, task, writer):
        """The writer's text."""
        if writer is None:
            raise ValueError(f"a machine annotator needs a writer for {self.name!r} questions")
        return {"text": writer(task, self.name)}


# ---------------------------------------------------------------------------------------------
# The types


@register
class WritePrompt(_Writing):
    """The annotator writes a prompt (the item's prompt, if any, is shown as instructions)."""

    name = "write_prompt"
    kind = "prompt"
    help = "Write a prompt"
    needs_prompt = False

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``PromptRecord``; the instructions shown go to ``meta.instructions``."""
        if prompt:
            meta["instructions"] = prompt
        return R.PromptRecord(prompt=stored["text"], meta=meta, **common)

    def record_item(self, record):
        """The instructions are the item."""
        return record.meta.get("instructions") or "", []

    def record_answer(self, record, texts):
        """The prompt the record holds."""
        if not isinstance(record.prompt, str):
            raise AnswerError("a prompt written as chat messages cannot be a write_prompt answer")
        return {"text": record.prompt}


@register
class Demonstration(_Writing):
    """The annotator writes the response they would want."""

    name = "demonstration"
    help = "Write the response you would want"

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``Demonstration``."""
        return R.Demonstration(prompt=prompt, response=stored["text"], meta=meta, **common)

    def claims(self, record):
        """Demonstrations that do not correct a response."""
        return record.kind == "demonstration" and not isinstance(record.meta.get("corrects"), str)

    def record_item(self, record):
        """The prompt alone."""
        return record.prompt, []


@register
class Binary(_Categorical):
    """👍 or 👎 for one response."""

    name = "binary"
    kind = "binary"
    help = "Is this response good?"

    def validate(self, answer, order, texts, categories):
        """``{"value": "up" | "down"}``."""
        value = _answer(answer, self.name).get("value")
        if value not in ("up", "down"):
            raise AnswerError(f"binary: field 'value' must be 'up' or 'down', got {value!r}")
        return {"value": value}

    def value(self, stored):
        """The thumb."""
        return stored["value"]

    def gold_match(self, stored, gold):
        """The same thumb."""
        return stored["value"] == gold["value"]

    def gold_record(self, gold, texts):
        """``{"label": bool}`` as in ``BinaryFeedback``."""
        return {"label": gold["value"] == "up"}

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``BinaryFeedback`` (👍 = True)."""
        return R.BinaryFeedback(prompt=prompt, response=texts[0], label=stored["value"] == "up",
                                meta=meta, **common)

    def record_answer(self, record, texts):
        """👍 for ``label=True``."""
        return {"value": "up" if record.label else "down"}

    def simulate(self, labeler, task, writer):
        """The labeler's binary judgement."""
        up = labeler.binary(task["prompt"], task["responses"][0]).label
        return {"value": "up" if up else "down"}


@register
class Pairwise(_Categorical):
    """Which of two responses is better (or a tie, or both bad)."""

    name = "pairwise"
    kind = "comparison"
    responses = (2, 2)
    help = "Which response do you prefer?"
    layout = "pair"
    CHOICES: ClassVar[tuple[str, ...]] = ("left", "right", "tie", "both_bad")

    def validate(self, answer, order, texts, categories):
        """``{"choice": left | right | tie | both_bad}`` -> the canonical index or tie/both_bad."""
        choice = _answer(answer, self.name).get("choice")
        if choice in ("tie", "both_bad"):
            return {"choice": choice}
        if choice not in ("left", "right"):
            raise AnswerError(
                f"pairwise: field 'choice' must be 'left', 'right', 'tie' or 'both_bad', got {choice!r}")
        return {"choice": order[0 if choice == "left" else 1]}

    def display(self, stored, order):
        """The side the canonical choice was shown on."""
        choice = stored.get("choice")
        if _integer(choice, 0, 1):
            return {"choice": "left" if order.index(choice) == 0 else "right"}
        return {"choice": choice}

    def value(self, stored):
        """The choice as a string (index, tie or both_bad)."""
        return str(stored["choice"])

    def gold_match(self, stored, gold):
        """The same choice."""
        return str(stored["choice"]) == str(gold["choice"])

    def gold_record(self, gold, texts):
        """``{"chosen", "rejected"}`` texts, or ``{"tie": True}``."""
        c = gold["choice"]
        if c in (0, 1):
            return {"chosen": texts[c], "rejected": texts[1 - c]}
        return {"tie": True, "both_bad": c == "both_bad"}

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``Comparison``; tie and both-bad are ``tie=True`` (``meta.both_bad``)."""
        choice = stored["choice"]
        if choice in (0, 1):
            return R.Comparison(prompt=prompt, chosen=texts[choice], rejected=texts[1 - choice],
                                meta=meta, **common)
        meta["both_bad"] = choice == "both_bad"
        return R.Comparison(prompt=prompt, chosen=texts[0], rejected=texts[1], tie=True,
                            meta=meta, **common)

    def record_item(self, record):
        """The two responses, chosen first."""
        return record.prompt, [record.chosen, record.rejected]

    def record_answer(self, record, texts):
        """The side the chosen response is on; a tie (or both bad, ``meta.both_bad``)."""
        if record.tie:
            return {"choice": "both_bad" if record.meta.get("both_bad") else "tie"}
        return {"choice": "left" if texts.index(record.chosen) == 0 else "right"}

    def simulate(self, labeler, task, writer):
        """The labeler's comparison."""
        left, right = task["responses"]
        c = labeler.compare(task["prompt"], left, right)
        return {"choice": "tie" if c.tie else ("left" if c.chosen == left else "right")}


@register
class Rank(QuestionType):
    """Rank K responses, 1 = best; equal ranks are ties."""

    name = "rank"
    kind = "ranking"
    responses = (MIN_K, MAX_K)
    help = "Rank the responses from best to worst"
    layout = "list"

    def validate(self, answer, order, texts, categories):
        """``{"ranks": [1..K per displayed response]}`` -> 0-based ranks per item response."""
        ranks = _answer(answer, self.name).get("ranks")
        k = len(order)
        if not isinstance(ranks, list) or len(ranks) != k or not all(_integer(r, 1, k) for r in ranks):
            raise AnswerError(f"rank: field 'ranks' must be a list of {k} integers in 1..{k} (1 = best)")
        canonical = [0] * k
        for position, rank in enumerate(ranks):
            canonical[order[position]] = rank - 1
        return {"ranks": canonical}

    def display(self, stored, order):
        """1-based ranks per displayed response."""
        ranks = stored.get("ranks")
        if not isinstance(ranks, list) or len(ranks) != len(order) or not all(
                _integer(r, 0, len(order) - 1) for r in ranks):
            return {"ranks": None}
        return {"ranks": [ranks[j] + 1 for j in order]}

    def canonical_gold(self, gold, texts, categories):
        """0-based ranks, one per item response (0 = best)."""
        ranks = gold.get("ranks") if isinstance(gold, dict) else None
        k = len(texts)
        if not isinstance(ranks, list) or len(ranks) != k or not all(_integer(r, 0, k - 1) for r in ranks):
            raise AnswerError(f"rank: field 'ranks' must be a list of {k} integers in 0..{k - 1} "
                              "(0 = best, in the item's order)")
        return {"ranks": list(ranks)}

    def agreement_units(self, item, texts, stored):
        """One unit per (item, response): ordinal alpha compares the rank each gave it."""
        return [((item, idx), r) for idx, r in enumerate(stored["ranks"])]

    def agreement(self, units):
        """Ordinal and interval alpha."""
        return A.categorical_agreement(units, levels=("ordinal", "interval"), kappas=False,
                                       majority=False)

    def gold_match(self, stored, gold):
        """The response ranked best is one of the gold best."""
        best = [i for i, r in enumerate(gold["ranks"]) if r == min(gold["ranks"])]
        return stored["ranks"].index(min(stored["ranks"])) in best

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``Ranking`` with ``ranks`` (0 = best) in the item's order."""
        return R.Ranking(prompt=prompt, responses=list(texts), ranks=list(stored["ranks"]),
                         meta=meta, **common)

    def record_item(self, record):
        """All K responses."""
        return record.prompt, list(record.responses)

    def record_answer(self, record, texts):
        """0-based ranks are kept when they fit 0..K-1, else (and for scores) re-ranked."""
        k = len(record.responses)
        if record.ranks is not None:
            ranks = list(record.ranks)
            if max(ranks) >= k:
                ranks = _better_first_ranks(ranks, higher_is_better=False)
        else:
            ranks = _better_first_ranks(list(record.scores), higher_is_better=True)
        by_text = dict(zip(record.responses, ranks))
        return {"ranks": [by_text[t] + 1 for t in texts]}

    def simulate(self, labeler, task, writer):
        """The labeler's ranking, in display positions."""
        shown = task["responses"]
        r = labeler.rank(task["prompt"], shown)
        if r.ranks is not None:
            ranks = list(r.ranks)
        else:  # scores, higher is better
            levels = sorted(set(r.scores), reverse=True)
            ranks = [levels.index(s) for s in r.scores]
        return {"ranks": [ranks[r.responses.index(t)] + 1 for t in shown]}


def _better_first_ranks(values: list, higher_is_better: bool) -> list[int]:
    """Competition ranks, 0 = best: each response's rank is how many are strictly better."""
    return [sum((w > v) if higher_is_better else (w < v) for w in values) for v in values]


def likert_from_score(score: float) -> int:
    """Squash an unbounded score onto 1..7 (4 = a score of 0)."""
    return int(min(LIKERT_MAX, max(LIKERT_MIN, round(4 + 3 * math.tanh(score)))))


@register
class Likert(_Categorical):
    """A rating of one response from 1 (very bad) to 7 (excellent)."""

    name = "likert"
    kind = "score"
    help = "Rate the response (1 = very bad, 7 = excellent)"
    alpha_levels = ("ordinal", "interval")
    kappa_weights = "quadratic"
    kappa_categories = list(range(LIKERT_MIN, LIKERT_MAX + 1))

    def validate(self, answer, order, texts, categories):
        """``{"score": 1..7}``."""
        score = _answer(answer, self.name).get("score")
        if not _integer(score, LIKERT_MIN, LIKERT_MAX):
            raise AnswerError(f"likert: field 'score' must be an integer {LIKERT_MIN}..{LIKERT_MAX}, got {score!r}")
        return {"score": score}

    def value(self, stored):
        """The score."""
        return stored["score"]

    def gold_match(self, stored, gold):
        """Within one point."""
        return abs(stored["score"] - gold["score"]) <= 1

    def gold_record(self, gold, texts):
        """``{"score": float}`` as in ``ScoreFeedback``."""
        return {"score": float(gold["score"])}

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``ScoreFeedback`` (score 1..7)."""
        return R.ScoreFeedback(prompt=prompt, response=texts[0], score=float(stored["score"]),
                               meta=meta, **common)

    def record_answer(self, record, texts):
        """A whole-number score on the 1..7 scale."""
        if record.score != int(record.score) or not LIKERT_MIN <= record.score <= LIKERT_MAX:
            raise AnswerError(f"score {record.score} is not a whole number {LIKERT_MIN}..{LIKERT_MAX} "
                              "(the likert question's scale)")
        return {"score": int(record.score)}

    def simulate(self, labeler, task, writer):
        """The labeler's score squashed onto 1..7."""
        return {"score": likert_from_score(labeler.score(task["prompt"], task["responses"][0]).score)}


@register
class Spans(QuestionType):
    """Mark stretches of one response with a category (and a note); add missing information."""

    name = "spans"
    kind = "span"
    help = "Mark problems in the response"
    marks_text = True

    def validate(self, answer, order, texts, categories):
        """Spans with code-point offsets inside the response, and missing-information notes."""
        answer = _answer(answer, self.name)
        text = texts[0]
        spans, missing = answer.get("spans", []), answer.get("missing", [])
        if not isinstance(spans, list) or len(spans) > MAX_SPANS:
            raise AnswerError(f"spans: field 'spans' must be a list of at most {MAX_SPANS} spans")
        if not isinstance(missing, list) or len(missing) > MAX_SPANS:
            raise AnswerError(f"spans: field 'missing' must be a list of at most {MAX_SPANS} strings")
        for i, m in enumerate(missing):
            check_text(m, f"spans: missing[{i}]", max_chars=MAX_TEXT)
        if sum(len(m) for m in missing) > MAX_TEXT:
            raise AnswerError(f"spans: 'missing' notes exceed {MAX_TEXT} characters")
        out = []
        for i, span in enumerate(spans):
            if not isinstance(span, dict):
                raise AnswerError(f"spans: spans[{i}] must be an object")
            start, end, category, note = (span.get(k) for k in ("start", "end", "category", "note"))
            if not (_integer(start, 0, len(text)) and _integer(end, 0, len(text)) and start < end):
                raise AnswerError(f"spans: spans[{i}] needs integer 'start' < 'end' within the "
                                  f"response (0..{len(text)} characters)")
            if category not in categories:
                raise AnswerError(f"spans: spans[{i}].category must be one of {categories}, got {category!r}")
            if note is not None:
                check_text(note, f"spans: spans[{i}].note", max_chars=MAX_TEXT)
            out.append({"start": start, "end": end, "category": category, "note": note or None})
        out.sort(key=lambda s: (s["start"], s["end"]))
        return {"spans": out, "missing": [m for m in missing if m.strip()]}

    def agreement_units(self, item, texts, stored):
        """The response length and the marked spans, for per-character alpha."""
        return [(item, (len(texts[0]), tuple((m["start"], m["end"], m["category"])
                                              for m in stored["spans"])))]

    def agreement(self, units):
        """Per-character nominal alpha over all categories and per category."""
        return dict(A.span_agreement(units), cohen_kappa_mean=None, fleiss_kappa=None)

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``SpanFeedback``."""
        return R.SpanFeedback(prompt=prompt, response=texts[0],
                              spans=[R.Span(s["start"], s["end"], s["category"], s.get("note"))
                                     for s in stored["spans"]],
                              missing=list(stored.get("missing", [])), meta=meta, **common)

    def record_answer(self, record, texts):
        """The record's spans and missing-information notes."""
        return {"spans": [{"start": sp.start, "end": sp.end, "category": sp.category, "note": sp.note}
                          for sp in record.spans], "missing": list(record.missing)}

    def simulate(self, labeler, task, writer):
        """Simulated labelers mark nothing."""
        return {"spans": [], "missing": []}


@register
class Correction(_Writing):
    """The annotator edits the response into a better one."""

    name = "correction"
    responses = (1, 1)
    layout = "single"
    help = "Correct the response"

    def to_record(self, prompt, texts, stored, meta, common):
        """A ``Demonstration`` of the corrected text (``meta.corrects`` = the original)."""
        meta["corrects"] = texts[0]
        return R.Demonstration(prompt=prompt, response=stored["text"], meta=meta, **common)

    def claims(self, record):
        """Demonstrations with the corrected original in ``meta.corrects``."""
        return record.kind == "demonstration" and isinstance(record.meta.get("corrects"), str)

    def record_item(self, record):
        """The original response."""
        return record.prompt, [record.meta["corrects"]]


QUESTION_TYPES = tuple(QUESTIONS)
"""The names of the registered question types, in registration order."""


def check_categories(categories: Any) -> list[str]:
    """A project's span categories (default :data:`SPAN_CATEGORIES`), checked."""
    if categories is None or categories == []:
        return list(SPAN_CATEGORIES)
    if not isinstance(categories, list) or len(categories) > 50:
        raise AnswerError("categories must be a list of at most 50 names")
    for i, c in enumerate(categories):
        check_text(c, f"categories[{i}]", max_chars=64, allow_empty=False)
    if len(set(categories)) != len(categories):
        raise AnswerError(f"categories repeat in {categories}")
    return list(categories)


def check_gold(questions: list[str], gold: Any, texts: list[str], categories: list[str],
               where: str) -> dict:
    """A honeypot's gold answers, each checked (and normalised) by its question type."""
    if not isinstance(gold, dict) or not gold or not set(gold) <= set(questions):
        raise AnswerError(f"{where}: 'gold' must map question types of this project "
                          f"({', '.join(questions)}) to answers")
    check_json(gold, f"{where}: gold")
    out = {}
    for q, answer in gold.items():
        try:
            out[q] = get(q).canonical_gold(answer, texts, categories)
        except AnswerError as err:
            raise AnswerError(f"{where}: gold answer for {err}") from None
    return out
