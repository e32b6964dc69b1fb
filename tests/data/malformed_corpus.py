"""A corpus of malformed record files: every format, every record kind.

:func:`build_corpus` writes each case under a folder and returns :class:`Case` objects that say
where the error must point. Two families:

- *record* cases: a bad row of one kind (missing field, wrong type, whitespace-only text, a
  typo'd field name, a chat role no template knows, kind-specific rules), written after two
  good rows into JSONL, JSON, CSV, Parquet and a ``datasets`` folder. The error must name the
  file, the bad row's line (JSONL, 1-based) or row (0-based) and the field. Defects a format
  cannot express (a number in a text column of a CSV is text) are left out for that format;
  where Arrow cannot hold the good rows and the bad one in one column, the bad row is written
  alone (row 0).
- *file* cases: bytes that are not UTF-8, CSV quoting gone wrong, corrupt or mislabelled
  Parquet, unknown extensions, broken gzip, a ``datasets`` folder without the split asked for.
  Where a row and field can be told (invalid UTF-8 inside a cell, an open quote in a column),
  the error must name them too; otherwise it names the file (and the line, for syntax errors).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GOOD: dict[str, list[dict[str, Any]]] = {
    "prompt": [{"prompt": "Say hi"}, {"prompt": "Name a fruit"}],
    "demonstration": [{"prompt": "Say hi", "response": "Hi!"},
                      {"prompt": "Name a fruit", "response": "Pear."}],
    "comparison": [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
                   {"prompt": "Name a fruit", "chosen": "Pear.", "rejected": "Rock."}],
    "ranking": [{"prompt": "Say hi", "responses": ["Hi!", "No.", "Yo"], "ranks": [0, 2, 1]},
                {"prompt": "Fruit?", "responses": ["Pear.", "Rock."], "ranks": [0, 1]}],
    "binary": [{"prompt": "Say hi", "response": "Hi!", "label": True},
               {"prompt": "Say hi", "response": "No.", "label": False}],
    "score": [{"prompt": "Say hi", "response": "Hi!", "score": 6},
              {"prompt": "Say hi", "response": "No.", "score": 2}],
    "span": [{"prompt": "Capital of France?", "response": "Paris. In Spain.",
              "spans": [{"start": 7, "end": 16, "category": "untruthful", "note": None}]},
             {"prompt": "2+2?", "response": "4.", "spans": []}],
}
"""Two valid rows of each kind."""

USER = [{"role": "user", "content": "Say hi"}]

ALL = ("jsonl", "json", "csv", "parquet", "hf")
TYPED = ("jsonl", "json", "parquet", "hf")  # formats that keep a number apart from its text


@dataclass
class Defect:
    """One bad row of one kind: the field the error must name."""

    kind: str
    name: str
    change: Callable[[dict[str, Any]], dict[str, Any]]
    field: str
    formats: tuple[str, ...] = ALL


def _set(**kw: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda row: {**row, **kw}


def _drop(key: str, **kw: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda row: {**{k: v for k, v in row.items() if k != key}, **kw}


def _defects() -> list[Defect]:
    out: list[Defect] = []
    for kind in GOOD:  # what every kind shares
        out += [
            Defect(kind, "no prompt", _drop("prompt"), "prompt"),
            Defect(kind, "empty prompt", _set(prompt=""), "prompt"),
            Defect(kind, "whitespace prompt", _set(prompt=" \t "), "prompt"),
            Defect(kind, "number prompt", _set(prompt=7), "prompt", TYPED),
            Defect(kind, "role human", _set(prompt=[{"role": "human", "content": "hi"}]),
                   "prompt[0].role"),
            Defect(kind, "role missing", _set(prompt=[{"content": "hi"}]), "prompt[0].role"),
            Defect(kind, "sharegpt message", _set(prompt=[{"from": "human", "value": "hi"}]),
                   "prompt[0].role"),
            Defect(kind, "unknown source", _set(source="crowd"), "source"),
            Defect(kind, "bad created_at", _set(created_at="yesterday"), "created_at"),
            Defect(kind, "typo annotator", _set(annotater="ann-1"), "annotater"),
        ]
    for kind in ("demonstration", "binary", "score", "span"):
        out += [
            Defect(kind, "no response", _drop("response"), "response"),
            Defect(kind, "whitespace response", _set(response="  \n "), "response"),
            Defect(kind, "number response", _set(response=5), "response", TYPED),
            Defect(kind, "typo respnse", _drop("response", respnse="Hi!"), "respnse"),
            Defect(kind, "response and completion", _set(completion="Hi!"), "completion"),
        ]
    out += [
        Defect("demonstration", "messages end with user",
               _drop("prompt", messages=[{"role": "assistant", "content": "a"},
                                         {"role": "user", "content": "b"}]),
               "messages[1].role", ALL),
        Defect("demonstration", "only the assistant message",
               _drop("prompt", messages=[{"role": "assistant", "content": "a"}]), "messages"),
        Defect("demonstration", "role gpt",
               _drop("prompt", messages=[{"role": "user", "content": "q"},
                                         {"role": "gpt", "content": "a"}]), "messages[1].role"),
        Defect("comparison", "chosen == rejected", _set(rejected="Hi!"), "rejected"),
        Defect("comparison", "empty chosen", _set(chosen=""), "chosen"),
        Defect("comparison", "whitespace rejected", _set(rejected="   "), "rejected"),
        Defect("comparison", "no rejected", _drop("rejected"), "rejected"),
        Defect("comparison", "negative margin", _set(margin=-1.0), "margin"),
        Defect("comparison", "zero weight", _set(weight=0), "weight"),
        Defect("comparison", "text weight", _set(weight="heavy"), "weight"),
        Defect("comparison", "typo wieght", _set(wieght=0.25), "wieght"),
        Defect("comparison", "typo margn", _set(margn=1.0), "margn"),
        Defect("comparison", "text tie", _set(tie="yes"), "tie"),
        Defect("comparison", "number chosen", _set(chosen=3.5), "chosen", TYPED),
        Defect("ranking", "duplicate response", _set(responses=["a", "a"], ranks=[0, 1]),
               "responses[1]"),
        Defect("ranking", "one response", _set(responses=["a"], ranks=[0]), "responses"),
        Defect("ranking", "ten responses",
               _set(responses=[f"r{i}" for i in range(10)], ranks=list(range(10))), "responses"),
        Defect("ranking", "ranks too short", _set(ranks=[0, 1]), "ranks"),
        Defect("ranking", "negative rank", _set(ranks=[-1, 0, 1]), "ranks[0]"),
        Defect("ranking", "ranks and scores", _set(scores=[1.0, 2.0, 3.0]), "ranks"),
        Defect("ranking", "neither ranks nor scores", _drop("ranks"), "ranks"),
        Defect("ranking", "nan score", _drop("ranks", scores=[1.0, float("nan"), 0.0]),
               "scores[1]"),
        Defect("ranking", "whitespace response", _set(responses=["a", " ", "c"]),
               "responses[1]"),
        Defect("binary", "label yes", _set(label="yes"), "label"),
        Defect("binary", "label 1", _set(label=1), "label"),
        Defect("binary", "no label", _drop("label"), "label"),
        Defect("binary", "typo lable", _drop("label", lable=True), "lable"),
        Defect("score", "text score", _set(score="high"), "score"),
        Defect("score", "infinite score", _set(score=float("inf")), "score"),
        Defect("score", "bool score", _set(score=True), "score"),
        Defect("score", "no score", _drop("score"), "score"),
        Defect("span", "span past the end",
               _set(spans=[{"start": 0, "end": 99, "category": "irrelevant", "note": None}]),
               "spans[0].end"),
        Defect("span", "empty span",
               _set(spans=[{"start": 3, "end": 3, "category": "irrelevant", "note": None}]),
               "spans[0].end"),
        Defect("span", "negative start",
               _set(spans=[{"start": -1, "end": 3, "category": "irrelevant", "note": None}]),
               "spans[0].start"),
        Defect("span", "whitespace category",
               _set(spans=[{"start": 0, "end": 3, "category": " ", "note": None}]),
               "spans[0].category"),
        Defect("span", "spans not a list", _set(spans="0-3"), "spans"),
        Defect("span", "whitespace missing note", _set(missing=["  "]), "missing[0]"),
    ]
    return out


@dataclass
class Case:
    """A file (or folder) to read and where its error must point.

    ``where`` is ``"line N"`` or ``"row N"`` (None: the file as a whole); ``field`` is the
    field the message names (None: none can be told).
    """

    name: str
    path: Path
    where: str | None
    field: str | None
    kind: str | None = None
    kinds: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c)) for c in columns])


def _arrow(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    # from_pylist takes its columns from the first row; a bad last row may add one.
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({c: [row.get(c) for row in rows] for c in columns})


def write_rows(rows: list[dict[str, Any]], path: Path, fmt: str) -> int:
    """Write ``rows`` raw (no validation); returns the index the last row ended up at."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "csv":
        write_csv(rows, path)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = _arrow(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            rows = rows[-1:]  # Arrow cannot hold the good rows and the bad one in one column
            table = _arrow(rows)
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            import datasets

            datasets.Dataset(table).save_to_disk(str(path))
    return len(rows) - 1


def record_cases(root: Path) -> list[Case]:
    """Every defect of :func:`_defects` in every format it can be written in."""
    cases = []
    suffix = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet", "hf": ""}
    for n, defect in enumerate(_defects()):
        good = [{"kind": defect.kind, **row} for row in GOOD[defect.kind]]
        bad = defect.change(dict(good[0]))
        for fmt in defect.formats:
            path = root / f"{n:03d}-{defect.kind}-{fmt}{suffix[fmt]}"
            index = write_rows([*good, bad], path, fmt)
            where = f"line {index + 1}" if fmt == "jsonl" else f"row {index}"
            cases.append(Case(f"{defect.kind}: {defect.name} [{fmt}]", path, where,
                              defect.field))
    return cases


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def file_cases(root: Path) -> list[Case]:  # noqa: PLR0915 - a flat list of cases reads best
    """Broken bytes, quoting, containers and names."""
    import pyarrow.parquet as pq

    c: list[Case] = []
    good = json.dumps(GOOD["comparison"][0])
    bad_jsonl = (good + "\n" + good + "\n").encode() + \
        b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "b"}\n'
    c.append(Case("latin-1 byte in a JSONL cell", _write(root / "latin1.jsonl", bad_jsonl),
                  "line 3", "chosen"))
    c.append(Case("invalid UTF-8 in a chat message", _write(
        root / "chat.jsonl", b'{"prompt": [{"role": "user", "content": "\xff"}], "response": "r"}'),
        "line 1", "prompt[0].content"))
    gz = root / "latin1.jsonl.gz"
    gz.write_bytes(gzip.compress(bad_jsonl))
    c.append(Case("latin-1 byte in a gzipped JSONL", gz, "line 3", "chosen"))
    c.append(Case("invalid UTF-8 in a CSV cell", _write(
        root / "latin1.csv", b"prompt,response,score\nQ,fine,1\nQ,na\xefve,2\n"), "row 1",
        "response"))
    c.append(Case("invalid UTF-8 in a JSON list", _write(
        root / "latin1.json", b'[{"prompt": "p", "response": "r"}, {"prompt": "\xe9", '
        b'"response": "r"}]'), "row 1", "prompt"))
    c.append(Case("UTF-16 CSV", _write(root / "utf16.csv",
                                       "prompt,response\nQ,A\n".encode("utf-16")), "line 1", None))
    c.append(Case("invalid JSON line", _write(root / "broken.jsonl", good + "\n{'prompt': 1}\n"),
                  "line 2", None))
    c.append(Case("truncated last line", _write(root / "cut.jsonl", good + '\n{"prompt": "p", "ch'),
                  "line 2", None))
    c.append(Case("a JSON list named .jsonl", _write(root / "list.jsonl", "[\n" + good + "\n]\n"),
                  "line 1", None))
    c.append(Case("JSONL named .json", _write(root / "lines.json", good + "\n" + good + "\n"),
                  "line 2", None))
    c.append(Case("a JSON line that is a list", _write(root / "row-list.jsonl", '["p", "a"]\n'),
                  "line 1", None))
    c.append(Case("an empty JSON object", _write(root / "empty-object.jsonl", "{}\n"), "line 1",
                  "kind"))
    c.append(Case("a JSON number document", _write(root / "number.json", "42"), None, None))
    c.append(Case("typo respnse, no kind column", _write(
        root / "typo.jsonl", '{"prompt": "p", "respnse": "r"}\n'), "line 1", "respnse"))
    c.append(Case("typo wieght, no kind column", _write(
        root / "wieght.jsonl", good + '\n{"prompt": "p", "chosen": "a", "rejected": "b", '
        '"wieght": 0.25}\n'), "line 2", "wieght"))
    c.append(Case("typo respnse in a CSV header", _write(
        root / "typo.csv", "prompt,respnse\nQ,A\n"), "row 0", "respnse"))
    c.append(Case("a kind the stage does not take", _write(
        root / "demos.jsonl", '{"prompt": "p", "response": "r"}\n'), "line 1", "kind",
        kinds=["comparison", "ranking", "binary"]))
    c.append(Case("CSV quote never closed", _write(
        root / "open.csv", 'prompt,chosen,rejected\np,a,b\nq,"a,b\nr,c,d\n'), "line 3", "chosen"))
    c.append(Case("CSV quote that swallows a row", _write(
        root / "merged.csv", 'prompt,chosen,rejected\n"Say hi,hello,yo\nSay bye",bye,see ya\n'),
        "line 2", "prompt"))
    c.append(Case("CSV text after a closing quote", _write(
        root / "stray.csv", 'prompt,chosen,rejected\np,"a"b,c\n'), "line 2", "chosen"))
    c.append(Case("CSV NUL byte", _write(root / "nul.csv", b"prompt,chosen,rejected\np,a\x00,b\n"),
                  "line 2", "chosen"))
    c.append(Case("CSV header names a column twice", _write(
        root / "twice.csv", "prompt,chosen,chosen,rejected\np,a,b,c\n"), "line 1", "chosen"))
    c.append(Case("CSV row with too many cells", _write(
        root / "wide.csv", "prompt,chosen,rejected\np,a,b\np,a,b,c\n"), "row 1", "(cell 4)"))
    c.append(Case("TSV named .csv", _write(root / "tabs.csv", "prompt\tchosen\trejected\np\ta\tb\n"),
                  "line 1", None))
    c.append(Case(".txt file", _write(root / "prompts.txt", "Say hi\nName a fruit\n"), None, None))
    c.append(Case("no extension", _write(root / "records", good + "\n"), None, None))
    c.append(Case("corrupt .jsonl.gz", _write(root / "bad.jsonl.gz", b"\x1f\x8b\x08\x00junk"),
                  None, None))
    c.append(Case("plain text named .jsonl.gz", _write(root / "plain.jsonl.gz", good + "\n"),
                  None, None))
    c.append(Case(".parquet.gz", _write(root / "x.parquet.gz", b""), None, None))
    c.append(Case("CSV named .parquet", _write(root / "fake.parquet", "prompt,chosen\np,a\n"),
                  None, None))
    c.append(Case("JSONL named .parquet", _write(root / "json.parquet", good + "\n"), None, None))
    c.append(Case("empty .parquet", _write(root / "empty.parquet", b""), None, None))
    real = root / "real.parquet"
    pq.write_table(_arrow(GOOD["comparison"]), real)
    data = real.read_bytes()
    c.append(Case("truncated Parquet", _write(root / "truncated.parquet", data[: len(data) // 2]),
                  None, None))
    c.append(Case("Parquet with a broken footer", _write(
        root / "footer.parquet", data[:-12] + b"\x00" * 8 + b"PAR1"), None, None))
    c.append(Case("a datasets loading script", _write(root / "my_dataset.py", "import datasets\n"),
                  None, None))
    c += _folder_cases(root)
    return c


def _folder_cases(root: Path) -> list[Case]:
    import datasets

    c: list[Case] = []
    folder = root / "dev-test"
    datasets.DatasetDict({
        "dev": datasets.Dataset.from_list(GOOD["comparison"]),
        "test": datasets.Dataset.from_list(GOOD["comparison"]),
    }).save_to_disk(str(folder))
    c.append(Case("datasets folder without a train split", folder, None, "split"))
    c.append(Case("datasets folder, a split it lacks", folder, None, "split",
                  extra={"split": "validation"}))
    broken = root / "broken-ds"
    datasets.Dataset.from_list(GOOD["comparison"]).save_to_disk(str(broken))
    for arrow in broken.glob("*.arrow"):
        arrow.write_bytes(b"not arrow at all")
    c.append(Case("datasets folder with a corrupt arrow file", broken, None, None))
    bad_state = root / "bad-state"
    datasets.Dataset.from_list(GOOD["comparison"]).save_to_disk(str(bad_state))
    (bad_state / "state.json").write_text("{not json")
    c.append(Case("datasets folder with a broken state.json", bad_state, None, None))
    empty = root / "empty-folder"
    empty.mkdir()
    c.append(Case("an empty folder", empty, None, None))
    return c


def build_corpus(root: Path) -> list[Case]:
    """Write every case under ``root``; returns them."""
    import datasets

    (root / "records").mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(parents=True, exist_ok=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return record_cases(root / "records") + file_cases(root / "files")
    finally:
        if bars:
            datasets.enable_progress_bars()
