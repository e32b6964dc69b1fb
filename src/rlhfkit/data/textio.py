"""Bytes to text to rows for the text formats (JSONL, JSON, CSV/TSV), with errors that say where.

Helpers of :mod:`rlhfkit.data.io`. Each turns a failure of the layer below (gzip, UTF-8,
``json``, ``csv``) into a :class:`~rlhfkit.data.records.RecordError` that names the file, the
line or row and, where it can be told, the field:

- invalid UTF-8: the line (and column) of the first bad byte, and the field whose text holds it
  (found by decoding with ``surrogateescape`` and parsing the line, document or row);
- a gzip file that is not gzip, or is cut short;
- CSV that the ``csv`` module cannot parse (a quote left open to the end of the file, text after
  a closing quote, a NUL byte), a header that names a column twice, and a row whose open quote
  swallowed the next row(s) (see :func:`csv_rows`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfkit.data.records import RecordError

__all__ = ["csv_rows", "decode", "open_binary", "read_bytes", "surrogate_path"]

_UTF8 = "UTF-8 text (re-save the file as UTF-8)"


def open_binary(path: Path, gz: bool) -> Any:
    """The file opened for reading bytes (through gzip when ``gz``)."""
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115


def read_bytes(path: Path, gz: bool) -> bytes:
    """All bytes of the file, gunzipped when ``gz``; a broken gzip file is a RecordError."""
    with open_binary(path, gz) as f:
        return guard_gzip(f.read, path)


def guard_gzip(read: Any, path: Path) -> Any:
    """Call ``read()``; turn gzip's errors into a RecordError naming ``path``."""
    try:
        return read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise RecordError(f"not a readable gzip file ({err})", expected="a gzip file",
                          file=str(path)) from None


