"""The error every record check raises, and the near-miss guess its messages offer.

Holds :class:`RecordError` (a one-line message naming file, line or row, and field),
:func:`closest_field` (the field name a misspelt key probably meant) and ``_show`` (how a
bad value is quoted in a message). Nothing here knows any record kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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
