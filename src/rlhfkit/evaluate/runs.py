"""Reading a run folder's logs: the one reader of ``metrics.jsonl``.

Every stage writes ``metrics.jsonl`` through :class:`rlhfkit.train.loop.MetricsLog`, one JSON
object per line with its ``step``. The report sections (fine-grained rewards, Nash-MD, control)
read it back with :func:`read_metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_metrics"]


def read_metrics(run_dir: str | Path, *, required: bool = False) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``, in order.

    A last line cut short (a run killed while writing it) is left out; a bad line anywhere else
    is an error.

    Args:
        run_dir: the run folder (or the ``metrics.jsonl`` file itself).
        required: raise when the file is missing, instead of returning no rows.

    Returns:
        One dict per non-blank line.

    Raises:
        FileNotFoundError: ``required`` and there is no ``metrics.jsonl``.
        ValueError: a line other than the last is not a JSON object (names the file and line).
    """
    path = Path(run_dir)
    if path.is_dir() or path.name != "metrics.jsonl":
        path = path / "metrics.jsonl"
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path}: no metrics.jsonl in this run folder")
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # a half-written last line
                break
            raise ValueError(f"{path}, line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object")
        rows.append(row)
    return rows
