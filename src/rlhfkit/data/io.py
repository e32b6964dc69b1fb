"""Reading and writing feedback records: JSONL, JSON, CSV/TSV, Parquet, HF ``datasets``.

What :func:`read_records` takes:

- a file: ``.jsonl`` (or ``.ndjson``), ``.json``, ``.csv``, ``.tsv``, ``.parquet`` (or ``.pq``);
  the text formats may be gzipped (``.jsonl.gz``, ``.csv.gz``, ...);
- a folder written by ``datasets`` ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
- any other folder, or a dataset id such as ``HuggingFaceH4/ultrafeedback_binarized``: loaded
  through ``datasets.load_dataset`` (a folder of data files, or a folder with a ``README.md``
  that names its splits; ``datasets`` 4 and later no longer run loading scripts, so a ``.py``
  file is refused with that explanation).

``db:<url>`` feedback stores and ``task:`` specs are resolved by the training stages
(:mod:`rlhfkit.train.inputs`), which call :func:`read_records` for everything else.

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
- A column that names no field of its record kind is kept in the record's ``meta``, with one
  :class:`RecordWarning` per file and column; one that is a near miss of a field the record
  lacks (``wieght``, ``respnse``) is an error that names the field it probably meant.

Every problem is a one-line :class:`~rlhfkit.data.records.RecordError` that names the file, the
line (JSONL, 1-based) or row (CSV, Parquet, HF, JSON list: 0-based data row), the field and what
was expected; problems with a whole file (not UTF-8, not Parquet, no such split) name the file.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhfkit.data.records import (
    KINDS,
    Record,
    RecordError,
    from_dict,
    infer_kind,
    unknown_fields,
)
from rlhfkit.data.textio import csv_rows, decode, decode_line, guard_gzip, open_binary, read_bytes

__all__ = [
    "FORMATS",
    "RecordWarning",
    "from_rows",
    "iter_jsonl",
    "read_records",
    "write_records",
]

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
"""Formats :func:`write_records` can write (``format=`` or by extension)."""

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
_SUFFIXES |= {".parquet": "parquet", ".pq": "parquet"}
_READ_SUFFIXES = {**_SUFFIXES, ".tsv": "tsv"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files ``save_to_disk`` writes: a folder with one of them is read with ``load_from_disk``."""
_DATASET_ID = re.compile(r"^(hf:)?[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# CSV columns that hold JSON text; the others (prompt aside) are text as they stand.
_JSON_COLUMNS = frozenset(
    {"messages", "responses", "ranks", "scores", "margin", "tie", "weight", "label", "score"}
    | {"spans", "missing", "meta"}
)
_SHARED_FIELDS = ("id", "annotator", "source", "created_at", "meta")
# Columns that may hold chat messages; tables pad structs with nulls, which are dropped.
_MESSAGE_COLUMNS = ("prompt", "messages", "chosen", "rejected", "completion", "response")

Location = dict[str, Any]
"""Where a row is: ``{"line": n}`` or ``{"row": i, "row_hint": "..."}``."""


class RecordWarning(UserWarning):
    """Something in a records file was read but may not be what its author meant."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_records(
    path: str | Path,
    kind: str | None = None,
    *,
    split: str | None = None,
    kinds: Sequence[str] | None = None,
) -> list[Record]:
    """Read every record of a file, folder or dataset.

    Args:
        path: a file (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``; text formats
            may end in ``.gz``), a ``save_to_disk`` folder, another folder or a dataset id (read
            through ``datasets.load_dataset``). ``db:`` feedback stores are read by the
            training stages (:func:`rlhfkit.train.inputs.read_source`), not here.
        kind: the record kind (a key of :data:`~rlhfkit.data.records.KINDS`); None takes it
            from a ``kind`` column or infers it from the column names.
        split: for data with splits (a ``DatasetDict`` folder, a dataset id, a folder of
            ``train``/``test`` files), the split to read (default: the only split, or ``train``).
        kinds: the record kinds the caller accepts; a record of another kind is an error that
            names its file and line/row.

    Returns:
        The validated records, in file order.

    Raises:
        RecordError: a row is not a valid record, or the file cannot be read as records; the
            message names the file, line/row and field.
        FileNotFoundError: the path does not exist (and is not a dataset id).
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
    spec = str(path)
    path = Path(path)
    if not path.exists():
        if _DATASET_ID.match(spec) and path.suffix.lower() not in _READ_SUFFIXES:
            return _read_loaded(spec, kind, split, kinds)
        raise FileNotFoundError(f"no such file or folder: {path}")
    fmt, gz = _format_of(path)
    if fmt == "jsonl":
        return list(_iter_jsonl(path, kind, gz, kinds))
    if fmt == "json":
        return _read_json(path, kind, gz, kinds)
    if fmt in ("csv", "tsv"):
        return _read_csv(path, kind, gz, kinds, delimiter="\t" if fmt == "tsv" else ",")
    if fmt == "parquet":
        return _read_parquet(path, kind, kinds)
    if fmt == "hf":
        return _read_hf(path, kind, split, kinds)
    return _read_loaded(str(path), kind, split, kinds)


def iter_jsonl(path: str | Path, kind: str | None = None) -> Iterator[Record]:
    """Stream the records of a JSONL file (or ``.jsonl.gz``), one line at a time.

    Blank lines are skipped. Without ``kind``, each line's ``kind`` key is used, or else the
    kind inferred from the first line without one.

    Args:
        path: the ``.jsonl`` file.
        kind: the record kind, or None.

    Yields:
        One validated record per non-blank line.

    Raises:
        RecordError: a line is not UTF-8, not JSON or not a valid record (names the 1-based
            line).
    """
    path = Path(path)
    yield from _iter_jsonl(path, kind, path.suffix.lower() == ".gz", None)


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
        return list(_build(_cleaned(_arrow_rows(rows), name), kind, name, columns=columns))
    return list(_build(((_row(i), r) for i, r in enumerate(rows)), kind, name))


def _row(index: int, hint: str = "0-based data row") -> Location:
    return {"row": index, "row_hint": hint}


def _format_of(path: Path) -> tuple[str, bool]:
    """``(format, gzipped)`` from the path: a file's suffixes, or the kind of folder."""
    if path.is_dir():
        saved = any((path / marker).exists() for marker in _SAVED_MARKERS)
        return ("hf" if saved else "folder"), False
    suffixes = [s.lower() for s in path.suffixes]
    gz = suffixes[-1:] == [".gz"]
    ext = (suffixes[-2] if len(suffixes) > 1 else "") if gz else (suffixes[-1] if suffixes else "")
    fmt = _READ_SUFFIXES.get(ext)
    if ext == ".py":
        raise RecordError(
            "a datasets loading script; datasets 4 and later no longer run them",
            expected="data files (a .jsonl/.csv/.parquet file or a folder of them), a "
            "save_to_disk folder, or a dataset id whose data files are on the Hub",
            file=str(path),
        )
    if fmt is None or (gz and fmt == "parquet"):
        hint = " (a .txt of prompts, one per line? write {\"prompt\": ...} lines to a .jsonl)" \
            if ext == ".txt" else ""
        raise RecordError(
            f"cannot tell the format from the name{hint}",
            expected=f"a file ending in {', '.join(_READ_SUFFIXES)} (text formats may be "
            "gzipped: .jsonl.gz, .csv.gz, ...) or a folder",
            file=str(path),
        )
    return fmt, gz


def _build(
    items: Iterable[tuple[Location, Any]],
    kind: str | None,
    file: str,
    *,
    columns: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
) -> Iterator[Record]:
    """Validate ``(location, row)`` pairs into records, adding the location to any error.

    Warns once per column that no field of its record kind reads (kept in ``meta``).
    """
    inferred = None
    warned: set[str] = set()
    for location, row in items:
        try:
            row_kind = kind
            if row_kind is None and isinstance(row, dict):
                row_kind = row.get("kind")
                if row_kind is None:
                    if inferred is None:
                        inferred = infer_kind(columns if columns is not None else row)
                    row_kind = inferred
            record = from_dict(row, row_kind)
            if kinds is not None and record.KIND not in kinds:
                raise RecordError(
                    f"got a '{record.KIND}' record (fields "
                    f"{', '.join(sorted(k for k, v in row.items() if v is not None))})",
                    field="kind",
                    expected=f"one of {', '.join(kinds)} for this stage",
                )
        except RecordError as err:
            raise err.at(file=file, **location) from None
        for key in unknown_fields(row, record.KIND):
            if key not in warned:
                warned.add(key)
                where = RecordError("", file=file, **location)
                warnings.warn(
                    f"{str(where).rstrip(': ')}: field '{key}' is not a field of a "
                    f"'{record.KIND}' record; kept in meta (said once per file)",
                    RecordWarning,
                    stacklevel=3,
                )
        yield record


def _jsonl_items(f: Any, path: Path) -> Iterator[tuple[Location, Any]]:
    lines = iter(f)
    number = 0
    while True:
        raw = guard_gzip(lambda: next(lines, None), path)
        if raw is None:
            return
        number += 1
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        text = decode_line(raw, path, number)
        if not text.strip():
            continue
        try:
            yield {"line": number}, json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            what = f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) \
                else "nested too deeply"
            hint = " (the file looks like one JSON document: name it .json)" \
                if number == 1 and text.lstrip()[:1] == "[" else ""
            raise RecordError(
                f"invalid JSON ({what}){hint}",
                expected="one JSON object per line",
                file=str(path),
                line=number,
            ) from None