def surrogate_path(value: Any, prefix: str = "") -> str | None:
    """Where the first undecodable byte of ``value`` is, or None.

    Returns the path (``response``, ``prompt[1].content``, ``[3].chosen``) of the first string
    (key or value) holding a byte that ``surrogateescape`` kept undecoded.
    """
    if isinstance(value, str):
        return prefix if any("\udc80" <= c <= "\udcff" for c in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if surrogate_path(key) is not None:
                return name
            found = surrogate_path(item, name)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = surrogate_path(item, f"{prefix}[{i}]")
            if found is not None:
                return found
    return None


def utf8_error(err: UnicodeDecodeError, data: bytes, path: Path, *, line_offset: int = 0,
               field: str | None = None, row: int | None = None,
               row_hint: str = "0-based data row") -> RecordError:
    """A RecordError for the first bad byte of ``data`` (line and column, 1-based)."""
    before = data[: err.start]
    line = before.count(b"\n") + 1 + line_offset
    column = err.start - (before.rfind(b"\n") + 1) + 1
    bad = data[err.start]
    message = f"invalid UTF-8 (byte 0x{bad:02x} at line {line}, column {column})"
    if row is not None:
        return RecordError(message, expected=_UTF8, field=field, file=str(path), row=row,
                           row_hint=row_hint)
    return RecordError(message, expected=_UTF8, field=field, file=str(path), line=line)


def decode(data: bytes, path: Path, fmt: str, delimiter: str = ",") -> str:
    """``data`` as text, a byte-order mark dropped.

    Invalid UTF-8 is a RecordError that names the line and the field holding the bad byte (and
    the row, for JSON lists and CSV).
    """
    if data.startswith(b"\xef\xbb\xbf"):  # spreadsheet programs like to add one
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        loose = data.decode("utf-8", "surrogateescape")
        field = None
        if fmt == "json":
            try:
                found = surrogate_path(json.loads(loose))
            except (json.JSONDecodeError, RecursionError):
                found = None
            if found is not None and found.startswith("["):
                index, _, field = found[1:].partition("]")
                raise utf8_error(err, data, path, field=field.lstrip(".") or None,
                                 row=int(index), row_hint="0-based index in the JSON list") \
                    from None
            field = found
        elif fmt in ("csv", "tsv"):
            row, field = _csv_bad_cell(loose, delimiter)
            if row is not None:
                raise utf8_error(err, data, path, field=field, row=row) from None
        raise utf8_error(err, data, path, field=field) from None


def decode_line(raw: bytes, path: Path, number: int) -> str:
    """One JSONL line as text; invalid UTF-8 names the line and the field holding the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        try:
            field = surrogate_path(json.loads(raw.decode("utf-8", "surrogateescape")))
        except (json.JSONDecodeError, RecursionError):
            field = None
        raise utf8_error(err, raw, path, line_offset=number - 1, field=field) from None


def _csv_bad_cell(text: str, delimiter: str) -> tuple[int | None, str | None]:
    """(0-based data row, column name) of the first CSV cell holding an undecodable byte."""
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error:
        return None, None
    header = rows[0] if rows else []
    if surrogate_path(header) is not None:
        return None, None
    for index, cells in enumerate(rows[1:]):
        for column, cell in enumerate(cells):
            if surrogate_path(cell) is not None:
                name = header[column] if column < len(header) else f"(cell {column + 1})"
                return index, name
    return None, None


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def csv_rows(text: str, path: Path, delimiter: str = ",") -> tuple[list[str], Iterator[Any]]:
    """The header and ``(index, first line, last line, cells)`` for each data row.

    Raises RecordError (file, line, and the column where it can be told) for what ``csv``
    refuses, a header naming a column twice, and a quoted cell that swallowed whole rows: a
    row spanning several lines whose first line holds a quote never closed on it, and whose
    lines each look like a full row on their own (as many delimiters as the header, or more).
    A cell with line breaks in it (a multi-line response) passes; so does one whose later
    lines hold fewer delimiters than a row.
    """
    # A response can be longer than csv's default cell limit of 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    lines = list(io.StringIO(text, newline=""))
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader, [])
    except csv.Error as err:
        raise _csv_error(err, path, reader.line_num, lines, delimiter, []) from None
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise RecordError(f"the header names column '{name}' twice", field=name,
                              expected="distinct column names", file=str(path), line=1)
        seen.add(name)
    return header, _data_rows(reader, lines, path, delimiter, header)


def _data_rows(reader: Any, lines: list[str], path: Path, delimiter: str,
               header: list[str]) -> Iterator[Any]:
    index = 0
    while True:
        first = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise _csv_error(err, path, first, lines, delimiter, header) from None
        last = reader.line_num
        if last > first:
            _check_swallowed(lines[first - 1:last], first, path, delimiter, header)
        for column, cell in enumerate(cells):
            if "\0" in cell:  # csv reads NUL bytes as text since Python 3.11
                line = first + cell[:cell.index("\0")].count("\n")
                raise RecordError("a NUL byte (is this a binary file, or UTF-16 text?)",
                                  field=_column(header, column), expected="text",
                                  file=str(path), line=line)
        if cells:  # csv gives [] for a blank line
            yield index, first, last, cells
            index += 1


def _scan(line: str, delimiter: str) -> tuple[int | None, int | None]:
    """Where a CSV line's quoting goes wrong: 0-based cells, or None.

    Returns the cell left in an open quote at the end of ``line``, and the first cell with text
    after its closing quote.
    """
    cell, quoted, at_start, i, stray = 0, False, True, 0, None
    text = line.rstrip("\r\n")
    while i < len(text):
        c = text[i]
        if quoted:
            if c == '"':
                if text[i + 1:i + 2] == '"':
                    i += 1
                else:
                    quoted = False
                    after = text[i + 1:i + 2]
                    if after not in ("", delimiter) and stray is None:
                        stray = cell
        elif c == delimiter:
            cell, at_start = cell + 1, True
            i += 1
            continue
        elif c == '"' and at_start:
            quoted = True
        at_start = False
        i += 1
    return (cell if quoted else None), stray


def _open_quote_column(line: str, delimiter: str) -> int | None:
    """The 0-based cell in which ``line`` opens a quote it does not close, or None."""
    return _scan(line, delimiter)[0]


def _column(header: list[str], index: int | None) -> str | None:
    if index is None:
        return None
    return header[index] if index < len(header) else f"(cell {index + 1})"


def _check_swallowed(lines: list[str], first: int, path: Path, delimiter: str,
                     header: list[str]) -> None:
    column = _open_quote_column(lines[0], delimiter)
    width = len(header) - 1
    if column is None or width < 1:
        return
    if all(line.count(delimiter) >= width for line in lines):
        shown = lines[1].rstrip("\r\n")
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise RecordError(
            f"the quote opened on line {first} closes only on line {first + len(lines) - 1}, "
            f"taking in what looks like another row ({shown!r})",
            field=_column(header, column),
            expected="a closing quote on the same line (a cell whose text spans lines and holds "
            f"'{delimiter}' on each of them: write the records as JSONL)",
            file=str(path),
            line=first,
        )


def _csv_error(err: csv.Error, path: Path, line: int, lines: list[str], delimiter: str,
               header: list[str]) -> RecordError:
    message = str(err)
    field = None
    text = lines[min(line, len(lines)) - 1] if lines else ""
    if "unexpected end of data" in message or "EOF" in message:
        field = _column(header, _open_quote_column(text, delimiter))
        message = f"a quote opened on line {line} is never closed"
    else:
        stray = _scan(text, delimiter)[1]
        field = _column(header, stray)
        message = f"malformed CSV ({message})"
    return RecordError(message, field=field, expected="well-formed CSV (RFC 4180 quoting)",
                       file=str(path), line=line)
