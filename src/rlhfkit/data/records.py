"""Typed feedback records: the contract between feedback sources and trainers.

Every kind of human (or simulated, or AI) feedback that rlhfkit understands is one small
dataclass here. Records validate themselves when they are built, so a trainer that receives a
``Comparison`` can trust that ``chosen`` is a non-empty string different from ``rejected``.
The field list of each kind is documented in ``docs/records.md``.

Readers and writers live in :mod:`rlhfkit.data.io`; they call :func:`from_dict` for each row and
add the file and line (or row) to any :class:`RecordError` raised here.

Example:
    >>> r = Ranking(prompt="Say hi", responses=["hi", "hello", "yo"], ranks=[1, 0, 2], id="r1")
    >>> [(c.chosen, c.rejected) for c in r.to_comparisons()]
    [('hello', 'hi'), ('hi', 'yo'), ('hello', 'yo')]
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import combinations
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "KINDS",
    "ROLES",
    "SOURCES",
    "SPAN_CATEGORIES",
    "BinaryFeedback",
    "Comparison",
    "ComparisonSet",
    "Demonstration",
    "Message",
    "Prompt",
    "PromptRecord",
    "Ranking",
    "Record",
    "RecordError",
    "ScoreFeedback",
    "Span",
    "SpanFeedback",
    "ScorePairs",
    "as_comparisons",
    "closest_field",
    "from_dict",
    "infer_kind",
    "score_pairs",
    "unknown_fields",
]

Message = dict[str, Any]
"""One chat message: ``{"role": "user", "content": "..."}`` (extra keys are kept)."""

Prompt = str | list[Message]
"""A prompt is a plain string or a list of chat messages."""

SOURCES = ("human", "simulated", "ai")
"""Allowed values of the ``source`` field (or ``None``)."""

ROLES = ("system", "user", "assistant", "tool")
"""Allowed chat roles: the ones chat templates (SmolLM2's ChatML, Llama, Qwen, ...) know."""

_ROLE_HINTS = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
               "ai": "assistant", "chatbot": "assistant", "function": "tool"}
"""Other datasets' names for the roles (ShareGPT's human/gpt, Gemma's model, ...)."""

SPAN_CATEGORIES = ("irrelevant", "untruthful", "missing-information")
"""Built-in span categories (Wu et al. 2023, Fine-Grained RLHF); any other non-empty string is
also accepted as a user category."""

MIN_K, MAX_K = 2, 9
"""Allowed number of responses in a ranking."""


# --------------------------------------------------------------------------------------------
# The error type
# --------------------------------------------------------------------------------------------


class RecordError(ValueError):
    """A record (or a file of records) is not what rlhfkit expects.

    The message names, where known, the file, the line (JSONL, 1-based) or the row (CSV, Parquet,
    HF datasets, JSON lists: 0-based data row), the field, and what was expected, e.g.::

        prefs.jsonl, line 3, field 'chosen': expected a non-empty string; got '' (str)

    Attributes:
        message: what is wrong, without the location.
        field: the field (a dotted/indexed path such as ``spans[1].end``), or None.
        expected: what the field should have been, or None.
        file: the file that was being read, or None.
        line: 1-based line number in a JSONL file, or None.
        row: 0-based data row in a tabular file or JSON list, or None.
    """

    user_facing = True

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        expected: str | None = None,
        file: str | None = None,
        line: int | None = None,
        row: int | None = None,
        row_hint: str = "0-based data row",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.expected = expected
        self.file = file
        self.line = line
        self.row = row
        self.row_hint = row_hint

    def at(
        self,
        *,
        file: str | None = None,
        line: int | None = None,
        row: int | None = None,
        row_hint: str | None = None,
    ) -> RecordError:
        """Fill in the location (only the parts not already set) and return ``self``."""
        if self.file is None and file is not None:
            self.file = str(file)
        if self.line is None and self.row is None:
            self.line, self.row = line, row
            if row_hint is not None:
                self.row_hint = row_hint
        return self

    def within(self, prefix: str) -> RecordError:
        """Prefix the field path (``start`` -> ``spans[2].start``) and return ``self``."""
        self.field = prefix if self.field is None else f"{prefix}.{self.field}"
        return self

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row} ({self.row_hint})")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = self.message
        if self.expected is not None:
            text = f"expected {self.expected}; {self.message}"
        return f"{', '.join(where)}: {text}" if where else text


