"""The supervised kinds: a prompt alone, and a prompt with the response to imitate.

Holds :class:`PromptRecord` (kind ``prompt``: something to sample responses for) and
:class:`Demonstration` (kind ``demonstration``: a written response for supervised
fine-tuning, given as ``prompt``/``response`` or as a whole ``messages`` chat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Record, _plain, _take_response
from .errors import RecordError, _show
from .fields import _EXPECTED, Message, Prompt, _check_messages, _check_prompt, _check_text


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
