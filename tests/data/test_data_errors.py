"""Every malformed file ends in a one-line RecordError naming file, line/row and field.

The corpus (``malformed_corpus.py``) covers JSONL, JSON, CSV, Parquet and ``datasets`` folders
for every record kind, plus broken bytes, quoting, containers and names. Each case goes
through the real reader; a few go through ``rlhfkit sft`` / ``rlhfkit rm --data FILE`` as a
user would run them (exit code 1, one line on stderr, no traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from malformed_corpus import build_corpus

from rlhfkit.data.io import RecordWarning, read_records
from rlhfkit.data.records import Comparison, RecordError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("malformed"))


def _read(case):
    return read_records(case.path, case.kind, kinds=case.kinds, **case.extra)


def test_the_corpus_is_large_and_covers_every_format_and_kind(corpus):
    names = [c.name for c in corpus]
    assert len(corpus) > 300, len(corpus)
    for fmt in ("jsonl", "json", "csv", "parquet", "hf"):
        assert sum(f"[{fmt}]" in n for n in names) >= 40, fmt
    for kind in ("prompt", "demonstration", "comparison", "ranking", "binary", "score", "span"):
        assert sum(n.startswith(f"{kind}:") for n in names) >= 20, kind


def test_every_case_is_one_line_naming_file_location_and_field(corpus):
    failures = []
    for case in corpus:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RecordWarning)  # a warning is not an answer
                records = _read(case)
        except RecordError as err:
            message = str(err)
            problems = []
            if "\n" in message:
                problems.append("several lines")
            if not message.startswith(str(case.path)):
                problems.append("does not start with the file")
            if case.where is not None:
                word, number = case.where.split()
                if word == "line" and f", line {number}" not in message:
                    problems.append(f"no '{case.where}'")
                if word == "row" and f", row {number} (" not in message:
                    problems.append(f"no '{case.where}'")
            if case.field is not None and f"field '{case.field}'" not in message:
                problems.append(f"no field '{case.field}'")
            if problems:
                failures.append(f"{case.name}: {', '.join(problems)}: {message}")
        except Exception as err:  # noqa: BLE001 - any other exception is a failure to report
            failures.append(f"{case.name}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{case.name}: accepted silently ({len(records)} records)")
    assert not failures, f"{len(failures)} of {len(corpus)} cases:\n" + "\n".join(failures)


def test_corpus_record_cases_all_name_a_field(corpus):
    record_cases = [c for c in corpus if "/records/" in str(c.path)]
    assert record_cases and all(c.field and c.where for c in record_cases)


# ------------------------------------------------------------------------- unknown fields


def test_unknown_field_is_kept_in_meta_with_one_warning_per_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "p", "chosen": f"a{i}", "rejected": "b", "batch_tag": i} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(RecordWarning) as caught:
        records = read_records(path)
    assert [r.meta for r in records] == [{"batch_tag": 0}, {"batch_tag": 1}, {"batch_tag": 2}]
    messages = [str(w.message) for w in caught if w.category is RecordWarning]
    assert messages == [f"{path}, line 1: field 'batch_tag' is not a field of a 'comparison' "
                        "record; kept in meta (said once per file)"]


def test_pandas_index_column_is_not_an_unknown_field(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}, index=[7])
    frame.to_parquet(tmp_path / "p.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordWarning)
        assert read_records(tmp_path / "p.parquet") == [
            Comparison(prompt="p", chosen="a", rejected="b")]


def test_near_miss_rules():
    from rlhfkit.data.records import closest_field

    names = ["prompt", "chosen", "rejected", "weight", "margin", "id", "source", "label"]
    assert closest_field("wieght", names) == "weight"  # swapped letters
    assert closest_field("Prompt", names) == "prompt"  # case
    assert closest_field("rejcted", names) == "rejected"
    assert closest_field("prompt_id", names) is None  # a real extra column of TRL data sets
    assert closest_field("score_chosen", names) is None
    assert closest_field("lable", names) == "label"
    assert closest_field("tag", ["tie"]) is None  # short names allow one edit only
    assert closest_field("weight", names) is None  # the name itself is no typo


# ------------------------------------------------------------------------- good files that
# used to fail: gzip, BOM, TSV, long cells, multi-line cells


def test_gzipped_and_bom_and_tsv_files_read(tmp_path):
    import gzip

    rows = "".join(json.dumps({"prompt": "p", "chosen": f"a{i}", "rejected": "b"}) + "\n"
                   for i in range(2))
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    (tmp_path / "p.csv.gz").write_bytes(gzip.compress(b"prompt,chosen,rejected\np,a0,b\np,a1,b\n"))
    (tmp_path / "p.tsv").write_text("prompt\tchosen\trejected\np\ta0\tb\np\ta1\tb\n")
    expected = [Comparison(prompt="p", chosen=f"a{i}", rejected="b") for i in range(2)]
    for name in ("p.jsonl.gz", "bom.jsonl", "p.csv.gz", "p.tsv"):
        assert read_records(tmp_path / name) == expected, name


def test_csv_multiline_cells_and_long_cells_are_fine(tmp_path):
    long = "word " * 40_000  # 200 kB, past csv's default 128 KiB cell limit
    path = tmp_path / "ok.csv"
    path.write_text('prompt,chosen,rejected\n"Write a poem\nabout cats",cats,"no, dogs,\nnope"\n'
                    f'p,{long.strip()},b\n')
    records = read_records(path)
    assert records[0].prompt == "Write a poem\nabout cats"
    assert records[0].rejected == "no, dogs,\nnope"
    assert len(records[1].chosen) > 190_000


# ------------------------------------------------------------------------- through the CLI


CLI_CASES = [
    ("sft", "latin-1 byte in a JSONL cell"),
    ("rm", "CSV quote that swallows a row"),
    ("rm", "CSV named .parquet"),
    ("sft", ".txt file"),
    ("rm", "datasets folder without a train split"),
    ("rm", "comparison: typo wieght [jsonl]"),
    ("sft", "demonstration: whitespace response [csv]"),
    ("rm", "a kind the stage does not take"),
]


@pytest.mark.parametrize(("stage", "name"), CLI_CASES)
def test_cli_exits_1_with_one_line(corpus, tiny_lm, tmp_path, capsys, stage, name):
    from rlhfkit.cli import main

    case = next(c for c in corpus if c.name == name)
    rc = main([stage, "--model", str(tiny_lm), "--data", str(case.path), "--output-dir",
               str(tmp_path / "run"), "--no-progress", "--report-to", "none"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"rlhfkit {stage}: error: {case.path}"), err


def test_cli_in_a_fresh_process_prints_no_traceback(corpus, tiny_lm, tmp_path):
    case = next(c for c in corpus if c.name == "invalid UTF-8 in a CSV cell")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "rm", "--model", str(tiny_lm), "--data",
         str(case.path), "--output-dir", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{case.path}, row 1 (0-based data row), field 'response'" in lines[0]