def _show(value: Any) -> str:
    """A short description of a bad value for an error message: ``'abc' (str)``."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {text} ({type(value).__name__})"


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (``wieght`` -> ``weight`` is 1).

    Counts insertions, deletions, substitutions and swaps of two neighbours.
    """
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def closest_field(key: str, names: Iterable[str]) -> str | None:
    """The field name ``key`` is probably a typo of, or None.

    A near miss is at most one edit away (two for names of six letters or more), ignoring
    case: ``wieght`` -> ``weight``, ``respnse`` -> ``response``, ``Prompt`` -> ``prompt``, but
    not ``prompt_id`` -> ``prompt``. Ties go to the first name given.
    """
    best, best_distance = None, None
    for name in names:
        if name == key:
            return None
        limit = 2 if min(len(name), len(key)) >= 6 else 1
        distance = _edit_distance(key.lower(), name.lower())
        if distance <= limit and (best_distance is None or distance < best_distance):
            best, best_distance = name, distance
    return best


# --------------------------------------------------------------------------------------------
# Field checks (each raises RecordError naming the field)
# --------------------------------------------------------------------------------------------


def _check_text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    expected = "a string" if allow_empty else "a non-empty string"
    if not isinstance(value, str):
        raise RecordError(_show(value), field=name, expected=expected)
    if not allow_empty and not value.strip():
        if value:
            expected += " (not only whitespace)"
        raise RecordError(_show(value), field=name, expected=expected)
    return value


def _check_optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    return _check_text(value, name)


def _check_number(value: Any, name: str, *, expected: str = "a finite number") -> float:
    # bool is an int subclass; True as a score is almost always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(_show(value), field=name, expected=expected)
    if not math.isfinite(value):
        raise RecordError(_show(value), field=name, expected=expected)
    return float(value)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise RecordError(_show(value), field=name, expected="a bool (true or false)")
    return value


def _check_messages(value: Any, name: str) -> list[Message]:
    expected = 'a non-empty list of messages {"role": str, "content": str}'
    if not isinstance(value, list) or not value:
        raise RecordError(_show(value), field=name, expected=expected)
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RecordError(_show(message), field=f"{name}[{i}]", expected=expected)
        for key in ("role", "content"):
            if key not in message:
                hint = ""
                if {"from", "value"} <= set(message):
                    hint = " (ShareGPT's 'from'/'value': rename them 'role'/'content')"
                raise RecordError("missing" + hint, field=f"{name}[{i}].{key}",
                                  expected="a string")
        role = _check_text(message["role"], f"{name}[{i}].role")
        if role not in ROLES:
            hint = f" (did you mean '{_ROLE_HINTS[role.lower()]}'?)" \
                if role.lower() in _ROLE_HINTS else ""
            raise RecordError(_show(role) + hint, field=f"{name}[{i}].role",
                              expected=f"one of {', '.join(ROLES)}")
        _check_text(message["content"], f"{name}[{i}].content", allow_empty=True)
    return value


def _check_prompt(value: Any, name: str = "prompt") -> Prompt:
    if isinstance(value, list):
        return _check_messages(value, name)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(
            _show(value), field=name, expected="a non-empty string or a list of chat messages"
        )
    return value


