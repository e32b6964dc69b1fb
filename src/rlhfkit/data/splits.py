"""Prompt-level splits of records into train and held-out sets (the same prompt, the same side)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from rlhfkit.data.records import Record, RecordError


def prompt_key(prompt: Any) -> str:
    """A stable string for a prompt (text or chat messages)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def is_held_out(prompt: Any, fraction: float, seed: int = 0) -> bool:
    """Deterministic prompt-level split: the same prompt always lands on the same side.

    Splitting by prompt (not by record) keeps every response to a held-out prompt out of
    training, so evaluation measures generalisation to new prompts.
    """
    if fraction <= 0:
        return False
    digest = hashlib.sha1(f"{seed}:{prompt_key(prompt)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def split_records(
    records: Sequence[Record], fraction: float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Split records into (train, eval) by prompt."""
    train, held = [], []
    for r in records:
        (held if is_held_out(r.prompt, fraction, seed) else train).append(r)
    if not train:
        raise RecordError("every record was held out", field="eval_fraction",
                          expected="a smaller --eval-fraction")
    return train, held
