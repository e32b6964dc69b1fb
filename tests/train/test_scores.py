"""Score (Likert) records train reward models (pairs or regression) and DPO (pairs)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlhfkit.data.io import write_records
from rlhfkit.data.records import ScoreFeedback, score_pairs
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.losses import score_regression_loss
from rlhfkit.tasks import get_task


def test_score_pairs_by_hand():
    """Prompt p: a scored 6, b scored 2, c scored 5 and 7 (two annotators: mean 6 = a's).
    Pairs (a,b), (a,c), (b,c), each weight 1/3: a>b margin 4, a=c tie, c>b margin 4.
    Prompt q has one response: no pair, counted as unpaired."""
    records = [ScoreFeedback(prompt="p", response="a", score=6),
               ScoreFeedback(prompt="p", response="b", score=2, source="human"),
               ScoreFeedback(prompt="p", response="c", score=5),
               ScoreFeedback(prompt="p", response="c", score=7),
               ScoreFeedback(prompt="q", response="x", score=3)]
    out = score_pairs(records)
    assert (out.n_ties, out.n_prompts, out.n_unpaired) == (1, 1, 1)
    got = [(c.chosen, c.rejected, c.margin, c.tie, c.weight, c.group) for c in out.pairs]
    assert got == [("a", "b", 4.0, False, 1 / 3, "scores-0"),
                   ("a", "c", 0.0, True, 1 / 3, "scores-0"),
                   ("c", "b", 4.0, False, 1 / 3, "scores-0")]
    assert out.pairs[0].meta == {"scores": [6.0, 2.0]}
    with pytest.raises(TypeError, match="record 0 is a str"):
        score_pairs(["nope"])


def test_score_regression_loss_by_hand():
    """(r - t)^2: r = (1, -1, 0.5), t = (0, -1, 2) -> (1, 0, 2.25); |r - t| = (1, 0, 1.5)."""
    loss, diag = score_regression_loss(torch.tensor([1.0, -1.0, 0.5]),
                                       torch.tensor([0.0, -1.0, 2.0]))
    assert loss.tolist() == [1.0, 0.0, 2.25] and diag["abs_error"].tolist() == [1.0, 0.0, 1.5]


def _as_scores(rankings):
    """Each response of a K=3 ranking scored on a 1..7 Likert scale: rank 0 -> 7, 1 -> 4, 2 -> 1."""
    return [ScoreFeedback(prompt=r.prompt, response=resp, score=7 - 3 * rank, source="simulated")
            for r in rankings for resp, rank in zip(r.responses, r.ranks)]


@pytest.fixture(scope="module")
def score_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    train = get_task("reviews", n_demos=0, n_ranked=48, k=3).rankings()
    held = get_task("reviews", n_demos=32, n_ranked=16, k=3).rankings()
    write_records(_as_scores(train), root / "train.jsonl")
    write_records(_as_scores(held), root / "eval.jsonl")
    return root


def _rm(tiny_lm, score_files, tmp_path, **kw):
    from rlhfkit.train.rm import RMConfig, train_rm

    opts = dict(model=str(tiny_lm), data=str(score_files / "train.jsonl"),
                eval_data=str(score_files / "eval.jsonl"), output_dir=str(tmp_path / "rm"),
                epochs=3, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, eval_every=12,
                progress=False, precision="fp32", report_to="none")
    cfg = RMConfig(**{**opts, **kw})
    out = train_rm(cfg)
    lines = read_metrics(tmp_path / "rm")
    evals = [x for x in lines if any(k.startswith("eval/") for k in x)]
    return out, evals, read_json(tmp_path / "rm")


def test_rm_learns_from_scores_as_pairs(tiny_lm, score_files, tmp_path):
    """48 prompts x 3 scored responses -> 144 pairs of weight 1/3; held-out pair accuracy
    starts near chance and ends well above it."""
    _, evals, result = _rm(tiny_lm, score_files, tmp_path)
    assert result["train_score_pairs"] == 144 and result["eval/pairs"] == 48
    first, last = evals[0]["eval/rm_accuracy"], result["eval/rm_accuracy"]
    assert first < 0.7 and last >= 0.8, (first, last)


def test_rm_learns_from_scores_by_regression(tiny_lm, score_files, tmp_path):
    """Squared error to the standardised score: the held-out correlation rises (0.12 -> 0.66
    when measured), the squared error falls (1.02 -> 0.60), and the saved config maps rewards
    back to the Likert scale. Regression learns slower than pairs here (4 epochs at 2e-3)."""
    from transformers import AutoConfig

    out, evals, result = _rm(tiny_lm, score_files, tmp_path, score_mode="regression",
                             epochs=4, learning_rate=2e-3)
    assert result["train_score_targets"] == 144 and result["train_score_pairs"] == 0
    first, last = evals[0], evals[-1]
    assert last["eval/score_pearson"] > max(0.55, first["eval/score_pearson"] + 0.3), (first, last)
    assert last["eval/score_mse"] < first["eval/score_mse"] - 0.3, (first, last)
    assert last["eval/rm_accuracy"] >= 0.75  # the held-out score pairs, for comparison
    config = AutoConfig.from_pretrained(out)
    from rlhfkit.data.io import read_records

    scores = [r.score for r in read_records(score_files / "train.jsonl")]
    mean = sum(scores) / len(scores)
    assert config.rlhfkit_score_mean == pytest.approx(mean)
    assert config.rlhfkit_score_std == pytest.approx(
        math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)))


def test_rm_rejects_an_unknown_score_mode(tiny_lm, score_files, tmp_path):
    from rlhfkit.config import ConfigError
    from rlhfkit.train.rm import RMConfig, train_rm

    with pytest.raises(ConfigError, match="--score-mode must be one of pairs, regression"):
        train_rm(RMConfig(model=str(tiny_lm), data=str(score_files / "train.jsonl"),
                          output_dir=str(tmp_path / "x"), score_mode="mse"))


def test_dpo_learns_from_scores_as_pairs(tiny_lm, score_files, tmp_path):
    """DPO on score records: the implicit-reward margin and the held-out preference accuracy
    rise over 12 steps (at step 0 the policy is the reference: margin 0)."""
    from rlhfkit.train.dpo import DPOConfig, train_dpo

    cfg = DPOConfig(model=str(tiny_lm), data=str(score_files / "train.jsonl"),
                    eval_data=str(score_files / "eval.jsonl"), output_dir=str(tmp_path / "dpo"),
                    max_steps=12, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0,
                    eval_every=12, progress=False, precision="fp32", report_to="none")
    train_dpo(cfg)
    lines = read_metrics(tmp_path / "dpo")
    evals = [x for x in lines if "eval/rewards/accuracy" in x]
    first, last = evals[0], evals[-1]
    assert abs(first["eval/rewards/margins"]) < 1e-3
    assert last["eval/rewards/margins"] > first["eval/rewards/margins"] + 0.05, (first, last)
    assert last["eval/rewards/accuracy"] > max(0.55, first["eval/rewards/accuracy"]), (first, last)
    result = read_json(tmp_path / "dpo")
    assert result["train_score_pairs"] == 144


def test_pairs_equal_the_ranking_they_came_from():
    """Scores 7/4/1 from ranks 0/1/2 give the ranking's own pairs (same order, weight, ties)."""
    ranking = get_task("reviews", n_demos=0, n_ranked=1, k=3).rankings()[0]
    from_ranking = ranking.to_comparisons()
    from_scores = score_pairs(_as_scores([ranking])).pairs
    key = lambda c: (c.chosen, c.rejected, c.weight, c.tie)  # noqa: E731
    assert sorted(map(key, from_scores)) == sorted(map(key, from_ranking))
    assert len(list(itertools.combinations(range(3), 2))) == len(from_scores)
