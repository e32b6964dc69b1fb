"""``--data`` takes dataset ids and folders through ``datasets.load_dataset``, and splits.

Only local data is used: a folder of data files goes through the same ``load_dataset`` call as
a dataset id; the id itself is checked by watching that call, never by reaching a hub.
"""

from __future__ import annotations

import json

import pytest

from rlhfkit.data.io import read_records
from rlhfkit.data.records import Comparison, RecordError
from rlhfkit.evaluate.runs import read_json


def _pairs(n: int, tag: str) -> list[dict]:
    return [{"prompt": f"{tag} prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(n)]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


@pytest.fixture
def data_folder(tmp_path):
    """A folder of data files, one per split, as datasets names them (dev = validation)."""
    folder = tmp_path / "prefs"
    folder.mkdir()
    for split, n in (("train", 8), ("dev", 4), ("test", 4)):
        rows = _pairs(n, split)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_folder_of_data_files_reads_through_load_dataset(data_folder, hf_cache):
    train = read_records(data_folder)  # several splits: train by default
    assert train == [Comparison(**row) for row in _pairs(8, "train")]
    assert [r.prompt for r in read_records(data_folder, split="test")] == \
        [f"test prompt {i}" for i in range(4)]
    assert len(read_records(data_folder, split="validation")) == 4
    with pytest.raises(RecordError, match="load_dataset could not load it.*Unknown split"):
        read_records(data_folder, split="dev2")
    assert hf_cache.exists()  # the real datasets.load_dataset ran (and cached here)


def test_bad_row_in_a_loaded_split_names_the_split_and_row(tmp_path, hf_cache):
    folder = tmp_path / "bad"
    folder.mkdir()
    rows = [*_pairs(2, "train"), {"prompt": "p", "chosen": "same", "rejected": "same"}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError) as info:
        read_records(folder)
    assert str(info.value).startswith(
        f"{folder}, row 2 (0-based row of split 'train'), field 'rejected': expected")


def test_dataset_id_goes_to_load_dataset_with_the_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list(_pairs(3, "hub"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = read_records("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")]
    assert len(records) == 3
    read_records("hf:trl-lib/ultrafeedback_binarized")
    assert calls[-1] == ("trl-lib/ultrafeedback_binarized", None)
    # A missing file with a records extension is a missing file, not a dataset id.
    with pytest.raises(FileNotFoundError):
        read_records("prefs.jsonl")


def test_dataset_dict_with_dev_and_test_splits(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({
        "dev": datasets.Dataset.from_list(_pairs(3, "dev")),
        "test": datasets.Dataset.from_list(_pairs(2, "test")),
    }).save_to_disk(str(folder))
    with pytest.raises(RecordError, match="no split 'train'; the splits are dev, test; choose "
                                          "one with --split"):
        read_records(folder)
    assert len(read_records(folder, split="dev")) == 3


def test_rm_trains_on_split_and_evaluates_on_eval_split(tiny_lm, tmp_path):
    """`rlhfkit rm --data FOLDER --split dev --eval-split test` (the folder has no train)."""
    import datasets

    from rlhfkit.cli import main

    folder = tmp_path / "dd"
    datasets.DatasetDict({
        "dev": datasets.Dataset.from_list(_pairs(8, "dev")),
        "test": datasets.Dataset.from_list(_pairs(3, "test")),
    }).save_to_disk(str(folder))
    out = tmp_path / "rm"
    rc = main(["rm", "--model", str(tiny_lm), "--data", str(folder), "--split", "dev",
               "--eval-split", "test", "--output-dir", str(out), "--max-steps", "2",
               "--batch-size", "2", "--precision", "fp32", "--no-progress", "--report-to", "none"])
    assert rc == 0
    result = read_json(out)
    assert result["train_pairs"] == 8 and result["eval/pairs"] == 3


def test_no_progress_silences_transformers_and_datasets_bars(tiny_lm, data_folder, hf_cache,
                                                             tmp_path, capsys):
    """`--no-progress` leaves no bar on stderr: not rlhfkit's, not transformers' ("Loading
    weights", "Writing model shards"), not datasets' ("Generating train split"). The same run
    with bars on shows them (so the check can see a bar when there is one)."""
    import datasets
    from transformers.utils import logging as hf_logging

    from rlhfkit.cli import main

    def run(*flags):
        hf_logging.enable_progress_bar()  # whatever an earlier test left behind
        datasets.enable_progress_bars()
        capsys.readouterr()
        out = tmp_path / flags[0].lstrip("-")
        rc = main(["sft", "--model", str(tiny_lm), "--data", str(data_folder), "--output-dir",
                   str(out), "--max-steps", "1", "--batch-size", "2", "--eval-fraction", "0",
                   "--precision", "fp32", "--report-to", "none", *flags])
        assert rc == 0
        return capsys.readouterr().err

    data_folder.joinpath("test.jsonl").unlink()  # prompts and demonstrations below
    data_folder.joinpath("dev.jsonl").unlink()
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)]
    data_folder.joinpath("train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    noisy = run("--progress")
    assert "Writing model shards" in noisy and "Generating train split" in noisy, noisy
    quiet = run("--no-progress")
    for bar in ("Loading weights", "Writing model shards", "Generating train split", "it/s]"):
        assert bar not in quiet, quiet
    hf_logging.enable_progress_bar()
    datasets.enable_progress_bars()
