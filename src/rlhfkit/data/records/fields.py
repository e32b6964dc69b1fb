"""The values record fields hold, and the checks each field goes through.

Holds the field types (:data:`Message`, :data:`Prompt` and :class:`Span`, a marked stretch of
a response), the allowed values (:data:`SOURCES`, :data:`ROLES`, :data:`SPAN_CATEGORIES`,
``MIN_K``/``MAX_K`` responses in a ranking) and the ``_check_*`` functions the record kinds
validate their fields with; each raises :class:`~rlhfkit.data.records.RecordError` naming the
field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import RecordError, _show

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


_EXPECTED = {
    "prompt": "a non-empty string or a list of chat messages",
    "response": "a non-empty string",
    "chosen": "a non-empty string",
    "rejected": "a non-empty string",
    "responses": f"a list of {MIN_K}..{MAX_K} distinct non-empty strings",
    "label": "a bool (true or false)",
    "score": "a finite number",
}


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
