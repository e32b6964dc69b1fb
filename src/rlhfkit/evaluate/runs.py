"""Reading a run folder's outputs: its logs (``metrics.jsonl``, ``rounds.jsonl``) and summaries.

Every stage writes ``metrics.jsonl`` through :class:`rlhfkit.train.loop.MetricsLog`, one JSON
object per line with its ``step``; the stages that run in rounds (iterate, online DPO,
self-improvement, the demo's PPO rounds) add one line per round to ``rounds.jsonl``; and a
stage's results are one JSON object in a file (``eval.json``, ``summary.json``,
``accuracy.json``). The report sections (fine-grained rewards, Nash-MD, control) and the tests
read them back with :func:`read_metrics`, :func:`read_rounds` and :func:`read_json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json", "read_metrics", "read_rounds"]


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
    return _read_lines(_in_run(run_dir, "metrics.jsonl"), required)


def read_rounds(run_dir: str | Path, *, required: bool = False) -> list[dict[str, Any]]:
    """The rows of ``run_dir/rounds.jsonl``, one per finished round (read as :func:`read_metrics`)."""
    return _read_lines(_in_run(run_dir, "rounds.jsonl"), required)


def read_json(run_dir: str | Path, name: str = "eval.json") -> Any:
    """The JSON object a run wrote to ``run_dir/name`` (``eval.json``, ``summary.json``, ...).

    Raises:
        FileNotFoundError: there is no such file (names it).
        ValueError: it is not valid JSON (names the file).
    """
    path = _in_run(run_dir, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {name} in this run folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None


def _in_run(run_dir: str | Path, name: str) -> Path:
    path = Path(run_dir)
    return path if path.name == name and not path.is_dir() else path / name


def _read_lines(path: Path, required: bool) -> list[dict[str, Any]]:
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path}: no {path.name} in this run folder")
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
