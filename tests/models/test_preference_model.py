"""The pairwise preference model on a tiny random Llama: symmetry, and it learns simple data."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from rlhfkit.data.records import Comparison
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.models.preference import (
    PreferenceFitConfig,
    PreferenceModel,
    duels_from_comparisons,
    evaluate_preferences,
    fit_preference_model,
)

GOOD = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
BAD = ["rock", "stone", "brick", "iron", "sand", "glass", "steel", "clay"]


def _comparisons(pairs: list[tuple[str, str]]) -> list[Comparison]:
    return [Comparison(prompt="Name a fruit.", chosen=g, rejected=b) for g, b in pairs]


@pytest.fixture(scope="module")
def model(tiny_lm, tokenizer) -> PreferenceModel:
    torch.manual_seed(0)
    return PreferenceModel.from_pretrained(str(tiny_lm), pad_token_id=tokenizer.pad_token_id)


def test_preference_is_antisymmetric(model, tokenizer):
    """P(A > B) + P(B > A) = 1 and P(A > A) = 1/2, even for a random untrained model."""
    p_ab = model.prob(tokenizer, "Hi", "hello there", "go away")
    p_ba = model.prob(tokenizer, "Hi", "go away", "hello there")
    assert p_ab + p_ba == pytest.approx(1.0, abs=1e-5)
    assert model.prob(tokenizer, "Hi", "same", "same") == pytest.approx(0.5, abs=1e-6)


def test_preference_model_learns(model, tokenizer):
    """Fruit beats non-fruit: on unseen fruit/non-fruit pairings the BCE falls and the
    accuracy ends high (a random model may already guess the sign right by luck, so the
    held-out loss is the robust signal)."""
    pairs = list(itertools.product(GOOD, BAD))  # 64 pairings
    random.Random(0).shuffle(pairs)
    train = duels_from_comparisons(_comparisons(pairs[:44]), seed=0)
    held_out = duels_from_comparisons(_comparisons(pairs[44:]), seed=1)
    before = evaluate_preferences(model, tokenizer, held_out, max_length=64)
    losses = fit_preference_model(model, tokenizer, train, PreferenceFitConfig(
        learning_rate=1e-2, epochs=4, batch_size=11, max_length=64))
    after = evaluate_preferences(model, tokenizer, held_out, max_length=64)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert after["loss"] < before["loss"] - 0.1, (before, after)
    assert after["accuracy"] >= 0.9, (before, after)


def test_nash_from_the_command_line(model, tokenizer, tiny_lm, tmp_path):
    """``rlhfkit nash`` runs end to end with a saved preference model (one tiny step)."""

    from rlhfkit.cli.main import main

    model.save(tmp_path / "pref", tokenizer)
    code = main(["nash", "--model", str(tiny_lm), "--preference-model", str(tmp_path / "pref"),
                 "--output-dir", str(tmp_path / "nash"), "--max-steps", "1", "--batch-size", "2",
                 "--max-new-tokens", "3", "--precision", "fp32", "--eval-prompts", "0",
                 "--no-progress", "--report-to", "none"])
    assert code == 0
    assert 0.0 <= read_metrics(tmp_path / "nash")[-1]["reward/preference"] <= 1.0
    assert (tmp_path / "nash" / "model").is_dir()
    assert "Nash learning from human feedback" in (tmp_path / "nash" / "report.html").read_text()
