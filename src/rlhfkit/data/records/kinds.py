"""The table of record kinds, and telling a dict's kind from its keys.

Holds :data:`KINDS` (kind string -> record class), :func:`infer_kind` (the kind from column
names, rlhfkit's or TRL's), :func:`from_dict` (the validated record for one dict or table row)
and :func:`unknown_fields` (the keys a kind would move into ``meta``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import Record
from .comparisons import Comparison, Ranking
from .demonstrations import Demonstration, PromptRecord
from .errors import RecordError, _show, closest_field
from .ratings import BinaryFeedback, ScoreFeedback
from .spans import SpanFeedback

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


def unknown_fields(d: dict[str, Any], kind: str) -> list[str]:
    """Keys of ``d`` that name no field of ``kind`` (they are kept in the record's ``meta``).

    Keys with null values (missing cells) are left out.
    """
    names = set(_check_kind(kind).field_names())
    return [k for k, v in d.items() if k not in names and v is not None]
