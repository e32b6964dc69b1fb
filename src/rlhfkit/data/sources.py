"""Where a stage's records come from: a file, a feedback store (``db:``), or a built-in task."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from rlhfkit.data.io import read_records
from rlhfkit.data.records import Record, RecordError


def load_records(spec: str, want: str, kinds: Sequence[str]) -> list[Record]:
    """Load records for a stage.

    Args:
        spec: ``task:NAME`` for a built-in task, ``db:URL`` for a feedback store, or a path.
        want: what the stage needs from a task: ``demonstrations``, ``preferences`` (rankings
            and comparisons) or ``prompts``.
        kinds: record kinds the stage accepts; anything else is an error naming the record.
    """
    if spec.startswith("task:"):
        from rlhfkit.tasks import get_task

        task = get_task(spec[len("task:"):])
        if want == "demonstrations":
            records: list[Record] = list(task.demonstrations())
        elif want == "preferences":
            records = list(task.rankings())
        elif want == "prompts":
            records = list(task.prompt_records("train"))
        else:
            raise ValueError(f"unknown request {want!r}")
    else:
        records = read_records(spec)
    for i, record in enumerate(records):
        if record.KIND not in kinds:
            raise RecordError(
                f"record {i} is a '{record.KIND}' record",
                field="kind",
                expected=f"one of {', '.join(kinds)} for this stage",
                file=spec,
            )
    if not records:
        raise RecordError("no records", field="(file)", expected="at least one record", file=spec)
    return records


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
