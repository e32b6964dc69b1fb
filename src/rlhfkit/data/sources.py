"""Where a stage's records come from: a file, a feedback store (``db:``), or a built-in task."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from rlhfkit.data.io import read_records
from rlhfkit.data.records import Record, RecordError


def load_records(
    spec: str, want: str, kinds: Sequence[str], split: str | None = None
) -> list[Record]:
    """Load records for a stage.

    Args:
        spec: ``task:NAME`` for a built-in task, ``db:URL`` for a feedback store, a path, or a
            dataset id (see :func:`rlhfkit.data.io.read_records`).
        want: what the stage needs from a task: ``demonstrations``, ``preferences`` (rankings
            and comparisons) or ``prompts``.
        kinds: record kinds the stage accepts; anything else is an error naming the record.
        split: the split of data that has several (a dataset id, a ``DatasetDict`` folder).
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
        records = read_records(spec, split=split, kinds=kinds)
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


def train_and_eval_records(
    data: str,
    eval_data: str | None,
    want: str,
    kinds: Sequence[str],
    *,
    split: str | None = None,
    eval_split: str | None = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[list[Record], list[Record]]:
    """The (train, held-out) records of a stage's ``--data`` / ``--eval-data`` options.

    Held out: ``eval_data`` (its ``eval_split``, when given) if set; else the ``eval_split`` of
    ``data``; else a prompt-level split of ``data`` by ``eval_fraction``.
    """
    records = load_records(data, want, kinds, split=split)
    if eval_data:
        return records, load_records(eval_data, want, kinds, split=eval_split)
    if eval_split:
        if data.startswith(("task:", "db:")):
            raise RecordError(
                "--eval-split needs data with splits", field="eval_split",
                expected="a dataset id or a folder with splits (or --eval-fraction)", file=data,
            )
        return records, load_records(data, want, kinds, split=eval_split)
    return split_records(records, eval_fraction, seed)

