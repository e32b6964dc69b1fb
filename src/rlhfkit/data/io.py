"""Reading and writing feedback records: JSONL, JSON, CSV, Parquet and HF ``datasets`` folders.

The format comes from the path: ``.jsonl`` (or ``.ndjson``), ``.json``, ``.csv``, ``.parquet``
(or ``.pq``), a folder written by ``datasets.Dataset.save_to_disk``, or ``db:<url>`` for a
feedback store (read through :func:`rlhfkit.feedback.store.read_project_records`).

What a file holds:

- Each row is one record; its kind comes from a ``kind`` column, the ``kind`` argument, or the
  column names (:func:`rlhfkit.data.records.infer_kind`, which accepts TRL's conventions:
  ``prompt``/``chosen``/``rejected``, ``messages``, ``prompt``/``completion``,
  ``prompt``/``completion``/``label``).
- :func:`write_records` writes a ``kind`` column, so files can mix kinds.
- In CSV, empty cells are missing values; lists, dicts, numbers and bools are JSON text
  (``[1, 0]``, ``{"a": 1}``, ``0.5``, ``true``), and a prompt that is a JSON list of messages is
  read as messages. In Parquet and HF folders ``meta`` is stored as JSON text (it is free-form);
  the other fields are native columns.

Errors are :class:`~rlhfkit.data.records.RecordError` and name the file, the line (JSONL,
1-based) or row (CSV, Parquet, HF, JSON list: 0-based data row), the field and what was
expected.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhfkit.data.records import KINDS, Record, RecordError, from_dict, infer_kind

__all__ = ["FORMATS", "from_rows", "iter_jsonl", "read_records", "write_records"]

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
"""Formats :func:`write_records` can write (``format=`` or by extension)."""

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
_SUFFIXES |= {".parquet": "parquet", ".pq": "parquet"}

# CSV columns that hold JSON text; the others (prompt aside) are text as they stand.
_JSON_COLUMNS = frozenset(
    {"messages", "responses", "ranks", "scores", "margin", "tie", "weight", "label", "score"}
    | {"spans", "missing", "meta"}
)
_SHARED_FIELDS = ("id", "annotator", "source", "created_at", "meta")
# Columns that may hold chat messages; tables pad structs with nulls, which are dropped.
_MESSAGE_COLUMNS = ("prompt", "messages", "chosen", "rejected", "completion", "response")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_records(
    path: str | Path, kind: str | None = None, *, split: str | None = None
) -> list[Record]:
    """Read every record of a file or folder.

    Args:
        path: a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file, or a folder written by
            ``datasets`` ``save_to_disk``.
        kind: the record kind (a key of :data:`~rlhfkit.data.records.KINDS`); None takes it
            from a ``kind`` column or infers it from the column names.
        split: for a ``DatasetDict`` folder, the split to read (default: the only split, or
            ``train``).

    Returns:
        The validated records, in file order.

    Raises:
        RecordError: a row is not a valid record; the message names file, line/row and field.
        FileNotFoundError: the path does not exist.
        ValueError: the format cannot be told from the path.
    """
    if kind is not None and kind not in KINDS:
        raise RecordError(
            repr(kind), field="kind", expected=f"one of {', '.join(KINDS)}", file=str(path)
        )
    if isinstance(path, str) and path.startswith("db:"):
        raise RecordError(
            "a feedback store is not a file", field="(path)",
            expected="a file or folder here; db:URL sources are read by the training stages "
                     "(rlhfkit.train.inputs.read_source) and `rlhfkit label export`",
            file=hide_password(path))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    fmt = _format_of(path)
    if fmt == "jsonl":
        return list(iter_jsonl(path, kind))
    if fmt == "json":
        return _read_json(path, kind)
    if fmt == "csv":
        return _read_csv(path, kind)
    if fmt == "parquet":
        return _read_parquet(path, kind)
    return _read_hf(path, kind, split)


def iter_jsonl(path: str | Path, kind: str | None = None) -> Iterator[Record]:
    """Stream the records of a JSONL file, one line at a time.

    Blank lines are skipped. Without ``kind``, each line's ``kind`` key is used, or else the
    kind inferred from the first line without one.

    Args:
        path: the ``.jsonl`` file.
        kind: the record kind, or None.

    Yields:
        One validated record per non-blank line.

    Raises:
        RecordError: a line is not JSON or not a valid record (names the 1-based line).
    """
    path = str(path)
    with open(path, encoding="utf-8") as f:
        yield from _build(_jsonl_rows(f, path), kind, path, unit="line")


def from_rows(
    rows: Iterable[dict[str, Any]], kind: str | None = None, *, name: str = "<rows>"
) -> list[Record]:
    """Turn in-memory rows (dicts, or a ``datasets.Dataset``) into records.

    Args:
        rows: the rows; a ``datasets.Dataset`` is read through Arrow, like a saved folder.
        kind: the record kind, or None to use a ``kind`` key or infer it.
        name: what error messages call the source.

    Returns:
        The validated records.

    Raises:
        RecordError: a row is not a valid record (names the 0-based row).
    """
    columns = getattr(rows, "column_names", None)
    if columns is not None and hasattr(rows, "with_format"):
        return list(_build(_arrow_rows(rows), kind, name, unit="row", columns=columns))
    return list(_build(enumerate(rows), kind, name, unit="row"))


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "hf"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the format from the name; expected a file ending in "
            f"{', '.join(_SUFFIXES)} or a datasets folder"
        )
    return fmt


def _build(
    rows: Iterable[tuple[int, Any]],
    kind: str | None,
    file: str,
    *,
    unit: str,
    columns: Sequence[str] | None = None,
    row_hint: str = "0-based data row",
) -> Iterator[Record]:
    """Validate ``(position, row)`` pairs into records, adding the location to any error."""
    inferred = None
    for position, row in rows:
        try:
            row_kind = kind
            if row_kind is None and isinstance(row, dict):
                row_kind = row.get("kind")
                if row_kind is None:
                    if inferred is None:
                        inferred = infer_kind(columns if columns is not None else row)
                    row_kind = inferred
            yield from_dict(row, row_kind)
        except RecordError as err:
            location = {"line": position} if unit == "line" else {"row": position}
            raise err.at(file=file, row_hint=row_hint, **location) from None


def _jsonl_rows(f: Iterable[str], path: str) -> Iterator[tuple[int, Any]]:
    for number, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(
                f"invalid JSON ({err.msg} at column {err.colno})",
                expected="one JSON object per line",
                file=path,
                line=number,
            ) from None


def _read_json(path: Path, kind: str | None) -> list[Record]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise RecordError(
                f"invalid JSON ({err.msg} at column {err.colno})",
                expected='a JSON list of records or {"records": [...]}',
                file=str(path),
                line=err.lineno,
            ) from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        raise RecordError(
            f"got a JSON {type(data).__name__}",
            expected='a JSON list of records or {"records": [...]}',
            file=str(path),
        )
    return list(
        _build(
            enumerate(data),
            kind,
            str(path),
            unit="row",
            row_hint="0-based index in the JSON list",
        )
    )


def _read_csv(path: Path, kind: str | None) -> list[Record]:
    # utf-8-sig drops the byte-order mark that spreadsheet programs like to add.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = [(i, _decode_csv_row(row, str(path), i)) for i, row in enumerate(reader)]
    return list(_build(rows, kind, str(path), unit="row", columns=columns))


def _decode_csv_row(row: dict[str | None, Any], path: str, index: int) -> dict[str, Any]:
    if None in row:
        raise RecordError(
            f"the row has {len(row) - 1 + len(row[None])} cells",
            expected=f"at most {len(row) - 1} cells, one per header column",
            file=path,
            row=index,
        )
    out: dict[str, Any] = {}
    for column, cell in row.items():
        if cell is None or cell == "":
            continue  # an empty cell is a missing value
        if column == "prompt":
            out[column] = _maybe_messages(cell)
        elif column in _JSON_COLUMNS:
            out[column] = _json_cell(cell)
        else:  # text columns, and unknown columns (kept as text in meta)
            out[column] = cell
    return out


def _json_cell(cell: str) -> Any:
    """A CSV cell holding JSON; text that is not JSON is returned as it is for validation."""
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        lowered = cell.strip().lower()
        if lowered in ("true", "false"):  # pandas writes True/False
            return lowered == "true"
        return cell


def _maybe_messages(value: Any) -> Any:
    """A prompt stored as JSON text of a message list becomes the list."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in parsed
        ):
            return parsed
    return value


