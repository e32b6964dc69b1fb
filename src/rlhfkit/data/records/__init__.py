"""Typed feedback records: the contract between feedback sources and trainers.

Every kind of human (or simulated, or AI) feedback that rlhfkit understands is one small
dataclass here. Records validate themselves when they are built, so a trainer that receives a
``Comparison`` can trust that ``chosen`` is a non-empty string different from ``rejected``.
The field list of each kind is documented in ``docs/records.md``.

Readers and writers live in :mod:`rlhfkit.data.io`; they call :func:`from_dict` for each row and
add the file and line (or row) to any :class:`RecordError` raised here.

The package holds one module per group of kinds, over the parts they share; import the names
from here (``from rlhfkit.data.records import Comparison``), not from the modules:

- ``errors``: :class:`RecordError` and :func:`closest_field` (the near-miss guess).
- ``fields``: the field types (:data:`Message`, :data:`Prompt`, :class:`Span`), the allowed
  values (:data:`SOURCES`, :data:`ROLES`, :data:`SPAN_CATEGORIES`) and the field checks.
- ``base``: :class:`Record`, the shared fields and the dict conversions.
- ``demonstrations``: :class:`PromptRecord` and :class:`Demonstration`.
- ``comparisons``: :class:`Comparison`, :class:`Ranking` and :func:`as_comparisons`.
- ``ratings``: :class:`BinaryFeedback`, :class:`ScoreFeedback` and :func:`score_pairs`.
- ``spans``: :class:`SpanFeedback` (fine-grained feedback).
- ``kinds``: :data:`KINDS`, :func:`infer_kind`, :func:`from_dict` and :func:`unknown_fields`.

Example:
    >>> r = Ranking(prompt="Say hi", responses=["hi", "hello", "yo"], ranks=[1, 0, 2], id="r1")
    >>> [(c.chosen, c.rejected) for c in r.to_comparisons()]
    [('hello', 'hi'), ('hi', 'yo'), ('hello', 'yo')]
"""

from __future__ import annotations

from .base import Record
from .comparisons import Comparison, ComparisonSet, Ranking, as_comparisons
from .demonstrations import Demonstration, PromptRecord
from .errors import RecordError, closest_field
from .fields import MAX_K as MAX_K
from .fields import MIN_K as MIN_K
from .fields import ROLES, SOURCES, SPAN_CATEGORIES, Message, Prompt, Span
from .kinds import KINDS, from_dict, infer_kind, unknown_fields
from .ratings import BinaryFeedback, ScoreFeedback, ScorePairs, score_pairs
from .spans import SpanFeedback

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