def _iter_jsonl(path: Path, kind: str | None, gz: bool,
                kinds: Sequence[str] | None) -> Iterator[Record]:
    with open_binary(path, gz) as f:
        yield from _build(_jsonl_items(f, path), kind, str(path), kinds=kinds)


def _read_json(path: Path, kind: str | None, gz: bool,
               kinds: Sequence[str] | None) -> list[Record]:
    text = decode(read_bytes(path, gz), path, "json")
    expected = 'a JSON list of records or {"records": [...]}'
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (one JSON object per line? name the file .jsonl)" \
            if err.msg == "Extra data" else ""
        raise RecordError(f"invalid JSON ({err.msg} at column {err.colno}){hint}",
                          expected=expected, file=str(path), line=err.lineno) from None
    except RecursionError:
        raise RecordError("invalid JSON (nested too deeply)", expected=expected,
                          file=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        raise RecordError(f"got a JSON {type(data).__name__}", expected=expected, file=str(path))
    hint = "0-based index in the JSON list"
    items = ((_row(i, hint), row) for i, row in enumerate(data))
    return list(_build(items, kind, str(path), kinds=kinds))


def _read_csv(path: Path, kind: str | None, gz: bool, kinds: Sequence[str] | None, *,
              delimiter: str = ",") -> list[Record]:
    fmt = "tsv" if delimiter == "\t" else "csv"
    header, rows = csv_rows(decode(read_bytes(path, gz), path, fmt, delimiter), path, delimiter)
    if delimiter == "," and len(header) == 1 and "\t" in header[0]:
        raise RecordError("the header holds tabs and no commas", file=str(path), line=1,
                          expected="comma-separated columns (a tab-separated file: name it .tsv)")
    items = []
    for index, first, _last, cells in rows:
        location = _row(index, f"0-based data row, line {first}")
        if len(cells) > len(header):
            raise RecordError(
                f"the row has {len(cells)} cells",
                field=f"(cell {len(header) + 1})",
                expected=f"at most {len(header)} cells, one per header column",
            ).at(file=str(path), **location)
        items.append((location, _decode_csv_row(dict(zip(header, cells)))))
    return list(_build(items, kind, str(path), columns=header, kinds=kinds))


def _decode_csv_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column, cell in row.items():
        if cell == "":
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
        # Dicts with any message key are messages (validation then names what is wrong).
        if isinstance(parsed, list) and parsed and all(
            isinstance(m, dict) and m.keys() & {"role", "content", "from", "value"}
            for m in parsed
        ):
            return parsed
    return value


def _clean_table_row(row: dict[str, Any]) -> dict[str, Any]:
    """Drop nulls, unwrap JSON ``meta``, strip null keys that struct columns add to messages."""
    # Nulls are missing values; pandas' index columns are not data.
    out = {k: v for k, v in row.items()
           if v is not None and not str(k).startswith("__index_level_")}
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


def _table_rows(tables: Iterable[Any]) -> Iterator[tuple[Location, Any]]:
    index = 0
    for table in tables:
        for row in table.to_pylist():
            yield _row(index), row
            index += 1


def _cleaned(rows: Iterable[tuple[Location, Any]], path: str) -> Iterator[tuple[Location, Any]]:
    for location, row in rows:
        try:
            yield location, _clean_table_row(row)
        except RecordError as err:
            raise err.at(file=path, **location) from None


def _guarded(rows: Iterable[tuple[Location, Any]], path: Path,
             what: str) -> Iterator[tuple[Location, Any]]:
    """Iterate ``rows``; an Arrow or I/O failure part-way is a RecordError naming ``path``."""
    pa = _need("pyarrow", "pyarrow")
    try:
        yield from rows
    except (pa.ArrowException, OSError) as err:
        raise RecordError(f"{what} could not be read ({_first_line(err)})",
                          expected=f"a readable {what}", file=str(path)) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _sniff(path: Path) -> str:
    """What a file that is not Parquet looks like, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip data"
    if head.startswith(b"PK"):
        return "it is a zip archive (an .xlsx workbook?)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it looks like JSON"
    return "it looks like text (CSV?)"


def _read_parquet(path: Path, kind: str | None, kinds: Sequence[str] | None) -> list[Record]:
    pq = _need("pyarrow.parquet", "pyarrow")
    pa = _need("pyarrow", "pyarrow")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PAR1":
        raise RecordError(f"not a Parquet file: it does not start with 'PAR1'; {_sniff(path)}",
                          expected="a Parquet file (or a name that says the format)",
                          file=str(path))
    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as err:
        raise RecordError(f"a corrupt Parquet file ({_first_line(err)})",
                          expected="a readable Parquet file", file=str(path)) from None
    batches = parquet.iter_batches(batch_size=4096)
    rows = _cleaned(_guarded(_table_rows(batches), path, "Parquet file"), str(path))
    return list(_build(rows, kind, str(path), columns=columns, kinds=kinds))


def _arrow_rows(dataset: Any) -> Iterator[tuple[Location, Any]]:
    # Arrow format skips datasets' feature decoding, which would turn a list of message
    # dicts into a dict of lists under older `Sequence` features.
    return _table_rows(dataset.with_format("arrow").iter(batch_size=4096))


def _pick_split(loaded: Any, split: str | None, name: str) -> tuple[Any, str | None]:
    """The split to read of a ``DatasetDict`` (the only one, or ``train``), and its name."""
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        return loaded, split  # a plain Dataset
    names = list(loaded.keys())
    asked = split
    if split is None:
        split = names[0] if len(names) == 1 else "train"
    if split not in loaded:
        how = "" if asked is not None else "; choose one with --split (and --eval-split)"
        raise RecordError(f"no split '{split}'; the splits are {', '.join(names)}{how}",
                          field="split", expected="one of its splits", file=name)
    return loaded[split], split


def _read_hf(path: Path, kind: str | None, split: str | None,
             kinds: Sequence[str] | None) -> list[Record]:
    datasets = _need("datasets", "datasets")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecordError(f"not a readable datasets folder ({_first_line(err)})",
                          expected="a folder written by save_to_disk", file=str(path)) from None
    loaded, _ = _pick_split(loaded, split, str(path))
    rows = _cleaned(_guarded(_arrow_rows(loaded), path, "datasets folder"), str(path))
    return list(_build(rows, kind, str(path), columns=loaded.column_names, kinds=kinds))


def _read_loaded(spec: str, kind: str | None, split: str | None,
                 kinds: Sequence[str] | None) -> list[Record]:
    """Records of a dataset id or a folder of data files, through ``datasets.load_dataset``."""
    datasets = _need("datasets", "datasets")
    name = spec[len("hf:"):] if spec.startswith("hf:") else spec
    try:
        loaded = datasets.load_dataset(name, split=split) if split else \
            datasets.load_dataset(name)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; say which, in one line
        raise RecordError(f"datasets.load_dataset could not load it ({_first_line(err)})",
                          expected="a dataset id, or a folder of data files", file=spec) from None
    loaded, split = _pick_split(loaded, split, spec)
    hint = f"0-based row of split '{split}'" if split else "0-based data row"
    rows = _guarded(_arrow_rows(loaded), Path(spec), "dataset")
    rows = ((_row(loc["row"], hint), row) for loc, row in _cleaned(rows, spec))
    return list(_build(rows, kind, spec, columns=loaded.column_names, kinds=kinds))


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
