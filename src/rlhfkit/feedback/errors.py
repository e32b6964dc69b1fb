r"""The errors of the feedback app, and the checks every input passes at the edge.

Everything a client (the API, an uploaded file, the CLI, an import) hands the store goes
through these checks before it is stored, so a stored value can always be read back, shown
and exported:

* texts are well-formed Unicode (no lone surrogates such as ``"\ud800"``, which JSON can
  carry but UTF-8 cannot) and hold no NUL character (PostgreSQL text cannot);
* texts, lists and nested JSON have bounded sizes;
* integers lie in a range the database column and the clock can hold;
* free-form JSON (an item's ``meta``) holds only strings, finite numbers, booleans, nulls,
  lists and objects, nested at most :data:`MAX_DEPTH` deep.

A failed check raises :class:`InputError` (HTTP 422) naming the field.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 16
"""Deepest nesting of lists and objects accepted in free-form JSON."""
MAX_JSON_CHARS = 200_000
"""Most characters of text (keys and strings together) in one free-form JSON value."""
INT32_MAX = 2**31 - 1
"""Largest value of an ``Integer`` column on PostgreSQL (SQLite allows more)."""
INT64_MAX = 2**63 - 1


class StoreError(Exception):
    """A request the store refuses; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class InputError(StoreError):
    """Input that does not fit (HTTP 422); the message names the field and what was expected."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message, status)


def bad_character(text: str) -> str | None:
    r"""Why ``text`` cannot be stored as it is (a lone surrogate, a NUL), or None if it can.

    Example:
        >>> bad_character("x\ud800y")
        'a lone surrogate (U+D800) at character 1'
    """
    if text.isascii():
        if "\x00" in text:
            return f"a NUL character at character {text.index(chr(0))}"
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"a lone surrogate (U+{ord(text[err.start]):04X}) at character {err.start}"
    if "\x00" in text:
        return f"a NUL character at character {text.index(chr(0))}"
    return None


def check_text(value: Any, field: str, *, max_chars: int, allow_empty: bool = True) -> str:
    """A string of at most ``max_chars`` characters that can be stored, else InputError.

    Args:
        value: the value to check.
        field: how to name it in the error (``"item 3: responses[1]"``).
        max_chars: the most characters (code points) allowed.
        allow_empty: whether ``""`` (or only white space) is acceptable.
    """
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string, not {_type(value)}")
    if len(value) > max_chars:
        raise InputError(f"{field} is {len(value)} characters long; at most {max_chars}")
    why = bad_character(value)
    if why is not None:
        raise InputError(f"{field} is not well-formed text: it holds {why}")
    if not allow_empty and not value.strip():
        raise InputError(f"{field} is empty")
    return value


def check_int(value: Any, field: str, lo: int, hi: int) -> int:
    """An integer (not a bool, not a float) in ``lo..hi``, else InputError."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{field} must be an integer from {lo} to {hi}, got {_short(value)}")
    return value


def check_json(value: Any, field: str, *, max_chars: int = MAX_JSON_CHARS) -> Any:
    """Free-form JSON that every store and every export can hold, else InputError.

    Walks the value without recursion, so a deeply nested value is refused by its depth,
    not by a Python stack overflow.
    """
    budget = max_chars
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, str):
            budget -= len(v)
            check_text(v, where, max_chars=max_chars)
        elif isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, int):
            if not -INT64_MAX <= v <= INT64_MAX:
                raise InputError(f"{where} is an integer beyond 64 bits")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InputError(f"{where} must be a finite number, got {v!r}")
        elif isinstance(v, list | tuple | dict):
            if depth >= MAX_DEPTH:
                raise InputError(f"{field} is nested more than {MAX_DEPTH} levels deep")
            if isinstance(v, dict):
                for k, x in v.items():
                    if not isinstance(k, str):
                        raise InputError(f"{where} has a key that is not a string: {_short(k)}")
                    budget -= len(k)
                    check_text(k, f"{where} key {_short(k)}", max_chars=max_chars)
                    stack.append((x, f"{where}.{k}", depth + 1))
            else:
                stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v))
        else:
            raise InputError(f"{where} must be JSON (string, number, list, object), not {_type(v)}")
        if budget < 0:
            raise InputError(f"{field} holds more than {max_chars} characters of text")
    return value


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
