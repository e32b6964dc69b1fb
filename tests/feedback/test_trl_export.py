"""``rlhfkit label export --format trl``: datasets TRL 1.16's trainers read as they are.

Each test labels a project in the store, exports it with the CLI, loads the file with
``datasets`` and runs two optimizer steps of the TRL trainer on a tiny random model (the
default model's tokenizer). The records export would not do: ``RewardTrainer`` reads the
all-null ``margin`` column, ``SFTTrainer`` and ``KTOTrainer`` look for ``completion``, and a
tie would be trained as a strict preference.
"""

from __future__ import annotations

import json
import math

import pytest

from rlhfkit.cli import main
from rlhfkit.feedback.store import Store

TRAIN = dict(max_steps=2, per_device_train_batch_size=2, report_to="none", save_strategy="no",
             use_cpu=True, logging_steps=1, bf16=False, max_length=64)


@pytest.fixture
def db(tmp_path):
    """A store with labelled pairwise (one tie), rank, demonstration and binary projects."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    s = Store(url)
    ann = s.create_user("ann", "password-123")
    topics = ["tea", "rain", "maps", "owls", "salt", "kites"]
    s.create_project("pairs", ["pairwise"], items=[
        {"prompt": f"Tell me about {t}.", "responses": [f"{t}.", f"Something useful about {t}."]}
        for t in topics])
    s.create_project("chat", ["pairwise"], items=[
        {"prompt": [{"role": "user", "content": f"Hi, {t}?"}], "responses": [f"{t}!", f"No {t}."]}
        for t in topics[:4]])
    s.create_project("ranks", ["rank"], items=[
        {"prompt": f"Describe {t}.", "responses": [f"{t}", f"{t} are nice", f"{t} are nice, see"]}
        for t in topics[:2]])
    s.create_project("demos", ["demonstration"], items=[{"prompt": f"Explain {t}."} for t in topics[:4]])
    s.create_project("mixed", ["binary", "likert"], items=[{"prompt": "Q?", "responses": ["A."]}])
    s.create_project("thumbs", ["binary"], items=[
        {"prompt": f"About {t}?", "responses": [f"All about {t}."]} for t in topics[:4]])
    def side(t, starts):  # the display side of the response that starts so
        return "left" if t.responses[0].startswith(starts) else "right"

    answers = {
        "pairs": lambda t, n: {"pairwise": {"choice": "tie" if n == 0 else side(t, "Something")}},
        "chat": lambda t, n: {"pairwise": {"choice": side(t, "No ")}},
        # the shortest response best, the other two tied for second
        "ranks": lambda t, n: {"rank": {"ranks": [1 if " " not in r else 2 for r in t.responses]}},
        "demos": lambda t, n: {"demonstration": {"text": f"Here is how it works, part {n}."}},
        "thumbs": lambda t, n: {"binary": {"value": "up" if n % 2 else "down"}},
        "mixed": lambda t, n: {"binary": {"value": "up"}, "likert": {"score": 6}},
    }
    for project, answer in answers.items():
        n = 0
        while (t := s.next_task(ann, project)) is not None:
            s.submit(ann, project, t.item_id, answer(t, n), t.submission_key)
            n += 1
    s.close()
    return url


def export(db, project, path, *extra):
    assert main(["label", "export", "--db", db, "--project", project, "--out", str(path),
                 "--format", "trl", *extra]) == 0
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


def run(trainer_cls, config_cls, tiny_lm, tokenizer, data, tmp_path, **extra):
    trainer = trainer_cls(model=str(tiny_lm), args=config_cls(output_dir=str(tmp_path / "out"), **TRAIN,
                                                             **extra),
                          train_dataset=data, processing_class=tokenizer)
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    return trainer


def test_dpo_and_reward_trainers_read_the_preference_export(db, tiny_lm, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    data = export(db, "pairs", tmp_path / "pairs.jsonl")
    assert data.column_names == ["prompt", "chosen", "rejected"]  # no margin, no tie column
    assert len(data) == 5  # six labels, the tie left out
    assert all(c.startswith("Something useful") for c in data["chosen"])
    run(DPOTrainer, DPOConfig, tiny_lm, tokenizer, data, tmp_path)
    run(RewardTrainer, RewardConfig, tiny_lm, tokenizer, data, tmp_path)
    # a ranking of 3 with a tie for second: 2 strict pairs of its 3
    ranks = export(db, "ranks", tmp_path / "ranks.jsonl")
    assert len(ranks) == 2 * 2 and set(ranks["chosen"]) == {"tea", "rain"}


def test_conversational_prompts_stay_conversational(db, tiny_lm, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    data = export(db, "chat", tmp_path / "chat.jsonl")
    row = data[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi, tea?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "No tea."}]
    run(DPOTrainer, DPOConfig, tiny_lm, tokenizer, data, tmp_path)


def test_sft_trainer_reads_the_demonstration_export(db, tiny_lm, tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    data = export(db, "demos", tmp_path / "demos.jsonl")
    assert data.column_names == ["prompt", "completion"] and len(data) == 4
    run(SFTTrainer, SFTConfig, tiny_lm, tokenizer, data, tmp_path)


def test_kto_trainer_reads_the_binary_export(db, tiny_lm, tokenizer, tmp_path):
    from trl import KTOConfig, KTOTrainer

    data = export(db, "thumbs", tmp_path / "thumbs.jsonl")
    assert data.column_names == ["prompt", "completion", "label"]
    assert sorted(data["label"]) == [False, False, True, True]
    run(KTOTrainer, KTOConfig, tiny_lm, tokenizer, data, tmp_path)


def test_trl_export_other_formats_and_refusals(db, tmp_path, capsys):
    import datasets

    assert main(["label", "export", "--db", db, "--project", "pairs", "--out", str(tmp_path / "hf"),
                 "--format", "trl"]) == 0
    assert datasets.load_from_disk(str(tmp_path / "hf")).column_names == ["prompt", "chosen", "rejected"]
    assert main(["label", "export", "--db", db, "--project", "pairs",
                 "--out", str(tmp_path / "p.parquet"), "--format", "trl"]) == 0
    assert len(datasets.load_dataset("parquet", data_files=str(tmp_path / "p.parquet"), split="train")) == 5
    assert main(["label", "export", "--db", db, "--project", "chat", "--out", str(tmp_path / "c.csv"),
                 "--format", "trl"]) == 1
    assert "chat prompts do not fit in CSV" in capsys.readouterr().err
    assert main(["label", "export", "--db", db, "--project", "mixed", "--out", str(tmp_path / "m.jsonl"),
                 "--format", "trl"]) == 1
    assert "no TRL trainer reads score records" in capsys.readouterr().err
    assert main(["label", "export", "--db", db, "--project", "mixed", "--out", str(tmp_path / "m.jsonl"),
                 "--format", "trl", "--kind", "binary"]) == 0
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"prompt": "Q?", "completion": "A.", "label": True}
    # the records export is still the default, and keeps ties and provenance
    assert main(["label", "export", "--db", db, "--project", "pairs", "--out", str(tmp_path / "r.jsonl")]) == 0
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and sum(r["tie"] for r in recs) == 1 and recs[0]["meta"]["project"] == "pairs"
