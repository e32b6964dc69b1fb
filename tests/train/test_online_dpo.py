"""Online DPO as an entry of the one RL loop: pairs by hand, labelers, learning on a tiny model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from good_bad import SYSTEM, good_share, rl_common, rl_metrics
from rlhfkit.cli.main import main
from rlhfkit.data.io import read_records
from rlhfkit.losses import best_worst_signs, dpo_loss
from rlhfkit.models.reward import RewardModel
from rlhfkit.train.algorithms import ALGORITHMS, AdvantageInputs, Update, get_algorithm
from rlhfkit.train.estimators import best_worst_advantages, pairwise_objective
from rlhfkit.train.online_dpo import distinct_responses, same_text_same_score, scores_by_text

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The pair and the loss, by hand
# ---------------------------------------------------------------------------------------------


def test_best_worst_signs_by_hand():
    scores = torch.tensor([[1.0, 3.0, 2.0],   # best 1, worst 0
                           [2.0, 2.0, 2.0],   # a tie: no pair
                           [5.0, 1.0, 1.0],   # the first of two equal worst
                           [0.0, 4.0, 4.0]])  # the first of two equal best
    assert best_worst_signs(scores).tolist() == [[-1, 1, 0], [0, 0, 0], [1, -1, 0], [-1, 1, 0]]


def test_the_estimator_marks_the_pair_s_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]]).bool()
    batch = AdvantageInputs(rewards=torch.zeros(4, 3), scores=torch.tensor([0.2, 0.7, 0.5, 0.5]),
                            response_mask=mask, values=None, group_size=2, kl_coef=0.0, cfg=None)
    adv = best_worst_advantages(batch).advantages
    assert adv.tolist() == [[-1, -1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]


def update_of(logprobs, ref, old=None, advantages=None, group=3, **cfg):
    mask = torch.ones_like(logprobs, dtype=torch.bool)
    options = SimpleNamespace(**{"loss": "dpo", "beta": 0.1, "label_smoothing": 0.0,
                                 "unlikelihood_alpha": 1.0, "ref_policy": "sft", **cfg})
    return Update(logprobs=logprobs, old_logprobs=old if old is not None else ref,
                  ref_logprobs=ref, advantages=advantages, mask=mask, on_policy=True,
                  kl_coef=0.0, normalizer=1.0, cfg=options, group_size=group)


def test_the_pairwise_loss_is_dpo_on_best_against_worst_by_hand():
    """One group of 3 (2 tokens each): the chosen sums to -1, the rejected to -3 (the middle
    one plays no part); the reference gives both -2. h = 0.1 * ((-1 + 2) - (-3 + 2)) = 0.2 and
    the loss is -log sigmoid(0.2) = 0.59814. A second group has no pair and adds nothing."""
    logprobs = torch.tensor([[-0.5, -0.5], [-2.0, -1.0], [-1.5, -1.5],
                             [-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    ref = torch.full((6, 2), -1.0)
    signs = torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0, 0.0])[:, None].expand(6, 2)
    loss, metrics = pairwise_objective(update_of(logprobs, ref, advantages=signs))
    by_hand = -math.log(1 / (1 + math.exp(-0.2)))
    assert float(loss.detach()) == pytest.approx(by_hand, abs=1e-6) == pytest.approx(0.59814, abs=1e-5)
    assert float(metrics["rewards/margins"]) == pytest.approx(0.2, abs=1e-6)
    assert float(metrics["rewards/accuracy"]) == 1.0
    loss.backward()  # d loss / d h = -(1 - sigmoid(0.2)); dh/dlogp = +-beta per token
    g = (1 - 1 / (1 + math.exp(-0.2))) * 0.1
    assert logprobs.grad[0].tolist() == pytest.approx([-g, -g], abs=1e-7)
    assert logprobs.grad[2].tolist() == pytest.approx([g, g], abs=1e-7)
    assert logprobs.grad[1].abs().sum() == 0 and logprobs.grad[3:].abs().sum() == 0


def test_ipo_and_the_previous_reference_reuse_the_offline_losses():
    logprobs = torch.tensor([[-0.5, -0.5], [-1.5, -1.5]])
    ref = torch.full((2, 2), -1.0)
    signs = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    ipo, _ = pairwise_objective(update_of(logprobs, ref, advantages=signs, group=2, loss="ipo"))
    # per-token log-ratios +0.5 and -0.5: h = 1, target 1 / (2 * 0.1) = 5, loss (1 - 5)^2
    assert float(ipo) == pytest.approx(16.0)
    old = torch.tensor([[-0.5, -0.5], [-2.0, -2.0]])  # the policy that sampled
    dpo, _ = pairwise_objective(update_of(logprobs, ref, old=old, advantages=signs, group=2,
                                          ref_policy="previous"))
    expected, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.0]),
                           torch.tensor([-4.0]), 0.1)
    assert float(dpo) == pytest.approx(float(expected))


def test_copies_of_a_response_share_its_score_and_empty_ones_go_last():
    texts = ["a", " a", "b", "", "c", "c"]
    scores = torch.tensor([1.0, 5.0, 2.0, 9.0, 3.0, 3.0])
    assert same_text_same_score(scores, texts, 3).tolist() == [1.0, 1.0, 2.0, 9.0, 3.0, 3.0]
    assert scores_by_text(["x", "", " y"], ["x", "y"], [0.5, 2.0]) == [0.5, -0.5, 2.0]
    assert scores_by_text(["x", "x"], [], []) == [0.0, 0.0]
    assert distinct_responses(["a", " a", "", "b", "a "]) == ["a", "b"]


def test_online_dpo_is_an_entry_with_a_group_loss():
    algo = get_algorithm("online-dpo")
    assert algo is ALGORITHMS["online-dpo"] and algo.group_loss and not algo.kl_in_reward
    assert algo.loss_average(None) == "group" and algo.min_samples == 2


# ---------------------------------------------------------------------------------------------
# Options: what is refused, in one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["--rounds", "2"], "--rounds is no longer an option: online DPO runs in the one RL loop"),
    (["--prompts-per-round", "8"], "use --batch-size"),
    (["--samples-per-prompt", "3"], "use --num-samples"),
    (["--loss", "kto"], "--loss kto is not an online-dpo loss"),
    (["--labeler", "oracle"], "--labeler must be gold, rm:FOLDER, judge:MODEL or reward:SPEC"),
    (["--num-samples", "10"], "--num-samples must be <= 9"),
    (["--num-samples", "4", "--mini-batch-size", "6"], "must be a multiple of --num-samples"),
])
def test_a_bad_or_retired_option_is_one_line_and_exit_code_2(argv, says, capsys, tmp_path):
    code = main(["online-dpo", *argv, "--model", str(tmp_path / "m"),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and says in err, err
    assert not (tmp_path / "out").exists()


def test_a_yaml_config_of_the_rounds_loop_names_the_replacement(capsys, tmp_path):
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"rounds": 3, "prompts_per_round": 8}))
    code = main(["online-dpo", "--config", str(tmp_path / "old.yaml"), "--model",
                 str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "rounds is no longer an option" in err
    assert "--max-steps" in err


def test_other_algorithms_refuse_online_dpo_s_options(capsys, tmp_path):
    code = main(["rl", "--algo", "grpo", "--beta", "0.5", "--model", str(tmp_path / "m")])
    assert code == 2 and "--beta is not an option of grpo (it is read by online-dpo)" in \
        capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# On a tiny model
# ---------------------------------------------------------------------------------------------


def online(policy, out, **kw):
    return rl_common(policy, out, **{"batch_size": 4, "num_samples": 4, "max_steps": 6, **kw})


def test_online_dpo_learns_on_the_one_loop(good_bad_policy, tmp_path):
    """Labelled by the share of "good", 6 steps of 4 prompts x 4: the held-out reward rises
    from about 0.5 by more than 0.25, every step has pairs, the implicit-reward margin on them
    grows, and every group is in labels.jsonl."""
    from rlhfkit.train.trainer import rl_config, train_rl

    out = tmp_path / "online"
    train_rl(rl_config("online-dpo", **online(good_bad_policy, out)), reward_fn=good_share)
    train, evals = rl_metrics(out)
    first, final = train[0]["reward/score"], evals[-1]["eval/reward"]
    assert final > first + 0.25, (first, final)
    assert all(r["label/pairs"] > 0 for r in train)
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # the policy is the ref
    assert train[-1]["rewards/margins"] > 0.02
    assert evals[-1]["eval/kl"] < 10
    labels = read_records(out / "labels.jsonl")
    assert {x.meta["step"] for x in labels} == set(range(1, 7))
    assert all(x.kind == "ranking" and x.annotator == "reward_fn" for x in labels)


def test_the_gold_labeler_ranks_and_its_labels_are_kept(tiny_lm, tmp_path):
    out = tmp_path / "gold"
    assert main(["online-dpo", "--model", str(tiny_lm), "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--num-samples", "3",
                 "--max-new-tokens", "8", "--eval-prompts", "4", "--learning-rate", "2e-3",
                 "--precision", "fp32", "--no-progress", "--generation-backend", "hf",
                 "--system-prompt", SYSTEM]) == 0
    labels = read_records(out / "labels.jsonl")
    assert labels and all(x.source == "simulated" and x.kind == "ranking" for x in labels)
    assert {x.meta["step"] for x in labels} == {1, 2}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/gold" in r]
    assert evals and "eval/reward" not in evals[-1]
    assert all(0 < r["label/pairs"] <= 1 for r in rows if "label/pairs" in r)


def test_the_ai_judge_labels_carry_source_ai(tiny_lm, tmp_path):
    out = tmp_path / "judge"
    assert main(["online-dpo", "--model", str(tiny_lm), "--output-dir", str(out),
                 "--max-steps", "1", "--batch-size", "2", "--num-samples", "3",
                 "--max-new-tokens", "6", "--eval-prompts", "0", "--precision", "fp32",
                 "--no-progress", "--generation-backend", "hf", "--labeler", f"judge:{tiny_lm}",
                 "--judge-criteria", "More positive is better."]) == 0
    labels = read_records(out / "labels.jsonl")
    assert labels and all(x.source == "ai" and x.annotator.startswith("judge:") for x in labels)


def test_the_reward_model_labeler_scores_with_the_loop_s_reward_source(tiny_lm, tokenizer,
                                                                       tmp_path):
    """rm:FOLDER is the reward model as the loop's reward source: unnormalised, unclipped,
    every distinct response of a group scored, the scores in the labels."""
    rm = RewardModel.from_pretrained(str(tiny_lm), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        rm.seq_model.score.weight.normal_(0, 1.0)
    rm.save(tmp_path / "rm", tokenizer)
    out = tmp_path / "rm-run"
    assert main(["online-dpo", "--model", str(tiny_lm), "--output-dir", str(out),
                 "--labeler", f"rm:{tmp_path / 'rm'}", "--max-steps", "1", "--batch-size", "2",
                 "--num-samples", "3", "--max-new-tokens", "6", "--eval-prompts", "0",
                 "--precision", "fp32", "--no-progress", "--generation-backend", "hf"]) == 0
    labels = read_records(out / "labels.jsonl")
    assert labels and all(x.annotator == f"rm:{tmp_path / 'rm'}" for x in labels)
    assert all(len(set(x.scores)) == len(x.scores) for x in labels)  # a random head separates
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["label/pairs"] == 1.0
