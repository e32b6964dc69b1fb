"""Reading a run folder's outputs: the rows of its logs, its summaries."""

import json

import pytest

from rlhfkit.evaluate.runs import read_json, read_metrics, read_rounds


def test_read_metrics(tmp_path):
    assert read_metrics(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_metrics(tmp_path, required=True)
    rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '\n{"step": 3, "lo')  # killed mid-line
    assert read_metrics(tmp_path) == rows
    assert read_metrics(tmp_path / "metrics.jsonl") == rows
    (tmp_path / "metrics.jsonl").write_text('{"step": 1\n' + text)
    with pytest.raises(ValueError, match="metrics.jsonl, line 1: invalid JSON"):
        read_metrics(tmp_path)


def test_read_rounds_and_read_json(tmp_path):
    assert read_rounds(tmp_path) == []
    (tmp_path / "rounds.jsonl").write_text('{"round": 1}\n\n{"round": 2}\n')
    assert read_rounds(tmp_path) == [{"round": 1}, {"round": 2}]
    assert read_rounds(tmp_path / "rounds.jsonl") == read_rounds(tmp_path)
    with pytest.raises(FileNotFoundError, match="no eval.json in this run folder"):
        read_json(tmp_path)
    (tmp_path / "eval.json").write_text('{"eval/loss": 0.5}')
    assert read_json(tmp_path) == {"eval/loss": 0.5}
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="summary.json: invalid JSON"):
        read_json(tmp_path, "summary.json")
