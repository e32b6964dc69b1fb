"""``rlhfkit preference``: duels by hand, learning from the CLI, exact resume, errors for people."""

from __future__ import annotations

import itertools
import json
import math
import os
import random

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli.main import main
from rlhfkit.data.io import write_records
from rlhfkit.data.records import BinaryFeedback, Comparison, Ranking
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.train.preference import (
    PreferenceConfig,
    build_duels,
    collate_duel_items,
    duel_losses,
    train_preference,
)

GOOD = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
BAD = ["rock", "stone", "brick", "iron", "sand", "glass", "steel", "clay"]


def fruit_files(tmp_path):
    """Fruit beats non-fruit: 44 training pairings and 20 unseen ones in a second file."""
    pairs = list(itertools.product(GOOD, BAD))  # 64 pairings
    random.Random(0).shuffle(pairs)
    rows = [Comparison(prompt="Name a fruit.", chosen=g, rejected=b) for g, b in pairs]
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    write_records(rows[:44], train)
    write_records(rows[44:], held)
    return train, held


def tiny_args(tiny_lm, data, out, *extra):
    return ["preference", "--model", str(tiny_lm), "--data", str(data), "--output-dir",
            str(out), "--precision", "fp32", "--max-length", "64", "--no-progress",
            "--report-to", "none", "--no-gradient-checkpointing", *extra]


def test_duels_from_a_ranking_and_a_tie_by_hand(tokenizer):
    """A ranking of 3 gives C(3,2) = 3 pairs of weight 1/3; a tie gets the label 1/2.

    With raw logits f(A,B) = 2, f(B,A) = -2 (g = 2) for every duel, the BCE of a duel whose
    label is 1 is log(1 + e^-2), of label 0 log(1 + e^2), of a tie their mean; the batch loss
    is the weight-weighted sum, and the accuracy sum counts weight where the sign is right.
    """
    records = [Ranking(prompt="p", responses=["a", "b", "c"], ranks=[0, 1, 2], id="r"),
               Comparison(prompt="q", chosen="x", rejected="y", tie=True)]
    items, counts = build_duels(records, tokenizer, 64, seed=0)
    assert counts == {"pairs": 4, "ties": 1, "rankings": 1, "truncated": 0}
    assert [d.weight for d in items] == pytest.approx([1 / 3] * 3 + [1.0])
    assert items[3].label == 0.5
    # The chosen response sits in slot A for some duels and in slot B for others (seeded).
    assert {d.label for d in items[:3]} == {0.0, 1.0}
    # Both orders hold the same two responses, swapped.
    ab, ba = tokenizer.decode(items[0].ab_ids), tokenizer.decode(items[0].ba_ids)
    assert "Response A:\na" in ab or "Response A:\nb" in ab or "Response A:\nc" in ab
    a_text = ab.split("Response A:\n")[1].split("\n")[0]
    assert f"Response B:\n{a_text}" in ba

    batch = collate_duel_items(items, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 8 and batch["num_units"] == pytest.approx(2.0)
    raw = torch.tensor([2.0] * 4 + [-2.0] * 4)  # rows [:4] A first, [4:] B first
    loss, metrics = duel_losses(raw, batch)
    win, lose = math.log1p(math.exp(-2)), math.log1p(math.exp(2))
    per_duel = [win if d.label == 1.0 else lose if d.label == 0.0 else (win + lose) / 2
                for d in items]
    assert loss.item() == pytest.approx(sum(w * x for w, x in
                                            zip([1 / 3] * 3 + [1.0], per_duel)), abs=1e-5)
    right = sum(1 / 3 for d in items[:3] if d.label == 1.0)  # g > 0 is right where A won
    assert metrics["preference/accuracy"].item() == pytest.approx(right, abs=1e-6)


def test_preference_stage_learns_from_the_command_line(tiny_lm, tmp_path):
    """Held-out accuracy on unseen fruit/non-fruit pairings ends high and the BCE falls."""
    train, held = fruit_files(tmp_path)
    out = tmp_path / "pref"
    code = main(tiny_args(tiny_lm, train, out, "--eval-data", str(held), "--batch-size", "11",
                          "--epochs", "4", "--learning-rate", "1e-2", "--warmup-ratio", "0",
                          "--eval-every", "8"))
    assert code == 0
    rows = read_metrics(out)
    evals = [r for r in rows if "eval/preference_loss" in r]
    result = read_json(out)
    assert evals[0]["step"] == 0 and result["eval/pairs"] == 20 and result["train_pairs"] == 44
    assert result["eval/preference_loss"] < evals[0]["eval/preference_loss"] - 0.1, evals
    assert result["eval/preference_accuracy"] >= 0.9, evals
    assert sum(1 for r in rows if "loss/preference" in r) == 16  # 4 epochs x 44 // 11
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["rlhfkit_model_kind"] == "pairwise_preference"


def test_preference_stage_resume_matches_an_uninterrupted_run(tiny_lm, tmp_path):
    train, _ = fruit_files(tmp_path)
    base = dict(model=str(tiny_lm), data=str(train), max_steps=4, batch_size=8,
                learning_rate=1e-3, warmup_ratio=0.0, progress=False, precision="fp32",
                eval_fraction=0.0, max_length=64, report_to="none",
                gradient_checkpointing=False)
    full = train_preference(PreferenceConfig(output_dir=str(tmp_path / "full"), save_every=2,
                                             **base))
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    os.symlink(tmp_path / "full" / "checkpoints" / "step-0000002",
               part / "checkpoints" / "step-0000002")
    resumed = train_preference(PreferenceConfig(output_dir=str(part), resume=True, **base))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    steps = [row["step"] for row in read_metrics(part)]
    assert steps == [3, 4]  # only the steps after the checkpoint ran again


def test_bad_input_names_file_record_and_field(tiny_lm, tmp_path, capsys):
    """Thumbs are not comparisons; a comparison without 'rejected' names its line and field."""
    thumbs = tmp_path / "thumbs.jsonl"
    write_records([BinaryFeedback(prompt="p", response="r", label=True)], thumbs)
    assert main(tiny_args(tiny_lm, thumbs, tmp_path / "a")) == 1
    err = capsys.readouterr().err
    assert "thumbs.jsonl, line 1, field 'kind'" in err and "'binary'" in err

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"kind": "comparison", "prompt": "p", "chosen": "a",
                                  "rejected": "b"}) + "\n"
                      + json.dumps({"kind": "comparison", "prompt": "p", "chosen": "a"}) + "\n")
    assert main(tiny_args(tiny_lm, broken, tmp_path / "b")) == 1
    err = capsys.readouterr().err
    assert "broken.jsonl" in err and "line 2" in err and "rejected" in err


def test_nash_points_at_the_preference_stage_when_the_model_is_missing(tiny_lm, tmp_path,
                                                                        capsys):
    code = main(["nash", "--model", str(tiny_lm), "--preference-model", str(tmp_path / "none"),
                 "--output-dir", str(tmp_path / "nash"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--preference-model" in err and "rlhfkit preference" in err