# --------------------------------------------------------------------------------------------
# The records
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Record:
    """Fields shared by every record (all optional, keyword-only).

    Attributes:
        id: a stable identifier; a ranking's id becomes the ``group`` of its pairs.
        annotator: who gave the feedback (a person's id, a labeler name, a judge model).
        source: one of ``human``, ``simulated``, ``ai``.
        created_at: ISO 8601 timestamp.
        meta: free-form JSON-able dict, kept on round trip. Unknown columns of a file land here.
    """

    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[str, ...]] = ()
    """The kind-specific field names, in the order ``to_dict`` writes them."""

    id: str | None = None
    annotator: str | None = None
    source: str | None = None
    created_at: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kind(self) -> str:
        """The kind string of this record (``comparison``, ``ranking``, ...)."""
        return self.KIND

    def validate(self) -> None:
        """Check every field; raise :class:`RecordError` naming the first bad one."""
        _check_optional_text(self.id, "id")
        _check_optional_text(self.annotator, "annotator")
        if self.source is not None and self.source not in SOURCES:
            raise RecordError(
                _show(self.source), field="source", expected=f"one of {', '.join(SOURCES)}"
            )
        if isinstance(self.created_at, datetime | date):
            self.created_at = self.created_at.isoformat()
        if self.created_at is not None:
            _check_text(self.created_at, "created_at")
            try:
                datetime.fromisoformat(self.created_at)
            except ValueError:
                raise RecordError(
                    _show(self.created_at),
                    field="created_at",
                    expected="an ISO 8601 timestamp such as 2024-05-01T12:00:00Z",
                ) from None
        if not isinstance(self.meta, dict):
            raise RecordError(_show(self.meta), field="meta", expected="a dict")
        self._validate()

    def _validate(self) -> None:
        """Kind-specific checks (and light normalisation such as int -> float)."""

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict: the kind's fields, then the shared ones (no ``kind`` key)."""
        out = {name: _plain(getattr(self, name)) for name in self.FIELDS}
        out.update(
            id=self.id,
            annotator=self.annotator,
            source=self.source,
            created_at=self.created_at,
            meta=_plain(self.meta),
        )
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Record:
        """Build a record of this kind from a dict (a JSON object, a table row).

        Keys that name no field of this kind are kept in ``meta``; ``None`` values stand for
        missing optional fields (tables fill absent cells with nulls). TRL column names are
        accepted (see :func:`from_dict`).

        Raises:
            RecordError: a required field is missing or a field has the wrong type or value.
        """
        if not isinstance(d, dict):
            raise RecordError(_show(d), expected="a JSON object (a dict of fields)")
        d = dict(d)
        kind = d.pop("kind", None)
        if kind is not None and kind != cls.KIND:
            raise RecordError(_show(kind), field="kind", expected=f"'{cls.KIND}'")
        _check_near_misses(d, cls.field_names())
        d = cls._normalize(d)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, value in d.items():
            if key in names:
                if value is not None:
                    kwargs[key] = value
            elif value is not None:
                extras[key] = value
        meta = kwargs.get("meta", {})
        if not isinstance(meta, dict):
            raise RecordError(_show(meta), field="meta", expected="a dict")
        if extras:
            kwargs["meta"] = {**extras, **meta}
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in kwargs:
                raise RecordError("missing", field=f.name, expected=_EXPECTED.get(f.name))
        return cls(**kwargs)

    @classmethod
    def _normalize(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Map TRL-style column names and message lists onto this kind's fields."""
        return d

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every key this kind reads: its fields, the shared ones, ``kind`` and TRL's names."""
        names = [f.name for f in dataclasses.fields(cls)]
        aliases = ["completion"] if "response" in names else []
        return ("kind", *names, *aliases)


def _check_near_misses(d: dict[str, Any], names: Sequence[str]) -> None:
    """Raise for a key that is a near miss of a field the record does not set (a typo)."""
    for key, value in d.items():
        if key in names or value is None:
            continue
        guess = closest_field(key, [n for n in names if d.get(n) is None])
        if guess is not None:
            raise RecordError(
                f"not a field of this record kind; did you mean '{guess}'? (a field of "
                "your own goes in 'meta')",
                field=key,
            )


def unknown_fields(d: dict[str, Any], kind: str) -> list[str]:
    """Keys of ``d`` that name no field of ``kind`` (they are kept in the record's ``meta``).

    Keys with null values (missing cells) are left out.
    """
    names = set(_check_kind(kind).field_names())
    return [k for k, v in d.items() if k not in names and v is not None]


_EXPECTED = {
    "prompt": "a non-empty string or a list of chat messages",
    "response": "a non-empty string",
    "chosen": "a non-empty string",
    "rejected": "a non-empty string",
    "responses": f"a list of {MIN_K}..{MAX_K} distinct non-empty strings",
    "label": "a bool (true or false)",
    "score": "a finite number",
}


def _plain(value: Any) -> Any:
    """Deep-copy lists/dicts (and turn Spans into dicts) so to_dict never shares state."""
    if isinstance(value, Span):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _unwrap_conversation(d: dict[str, Any], key: str, name: str) -> None:
    """Turn a TRL conversational response ``d[key]`` (a message list) into its text, in place.

    The last message must be the assistant's; its content becomes the response. The messages
    before it (if any) are the prompt: they fill in a missing ``prompt`` (TRL's implicit prompt),
    or must agree with the given one. A string prompt equal to the last user message of that
    conversation is replaced by the whole conversation, which also keeps any system message
    (the layout of e.g. ``HuggingFaceH4/ultrafeedback_binarized``).
    """
    messages = _check_messages(d[key], name)
    last = messages[-1]
    if last["role"] != "assistant":
        raise RecordError(
            _show(last["role"]), field=f"{name}[{len(messages) - 1}].role", expected="'assistant'"
        )
    d[key] = last["content"]
    before = messages[:-1]
    if not before:
        return
    prompt = d.get("prompt")
    if prompt is None or prompt == before:
        d["prompt"] = before
    elif (
        isinstance(prompt, str) and before[-1]["role"] == "user" and before[-1]["content"] == prompt
    ):
        d["prompt"] = before
    else:
        raise RecordError(
            "the conversation before the last message disagrees with the prompt",
            field=name,
            expected="the same prompt messages in 'prompt', 'chosen' and 'rejected'",
        )


def _take_response(d: dict[str, Any], target: str = "response") -> dict[str, Any]:
    """Rename TRL's ``completion`` to ``response`` and unwrap message lists."""
    name = target
    if d.get("completion") is not None:
        if d.get(target) is not None:
            raise RecordError(
                "both 'response' and 'completion' are set",
                field="completion",
                expected="only one of them",
            )
        d[target] = d.pop("completion")
        name = "completion"
    if isinstance(d.get(target), list):
        _unwrap_conversation(d, target, name)
    return d


@dataclass
class PromptRecord(Record):
    """A prompt to sample responses for.

    Attributes:
        prompt: a non-empty string or a list of chat messages.
    """

    KIND: ClassVar[str] = "prompt"
    FIELDS: ClassVar[tuple[str, ...]] = ("prompt",)

    prompt: Prompt

    def _validate(self) -> None:
        _check_prompt(self.prompt)


@dataclass
class Demonstration(Record):
    """A response written by a person (or a strong model) for supervised fine-tuning.

    Give either ``prompt`` and ``response``, or ``messages``: the whole chat whose last message
    is the assistant's. From ``messages``, ``prompt`` (the messages before the last) and
    ``response`` (the last content) are filled in, so trainers can always read those two.

    Attributes:
        prompt: a non-empty string or a list of chat messages.
        response: the demonstrated response text.
        messages: the whole chat, when the demonstration was given that way.
    """

    KIND: ClassVar[str] = "demonstration"
    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response")

    prompt: Prompt | None = None
    response: str | None = None
    messages: list[Message] | None = None

    def _validate(self) -> None:
        if self.messages is not None:
            messages = _check_messages(self.messages, "messages")
            last = messages[-1]
            if last["role"] != "assistant":
                raise RecordError(
                    _show(last["role"]),
                    field=f"messages[{len(messages) - 1}].role",
                    expected="'assistant' (the last message is the demonstrated response)",
                )
            if len(messages) < 2:
                raise RecordError(
                    "got only the assistant message",
                    field="messages",
                    expected="at least one message before the assistant's",
                )
            _check_text(last["content"], f"messages[{len(messages) - 1}].content")
            prompt, response = messages[:-1], last["content"]
            if self.prompt is None and self.response is None:
                self.prompt, self.response = [dict(m) for m in prompt], response
            elif self.prompt != prompt or self.response != response:
                raise RecordError(
                    "'prompt'/'response' disagree with 'messages'",
                    field="messages",
                    expected="either messages or prompt and response",
                )
            return
        if self.prompt is None:
            raise RecordError("missing", field="prompt", expected=_EXPECTED["prompt"])
        if self.response is None:
            raise RecordError("missing", field="response", expected=_EXPECTED["response"])
        _check_prompt(self.prompt)
        _check_text(self.response, "response")

    def to_dict(self) -> dict[str, Any]:
        """Like :meth:`Record.to_dict`; a demonstration given as ``messages`` stays that way."""
        out = super().to_dict()
        if self.messages is not None:
            del out["prompt"], out["response"]
            out = {"messages": _plain(self.messages), **out}
        return out

    @classmethod
    def _normalize(cls, d: dict[str, Any]) -> dict[str, Any]:
        has_response = d.get("response") is not None or d.get("completion") is not None
        if d.get("messages") is not None and not has_response:
            # TRL SFT sets (e.g. HuggingFaceH4/ultrachat_200k) carry a `prompt` text column
            # beside `messages`; the messages are the demonstration, the text is kept in meta.
            prompt = d.pop("prompt", None)
            if prompt is not None:
                meta = d.get("meta")
                if meta is None or isinstance(meta, dict):  # else validation names 'meta'
                    d["meta"] = {"prompt": prompt, **(meta or {})}
            return d
        return _take_response(d)


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


@dataclass
class Span:
    """A marked stretch of a response: characters ``response[start:end]``.

    Attributes:
        start: first character (0-based, inclusive).
        end: one past the last character (exclusive); ``start < end``.
        category: ``irrelevant``, ``untruthful``, ``missing-information`` or any user category.
        note: the annotator's free-text comment, or None.
    """

    start: int
    end: int
    category: str
    note: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RecordError(
                    _show(value), field=name, expected="a character offset (int >= 0)"
                )
        if self.start >= self.end:
            raise RecordError(
                f"got start={self.start}, end={self.end}",
                field="end",
                expected="end > start (a non-empty span)",
            )
        _check_text(self.category, "category")
        _check_optional_text(self.note, "note")

    def to_dict(self) -> dict[str, Any]:
        """``{"start", "end", "category", "note"}``."""
        return {"start": self.start, "end": self.end, "category": self.category, "note": self.note}

    @classmethod
    def from_dict(cls, d: Any) -> Span:
        """Build a span from a dict with keys ``start``, ``end``, ``category`` (``note``)."""
        if not isinstance(d, dict):
            raise RecordError(_show(d), expected='a span {"start", "end", "category", "note"}')
        for name in ("start", "end", "category"):
            if d.get(name) is None:
                raise RecordError("missing", field=name, expected="a value")
        unknown = set(d) - {"start", "end", "category", "note"}
        if unknown:
            raise RecordError(
                f"unknown keys {sorted(unknown)}",
                expected="only start, end, category, note",
            )
        return cls(d["start"], d["end"], d["category"], d.get("note"))


@dataclass
class SpanFeedback(Record):
    """Fine-grained feedback: marked spans of a response, plus notes on what is missing.

    Follows Fine-Grained RLHF (Wu et al. 2023): each span carries a category so that a
    reward model per category can be trained.

    Attributes:
        prompt: a non-empty string or a list of chat messages.
        response: the annotated response.
        spans: the marked spans (dicts are turned into :class:`Span`); may be empty.
        missing: free-text "missing information" notes.
    """

    KIND: ClassVar[str] = "span"
    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response", "spans", "missing")

    prompt: Prompt
    response: str
    spans: list[Span] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def _validate(self) -> None:
        _check_prompt(self.prompt)
        _check_text(self.response, "response")
        if not isinstance(self.spans, list):
            raise RecordError(_show(self.spans), field="spans", expected="a list of spans")
        spans = []
        for i, span in enumerate(self.spans):
            try:
                span = span if isinstance(span, Span) else Span.from_dict(span)
            except RecordError as err:
                raise err.within(f"spans[{i}]") from None
            if span.end > len(self.response):
                raise RecordError(
                    f"got end={span.end}, but the response has {len(self.response)} characters",
                    field=f"spans[{i}].end",
                    expected=f"end <= {len(self.response)} (the span inside the response)",
                )
            spans.append(span)
        self.spans = spans
        if not isinstance(self.missing, list):
            raise RecordError(_show(self.missing), field="missing", expected="a list of strings")
        for i, note in enumerate(self.missing):
            _check_text(note, f"missing[{i}]")

    @classmethod
    def _normalize(cls, d: dict[str, Any]) -> dict[str, Any]:
        return _take_response(d)


KINDS: dict[str, type[Record]] = {
    cls.KIND: cls
    for cls in (
        PromptRecord,
        Demonstration,
        Comparison,
        Ranking,
        BinaryFeedback,
        ScoreFeedback,
        SpanFeedback,
    )
}
"""Kind string -> record class."""


# --------------------------------------------------------------------------------------------
# Kinds from dicts and columns
# --------------------------------------------------------------------------------------------


def _check_kind(kind: Any) -> type[Record]:
    if kind not in KINDS:
        raise RecordError(_show(kind), field="kind", expected=f"one of {', '.join(KINDS)}")
    return KINDS[kind]


def infer_kind(columns: Iterable[str]) -> str:
    """Tell the record kind from column (or key) names.

    Accepts rlhfkit's own names and TRL's: ``prompt``/``chosen``/``rejected`` (comparison,
    also without ``prompt`` when chosen/rejected are whole conversations), ``messages`` and
    ``prompt``/``completion`` (demonstration), ``prompt``/``completion``/``label`` (binary,
    KTO). Extra columns are allowed; a ``kind`` column is ignored here.

    Args:
        columns: the column names of a table or the keys of a record dict.

    Returns:
        The kind string, a key of :data:`KINDS`.

    Raises:
        RecordError: the columns fit no kind.
    """
    cols = set(columns) - {"kind"}
    known = {name for cls in KINDS.values() for name in cls.field_names()}
    for col in sorted(cols - known):
        guess = closest_field(col, sorted(known - cols))
        if guess is not None:
            raise RecordError(
                f"not a field of any record kind; did you mean '{guess}'? (a field of your own "
                "goes in 'meta')",
                field=col,
            )
    has_response = bool(cols & {"response", "completion"})
    if {"chosen", "rejected"} <= cols:
        return "comparison"
    if "responses" in cols and cols & {"ranks", "scores"}:
        return "ranking"
    if "spans" in cols and has_response:
        return "span"
    if "label" in cols and has_response:
        return "binary"
    if "score" in cols and has_response:
        return "score"
    if "messages" in cols or ("prompt" in cols and has_response):
        return "demonstration"
    known = {name for cls in KINDS.values() for name in cls.FIELDS} | {"completion", "messages"}
    if "prompt" in cols and not cols & (known - {"prompt"}):
        return "prompt"
    raise RecordError(
        f"cannot tell the record kind from the columns {sorted(cols)}",
        field="kind",
        expected=(
            "a 'kind' column or the columns of one kind: prompt/chosen/rejected (comparison), "
            "prompt/responses/ranks|scores (ranking), prompt/response|completion/label "
            "(binary), .../score (score), .../spans (span), prompt/response|completion or "
            "messages (demonstration), prompt (prompt)"
        ),
    )


def from_dict(d: Any, kind: str | None = None) -> Record:
    """Build the record for one dict (a JSON object or a table row).

    Args:
        d: the fields. A ``kind`` key, if present, must agree with ``kind``.
        kind: the record kind; None uses ``d["kind"]`` or :func:`infer_kind` on the keys.

    Returns:
        A validated record of the right class.

    Raises:
        RecordError: the dict is not a valid record of that kind.
    """
    if not isinstance(d, dict):
        raise RecordError(_show(d), expected="a JSON object (a dict of fields)")
    row_kind = d.get("kind")
    if kind is None:
        kind = row_kind if row_kind is not None else infer_kind(d)
    elif row_kind is not None and row_kind != kind:
        raise RecordError(_show(row_kind), field="kind", expected=f"'{kind}' (as asked for)")
    return _check_kind(kind).from_dict(d)


# --------------------------------------------------------------------------------------------
# Helpers for trainers
# --------------------------------------------------------------------------------------------


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

