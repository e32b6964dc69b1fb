"""What every record kind shares: the :class:`Record` base class and its dict conversions.

Holds :class:`Record` (the shared fields ``id``, ``annotator``, ``source``, ``created_at``,
``meta``; validation on construction; ``to_dict``/``from_dict``) and the helpers the kinds
use to read other tools' layouts: ``_take_response`` (TRL's ``completion``) and
``_unwrap_conversation`` (a response given as a message list), plus ``_plain`` (a deep copy
for ``to_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar

from .errors import RecordError, _show, closest_field
from .fields import (
    _EXPECTED,
    SOURCES,
    Span,
    _check_messages,
    _check_optional_text,
    _check_text,
)


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
