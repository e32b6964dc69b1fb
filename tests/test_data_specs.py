"""``--data`` takes dataset ids and folders through ``datasets.load_dataset``, and splits.

Only local data is used: a folder of data files goes through the same ``load_dataset`` call as
a dataset id; the id itself is checked by watching that call, never by reaching a hub.
"""

from __future__ import annotations

import json

import pytest

from rlhfkit.data.io import read_records
from rlhfkit.data.records import Comparison, RecordError


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
    result = json.loads((out / "eval.json").read_text())
    assert result["train_pairs"] == 8 and result["eval/pairs"] == 3
