r"""Chat templates and tokenization shared by every stage.

Every stage turns ``(prompt, response)`` into token ids the same way, so the boundary that SFT
masks, the position a reward model reads and the tokens a policy samples all agree:

1. ``prompt_text`` = the tokenizer's chat template applied to the prompt messages with the
   generation prompt (``<|im_start|>assistant\\n`` for SmolLM2);
2. ``response_text`` = what the template adds after that for the assistant turn (the response and
   its end-of-turn token);
3. ids = tokenize(prompt_text) + tokenize(response_text), each without extra special tokens.

Tokenizing the two parts separately makes the prompt/response boundary exact by construction.
A tokenizer without a chat template gets plain text with the EOS token appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

Messages = list[dict[str, str]]


def to_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """Normalise a prompt (text or chat messages) to a list of messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def prompt_text(tokenizer: Any, prompt: str | Messages, system_prompt: str | None = None) -> str:
    """The text a policy sees before it starts its response."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            to_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
        )
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt) + "\n"


def response_text(
    tokenizer: Any, prompt: str | Messages, response: str, system_prompt: str | None = None
) -> str:
    """The text of the assistant turn as the template writes it (response + end of turn)."""
    if getattr(tokenizer, "chat_template", None):
        messages = to_messages(prompt, system_prompt)
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(head):
            raise ValueError(
                "the tokenizer's chat template does not render the prompt as a prefix of the "
                "conversation; rlhfkit needs that to mask the prompt exactly"
            )
        return _strip_trailing_newline(full[len(head):], tokenizer)
    eos = tokenizer.eos_token or ""
    sep = "" if not response or response[0].isspace() else " "
    return sep + response + eos


def _strip_trailing_newline(text: str, tokenizer: Any) -> str:
    # ChatML templates write "<|im_end|>\n"; the newline after the end-of-turn token is never
    # generated (sampling stops at <|im_end|>), so training on it would teach nothing useful.
    eos = tokenizer.eos_token
    if eos and text.endswith(eos + "\n"):
        return text[:-1]
    return text


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Encoded:
    """One tokenized ``(prompt, response)``: ``input_ids`` = prompt ids + response ids."""

    input_ids: list[int]
    prompt_len: int

    @property
    def response_len(self) -> int:
        """Number of response tokens (including the end-of-turn token)."""
        return len(self.input_ids) - self.prompt_len


def encode_pair(
    tokenizer: Any,
    prompt: str | Messages,
    response: str,
    max_length: int,
    system_prompt: str | None = None,
    prompt_cache: dict[str, list[int]] | None = None,
) -> Encoded:
    """Tokenize a prompt and response; truncate the prompt from the left, then the response.

    Args:
        tokenizer: A HF tokenizer.
        prompt: Prompt text or chat messages.
        response: The response text.
        max_length: Upper bound on the total length.
        system_prompt: Optional system message added when the prompt has none.
        prompt_cache: Optional dict that memoises prompt ids (rankings repeat a prompt K times).
    """
    head = prompt_text(tokenizer, prompt, system_prompt)
    if prompt_cache is not None and head in prompt_cache:
        prompt_ids = prompt_cache[head]
    else:
        prompt_ids = encode(tokenizer, head)
        if prompt_cache is not None:
            prompt_cache[head] = prompt_ids
    response_ids = encode(tokenizer, response_text(tokenizer, prompt, response, system_prompt))
    # Keep at least half the budget for the response; drop the oldest prompt tokens first.
    keep_prompt = max(max_length - len(response_ids), max_length // 2)
    if len(prompt_ids) > keep_prompt:
        prompt_ids = prompt_ids[-keep_prompt:]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return Encoded(prompt_ids + response_ids, len(prompt_ids))


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence; returns ``input_ids`` and ``attention_mask``, both (B, T)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if side == "right":
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        else:
            ids[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def repeats(prompt_ids: Sequence[Sequence[int]]) -> int:
    """The number of copies of each prompt when they come in equal consecutive runs, else 1."""
    n = len(prompt_ids)
    k = 1
    while k < n and list(prompt_ids[k]) == list(prompt_ids[0]):
        k += 1
    if k == 1 or n % k:
        return 1
    for start in range(0, n, k):
        group = prompt_ids[start:start + k]
        if any(list(g) != list(group[0]) for g in group[1:]):
            return 1
    return k