def _clean_table_row(row: dict[str, Any]) -> dict[str, Any]:
    """Drop nulls, unwrap JSON ``meta``, strip null keys that struct columns add to messages."""
    out = {k: v for k, v in row.items() if v is not None}
    for column in _MESSAGE_COLUMNS:
        value = out.get(column)
        if isinstance(value, list):
            out[column] = [
                {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
                for m in value
            ]
    if "prompt" in out:
        out["prompt"] = _maybe_messages(out["prompt"])
    if isinstance(out.get("meta"), str):
        try:
            out["meta"] = json.loads(out["meta"])
        except json.JSONDecodeError:
            raise RecordError(
                f"invalid JSON in {out['meta'][:40]!r}",
                field="meta",
                expected="a JSON object (as text) or a struct",
            ) from None
    return out


def _table_rows(tables: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    index = 0
    for table in tables:
        for row in table.to_pylist():
            yield index, row
            index += 1


def _cleaned(rows: Iterable[tuple[int, Any]], path: str) -> Iterator[tuple[int, Any]]:
    for index, row in rows:
        try:
            yield index, _clean_table_row(row)
        except RecordError as err:
            raise err.at(file=path, row=index) from None


def _read_parquet(path: Path, kind: str | None) -> list[Record]:
    pq = _need("pyarrow.parquet", "pyarrow")
    parquet = pq.ParquetFile(path)
    batches = parquet.iter_batches(batch_size=4096)
    rows = _cleaned(_table_rows(batches), str(path))
    columns = parquet.schema_arrow.names
    return list(_build(rows, kind, str(path), unit="row", columns=columns))


def _arrow_rows(dataset: Any) -> Iterator[tuple[int, Any]]:
    # Arrow format skips datasets' feature decoding, which would turn a list of message
    # dicts into a dict of lists under older `Sequence` features.
    return _table_rows(dataset.with_format("arrow").iter(batch_size=4096))


def _read_hf(path: Path, kind: str | None, split: str | None) -> list[Record]:
    datasets = _need("datasets", "datasets")
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None:
            split = names[0] if len(names) == 1 else "train"
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r}; the splits are {names}")
        loaded = loaded[split]
    rows = _cleaned(_arrow_rows(loaded), str(path))
    return list(_build(rows, kind, str(path), unit="row", columns=loaded.column_names))


def hide_password(spec: str) -> str:
    """A ``db:``/database URL with its password replaced by ``***`` (for messages)."""
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", spec)


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this format needs the '{package}' package (a dependency of rlhfkit): "
            f"pip install {package}"
        ) from err


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_records(
    records: Iterable[Record], path: str | Path, *, format: str | None = None
) -> Path:
    """Write records to a file (or a ``datasets`` folder), choosing the format by extension.

    Every row gets a ``kind`` column, so kinds can be mixed in one file and read back without
    guessing. Parent folders are created.

    Args:
        records: the records to write.
        path: the file; a folder when ``format="hf"``.
        format: one of :data:`FORMATS`; None takes it from the extension.

    Returns:
        The path written.

    Raises:
        ValueError: the format is unknown or cannot be told from the path.
        TypeError: an item is not a record.
    """
    path = Path(path)
    if format is None:
        if path.is_dir():
            format = "hf"
        elif path.suffix.lower() in _SUFFIXES:
            format = _SUFFIXES[path.suffix.lower()]
        else:
            raise ValueError(
                f"{path}: cannot tell the format from the name; use a name ending in "
                f"{', '.join(_SUFFIXES)}, or pass format='hf' to write a datasets folder"
            )
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, Record):
            raise TypeError(f"item {i} is a {type(record).__name__}, not an rlhfkit record")
        record.validate()
        rows.append({"kind": record.KIND, **record.to_dict()})
    if format != "hf":
        path.parent.mkdir(parents=True, exist_ok=True)
    if format == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif format == "json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)
            f.write("\n")
    elif format == "csv":
        _write_csv(rows, path)
    elif format == "parquet":
        pq = _need("pyarrow.parquet", "pyarrow")
        pq.write_table(_arrow_table(rows), path)
    else:
        datasets = _need("datasets", "datasets")
        with _quiet_datasets(datasets):
            datasets.Dataset(_arrow_table(rows)).save_to_disk(str(path))
    return path


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys in order of first appearance, the shared fields last."""
    keys = dict.fromkeys(key for row in rows for key in row)
    shared = [k for k in _SHARED_FIELDS if k in keys]
    return [k for k in keys if k not in _SHARED_FIELDS] + shared


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = _columns(rows) or ["kind"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c)) for c in columns])


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _arrow_table(rows: list[dict[str, Any]]) -> Any:
    pa = _need("pyarrow", "pyarrow")
    columns = {}
    for column in _columns(rows) or ["kind"]:
        values = [row.get(column) for row in rows]
        if column == "meta":
            values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        elif column == "prompt" and len({type(v) for v in values if v is not None}) > 1:
            # One column cannot hold both text and message lists: store the lists as JSON
            # text, which the readers turn back into messages.
            values = [
                json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for v in values
            ]
        try:
            columns[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"cannot store column {column!r} in Arrow: {err}") from err
    return pa.table(columns)


@contextmanager
def _quiet_datasets(datasets: Any) -> Iterator[None]:
    """Turn off datasets' progress bars for one save, restoring the user's setting after."""
    were_disabled = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            datasets.enable_progress_bars()
