"""Readers and writers: round trips in every format, TRL files, and errors that say where."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data.io import from_rows, iter_jsonl, read_records, write_records
from rlhfkit.data.records import (
    BinaryFeedback,
    Comparison,
    Demonstration,
    PromptRecord,
    Ranking,
    RecordError,
    ScoreFeedback,
    Span,
    SpanFeedback,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
FORMATS = {"jsonl": "r.jsonl", "json": "r.json", "csv": "r.csv", "parquet": "r.parquet"}


def mixed_records():
    """Every kind, string and chat prompts, ties, unicode, commas, quotes and newlines."""
    return [
        PromptRecord(prompt="Write a haiku, please.", id="p1", source="human"),
        Demonstration(prompt="2+2?", response='"4", I think.\nSure.', annotator="ann-1"),
        Demonstration(messages=[*CHAT, {"role": "assistant", "content": "Hello."}]),
        Comparison(
            prompt=CHAT,
            chosen="Hello! 👋",
            rejected="Go away.",
            margin=2.0,
            created_at="2024-05-01T12:00:00+00:00",
            meta={"batch": 3, "tags": ["a", "b"], "nested": {"k": None}},
        ),
        Comparison(prompt="x", chosen="same", rejected="same", tie=True, weight=0.5, group="g"),
        Ranking(prompt="Name a fruit.", responses=["apple", "rock", "pear"], ranks=[0, 2, 1]),
        Ranking(prompt="Fruit?", responses=["fig", "kiwi"], scores=[0.1, -3.0], id="r2"),
        BinaryFeedback(prompt="Joke?", response="No.", label=False, source="simulated"),
        ScoreFeedback(prompt="Joke?", response="A pun.", score=4.5, source="ai"),
        SpanFeedback(
            prompt="Capital of France?",
            response="Paris. It is in Spain.",
            spans=[Span(7, 22, "untruthful", note="France"), Span(0, 6, "my-category")],
            missing=["population"],
        ),
        SpanFeedback(prompt="Q", response="Fine."),  # no spans at all
    ]


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_mixed_kinds(tmp_path, fmt):
    records = mixed_records()
    path = write_records(records, tmp_path / FORMATS[fmt])
    assert read_records(path) == records


def test_round_trip_hf_datasets_folder(tmp_path):
    records = mixed_records()
    path = write_records(records, tmp_path / "ds", format="hf")
    assert (path / "dataset_info.json").exists()
    assert read_records(path) == records


@pytest.mark.parametrize("fmt", [*FORMATS, "hf"])
def test_round_trip_one_kind_with_chat_prompts(tmp_path, fmt):
    records = [
        Comparison(prompt=CHAT, chosen=f"good {i}", rejected=f"bad {i}", weight=1 / 6, group="r")
        for i in range(3)
    ]
    path = write_records(records, tmp_path / FORMATS.get(fmt, "ds"), format=fmt)
    assert read_records(path) == records
    assert read_records(path, kind="comparison") == records


def test_parquet_keeps_chat_prompts_as_native_lists_and_meta_as_json(tmp_path):
    records = [Comparison(prompt=CHAT, chosen="a", rejected="b", meta={"x": 1})]
    table = pq.read_table(write_records(records, tmp_path / "c.parquet"))
    assert pa.types.is_list(table.schema.field("prompt").type)
    assert table.column("prompt").to_pylist() == [CHAT]
    assert table.column("meta").to_pylist() == ['{"x": 1}']
    assert table.column("kind").to_pylist() == ["comparison"]


def test_csv_writes_lists_and_dicts_as_json_text(tmp_path):
    records = [
        Ranking(prompt="p", responses=["a", "b"], ranks=[1, 0], meta={"k": "v"}),
        BinaryFeedback(prompt=CHAT, response="r", label=True),
    ]
    path = write_records(records, tmp_path / "r.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert list(rows[0])[:5] == ["kind", "prompt", "responses", "ranks", "scores"]
    assert list(rows[0])[-5:] == ["id", "annotator", "source", "created_at", "meta"]
    assert rows[0]["responses"] == '["a", "b"]'
    assert rows[0]["ranks"] == "[1, 0]"
    assert rows[0]["meta"] == '{"k": "v"}'
    assert rows[0]["scores"] == "" and rows[0]["id"] == ""
    assert rows[1]["label"] == "true"
    assert json.loads(rows[1]["prompt"]) == CHAT


def test_json_reads_a_list_or_a_records_object(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "obj.json").write_text(json.dumps({"records": rows, "version": 1}))
    expected = [Comparison(prompt="p", chosen="a", rejected="b")]
    assert read_records(tmp_path / "list.json") == expected
    assert read_records(tmp_path / "obj.json") == expected


def test_empty_files_give_no_records(tmp_path):
    for name in ("e.jsonl", "e.csv", "e.parquet", "e.json"):
        write_records([], tmp_path / name)
        assert read_records(tmp_path / name) == []


def test_iter_jsonl_streams_and_skips_blank_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"prompt": "p", "response": "r", "score": 1}\n'
        "\n"
        '{"prompt": "p", "response": "s", "score": 2}\n'
        '{"prompt": "p", "response": "t", "score": "bad"}\n'
    )
    stream = iter_jsonl(path)
    assert next(stream).response == "r"
    assert next(stream).response == "s"  # read before the bad line is reached
    with pytest.raises(RecordError) as info:
        next(stream)
    assert "s.jsonl, line 4, field 'score'" in str(info.value)


def test_from_rows_reads_dicts_and_an_in_memory_dataset():
    import datasets

    rows = [{"prompt": "Q", "completion": "A", "label": True}]
    expected = [BinaryFeedback(prompt="Q", response="A", label=True)]
    assert from_rows(rows) == expected
    assert from_rows(datasets.Dataset.from_list(rows)) == expected


# ---------------------------------------------------------------------------------------------
# TRL conventions, in files written the way other tools write them (no `kind` column)
# ---------------------------------------------------------------------------------------------


def test_trl_prompt_chosen_rejected_jsonl(tmp_path):
    path = tmp_path / "dpo.jsonl"
    path.write_text(
        json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "No.", "prompt_id": "7"})
        + "\n"
    )
    assert read_records(path) == [
        Comparison(prompt="Hi?", chosen="Hello!", rejected="No.", meta={"prompt_id": "7"})
    ]


def test_trl_conversational_preference_parquet(tmp_path):
    user = [{"role": "user", "content": "Hi?"}]
    table = pa.table(
        {
            "prompt": [user],
            "chosen": [[{"role": "assistant", "content": "Hello!"}]],
            "rejected": [[{"role": "assistant", "content": "No."}]],
            "score_chosen": [8.0],
        }
    )
    pq.write_table(table, tmp_path / "prefs.parquet")
    assert read_records(tmp_path / "prefs.parquet") == [
        Comparison(prompt=user, chosen="Hello!", rejected="No.", meta={"score_chosen": 8.0})
    ]


def test_trl_implicit_prompt_hf_folder(tmp_path):
    import datasets

    user = {"role": "user", "content": "Hi?"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "Hello!"}],
        "rejected": [user, {"role": "assistant", "content": "No."}],
    }
    datasets.Dataset.from_list([row]).save_to_disk(str(tmp_path / "hh"))
    assert read_records(tmp_path / "hh") == [
        Comparison(prompt=[user], chosen="Hello!", rejected="No.")
    ]


def test_trl_messages_hf_dataset_dict_with_splits(tmp_path):
    import datasets

    def chat(answer):
        return {"messages": [*CHAT, {"role": "assistant", "content": answer}]}

    folder = tmp_path / "sft"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([chat("one"), chat("two")]),
            "test": datasets.Dataset.from_list([chat("three")]),
        }
    ).save_to_disk(str(folder))
    train = read_records(folder)  # several splits: train by default
    assert [d.response for d in train] == ["one", "two"]
    assert all(isinstance(d, Demonstration) and d.prompt == CHAT for d in train)
    assert [d.response for d in read_records(folder, split="test")] == ["three"]
    with pytest.raises(ValueError, match="no split 'dev'"):
        read_records(folder, split="dev")


def test_trl_prompt_completion_json(tmp_path):
    (tmp_path / "sft.json").write_text(json.dumps([{"prompt": "Q", "completion": "A"}]))
    assert read_records(tmp_path / "sft.json") == [Demonstration(prompt="Q", response="A")]


def test_trl_kto_csv_as_pandas_writes_it(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {"prompt": ["Q1", "Q2"], "completion": ["A1", "A2"], "label": [True, False]}
    )
    frame.to_csv(tmp_path / "kto.csv", index=False)  # label cells are True / False
    assert read_records(tmp_path / "kto.csv") == [
        BinaryFeedback(prompt="Q1", response="A1", label=True),
        BinaryFeedback(prompt="Q2", response="A2", label=False),
    ]


# ---------------------------------------------------------------------------------------------
# Bad input: the error names the file, the line or row, the field and what was expected
# ---------------------------------------------------------------------------------------------

GOOD_ROW = {"kind": "comparison", "prompt": "p", "chosen": "a", "rejected": "b"}
BAD_ROWS = [
    # (case, row, field named in the message)
    (
        "duplicate response",
        {"kind": "ranking", "prompt": "p", "responses": ["a", "a"], "ranks": [0, 1]},
        "responses[1]",
    ),
    (
        "K outside 2..9",
        {"kind": "ranking", "prompt": "p", "responses": ["a"], "ranks": [0]},
        "responses",
    ),
    (
        "ranks length",
        {"kind": "ranking", "prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1]},
        "ranks",
    ),
    (
        "scores length",
        {"kind": "ranking", "prompt": "p", "responses": ["a", "b"], "scores": [1.0]},
        "scores",
    ),
    ("empty chosen", {**GOOD_ROW, "chosen": ""}, "chosen"),
    ("chosen == rejected", {**GOOD_ROW, "rejected": "a"}, "rejected"),
    (
        "span outside the text",
        {
            "kind": "span",
            "prompt": "p",
            "response": "abc",
            "spans": [{"start": 0, "end": 9, "category": "irrelevant"}],
        },
        "spans[0].end",
    ),
    (
        "span start >= end",
        {
            "kind": "span",
            "prompt": "p",
            "response": "abc",
            "spans": [{"start": 2, "end": 1, "category": "untruthful"}],
        },
        "spans[0].end",
    ),
    ("number as text", {**GOOD_ROW, "chosen": 3.5}, "chosen"),
    ("number as prompt", {**GOOD_ROW, "prompt": 1}, "prompt"),
    ("non-bool label", {"kind": "binary", "prompt": "p", "response": "r", "label": 1}, "label"),
    ("unknown source", {**GOOD_ROW, "source": "crowd"}, "source"),
    ("unknown kind", {"kind": "essay", "prompt": "p"}, "kind"),
    ("missing field", {"kind": "score", "prompt": "p", "response": "r"}, "score"),
]


@pytest.mark.parametrize(("case", "row", "field"), BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_jsonl_line_names_file_line_and_field(tmp_path, case, row, field):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(RecordError) as info:
        read_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 3, field '{field}': expected "), message
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 3, field)


@pytest.mark.parametrize(("case", "row", "field"), BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_json_item_names_file_row_and_field(tmp_path, case, row, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD_ROW, row]))
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert f"bad.json, row 1 (0-based index in the JSON list), field '{field}'" in str(info.value)


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n{'prompt': 'p'}\n")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert "broken.jsonl, line 2: expected one JSON object per line; invalid JSON" in str(
        info.value
    )


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('["p", "a", "b"]\n')
    with pytest.raises(RecordError, match=r"list\.jsonl, line 1: expected a JSON object"):
        read_records(path, kind="comparison")


def test_columns_of_no_kind_name_the_kind_field(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert "odd.jsonl, line 1, field 'kind': expected a 'kind' column" in str(info.value)


def test_row_kind_must_agree_with_the_kind_argument(tmp_path):
    path = write_records([BinaryFeedback(prompt="p", response="r", label=True)], tmp_path / "b.csv")
    with pytest.raises(RecordError) as info:
        read_records(path, kind="score")
    assert "b.csv, row 0 (0-based data row, line 2), field 'kind': expected 'score'" in str(info.value)


def test_unknown_kind_argument(tmp_path):
    with pytest.raises(RecordError, match="field 'kind': expected one of prompt"):
        read_records(tmp_path / "x.jsonl", kind="pairs")


def test_bad_csv_label_names_file_row_and_field(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\nQ1,A1,true\nQ2,A2,maybe\n")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert str(info.value) == (
        f"{path}, row 1 (0-based data row, line 3), field 'label': expected a bool (true or "
        "false); "
        "got 'maybe' (str)"
    )


def test_bad_csv_json_cell_names_row_and_field(tmp_path):
    path = tmp_path / "rank.csv"
    path.write_text('prompt,responses,ranks\np,"[""a"", ""b""]","[0, 1]"\np,"[""a"", ""b""]",0;1\n')
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert "rank.csv, row 1 (0-based data row, line 3), field 'ranks': expected a list of 2 " \
        "values" in str(info.value)


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("prompt,chosen,rejected\np,a,b\np,a,b,c\n")
    with pytest.raises(
        RecordError, match=r"wide\.csv, row 1 \(0-based data row, line 3\), field '\(cell 4\)': "
        r"expected at most 3"
    ):
        read_records(path)


def test_csv_empty_chosen_cell_is_a_missing_chosen(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected\np,a,b\np,,b\n")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert (
        "prefs.csv, row 1 (0-based data row, line 3), field 'chosen': expected a non-empty "
        "string"
        in str(info.value)
    )


def test_bad_parquet_row_names_file_row_and_field(tmp_path):
    table = pa.table({"prompt": ["p", "p", "p"], "chosen": ["a", "b", ""], "rejected": list("xyz")})
    pq.write_table(table, tmp_path / "prefs.parquet")
    with pytest.raises(RecordError) as info:
        read_records(tmp_path / "prefs.parquet")
    assert "prefs.parquet, row 2 (0-based data row), field 'chosen': expected a non-empty" in str(
        info.value
    )


def test_bad_parquet_meta_json(tmp_path):
    table = pa.table({"prompt": ["p"], "meta": ["{not json"]})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(RecordError, match=r"m\.parquet, row 0 \(0-based data row\), field 'meta'"):
        read_records(tmp_path / "m.parquet")


def test_bad_hf_row_names_folder_row_and_field(tmp_path):
    import datasets

    rows = [
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1, 2]},
        {"prompt": "p", "responses": ["a", "b", "a"], "ranks": [0, 1, 2]},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ranks"))
    with pytest.raises(RecordError) as info:
        read_records(tmp_path / "ranks")
    message = str(info.value)
    assert "ranks, row 1 (0-based data row), field 'responses[2]'" in message
    assert "distinct" in message


# ---------------------------------------------------------------------------------------------
# Paths and formats
# ---------------------------------------------------------------------------------------------


def test_write_needs_a_known_extension_or_a_format(tmp_path):
    records = [PromptRecord(prompt="p")]
    with pytest.raises(ValueError, match="format='hf'"):
        write_records(records, tmp_path / "folder")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        write_records(records, tmp_path / "r.xml", format="xml")
    with pytest.raises(TypeError, match="item 0 is a dict"):
        write_records([{"prompt": "p"}], tmp_path / "r.jsonl")
    # an explicit format wins over the extension
    path = write_records(records, tmp_path / "r.txt", format="jsonl")
    assert json.loads(path.read_text())["kind"] == "prompt"


def test_read_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "r.txt").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_records(tmp_path / "r.txt")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "nope.jsonl")


def test_write_creates_parent_folders(tmp_path):
    path = write_records([PromptRecord(prompt="p")], tmp_path / "a" / "b" / "p.jsonl")
    assert read_records(path) == [PromptRecord(prompt="p")]


# ---------------------------------------------------------------------------------------------
# db: paths are read by the training stages (rlhfkit.train.inputs), not by the file readers
# ---------------------------------------------------------------------------------------------


def test_db_path_is_dispatched_to_the_store(monkeypatch):
    from rlhfkit.train import inputs

    seen = []

    def read_project_records(url):
        seen.append(url)
        return [
            Comparison(prompt="p", chosen="a", rejected="b"),
            {"kind": "binary", "prompt": "p", "response": "r", "label": True},
        ]

    monkeypatch.setattr(inputs, "read_project_records", read_project_records)
    records = inputs.read_source("db:sqlite:///feedback.db")
    assert seen == ["sqlite:///feedback.db"]
    assert [r.kind for r in records] == ["comparison", "binary"]
    assert inputs.read_source("db:sqlite:///feedback.db", kind="binary") == [
        BinaryFeedback(prompt="p", response="r", label=True)
    ]


def test_the_file_reader_refuses_a_db_path_and_says_who_reads_it():
    with pytest.raises(RecordError) as info:
        read_records("db:postgresql://me:secret@host/db")
    message = str(info.value)
    assert "rlhfkit.train.inputs.read_source" in message
    assert "secret" not in message and "me:***@host" in message
