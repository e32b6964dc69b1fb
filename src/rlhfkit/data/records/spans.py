"""Fine-grained feedback: categorised spans marked inside one response.

Holds :class:`SpanFeedback` (kind ``span``, after Fine-Grained RLHF, Wu et al. 2023). Its
spans are :class:`~rlhfkit.data.records.Span` values, defined in ``fields`` with the other
field types so that :meth:`Record.to_dict` can copy them without importing this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import Record, _take_response
from .errors import RecordError, _show
from .fields import Prompt, Span, _check_prompt, _check_text


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
