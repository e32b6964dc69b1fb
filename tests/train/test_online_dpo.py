"""Online / iterative DPO on a tiny model: rounds, labelers, references."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data.io import read_records
from rlhfkit.evaluate.runs import read_rounds
from rlhfkit.models.loading import apply_lora, load_tokenizer
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.models.reward import RewardModel
from rlhfkit.train.online_dpo import (
    OnlineDPOConfig,
    RewardModelLabeler,
    distinct_responses,
    round_reference,
    train_online_dpo,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def config(tiny_lm, tmp_path, **overrides) -> OnlineDPOConfig:
    opts = dict(model=str(tiny_lm), output_dir=str(tmp_path / "online"), rounds=2,
                prompts_per_round=8, samples_per_prompt=3, max_new_tokens=8, eval_prompts=4,
                batch_size=4, max_steps=4, learning_rate=2e-3, warmup_ratio=0.0,
                progress=False, precision="fp32")
    opts.update(overrides)
    return OnlineDPOConfig(**opts)


def rounds_of(tmp_path) -> list[dict]:
    return read_rounds(tmp_path / "online")


def test_two_rounds_with_the_gold_labeler(tiny_lm, tmp_path):
    """Each round samples, labels with the simulated labeler, and fits its own new pairs:
    the implicit reward margin on them ends positive, and the policy's weights move."""
    cfg = config(tiny_lm, tmp_path)
    out = train_online_dpo(cfg)
    rounds = rounds_of(tmp_path)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(isinstance(r["eval/gold_reward"], float) for r in rounds)
    for r in rounds[1:]:
        assert r["pairs"] > 0 and r["steps"] == 4
        assert r["rewards/margins"] > 0 and r["rewards/accuracy"] > 0.5, r
    labels = read_records(tmp_path / "online" / "round-1" / "labels.jsonl")
    assert labels and all(x.source == "simulated" and x.kind == "ranking" for x in labels)
    start = AutoModelForCausalLM.from_pretrained(tiny_lm).state_dict()
    end = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(start[k], end[k]) for k in start)


def test_ai_judge_labels_carry_source_ai(tiny_lm, tmp_path):
    cfg = config(tiny_lm, tmp_path, rounds=1, max_steps=1, eval_prompts=0,
                 labeler=f"judge:{tiny_lm}", judge_criteria="More positive is better.")
    train_online_dpo(cfg)
    labels = read_records(tmp_path / "online" / "round-1" / "labels.jsonl")
    assert labels and all(x.source == "ai" and x.annotator.startswith("judge:") for x in labels)
    assert rounds_of(tmp_path)[1]["pairs"] > 0


def test_reward_model_labeler_ranks_by_reward(tiny_lm, tokenizer, tmp_path):
    rm = RewardModel.from_pretrained(str(tiny_lm), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        rm.seq_model.score.weight.normal_(0, 1.0)
    rm.save(tmp_path / "rm", tokenizer)
    labeler = RewardModelLabeler(str(tmp_path / "rm"), system_prompt="Continue.")
    responses = ["it was lovely", "it was awful", "meh"]
    ranking = labeler.rank_batch(["The film"], [responses])[0]
    assert ranking.scores == pytest.approx(labeler.scores(["The film"] * 3, responses))
    assert len(set(ranking.scores)) == 3  # a random head separates them
    assert ranking.annotator == f"rm:{tmp_path / 'rm'}"


def test_round_reference_previous_vs_sft(tiny_lm, tmp_path):
    tok = load_tokenizer(str(tiny_lm))
    ids = torch.tensor([tok("a b c d", add_special_tokens=False)["input_ids"]])
    target = torch.ones_like(ids, dtype=torch.bool)

    def logits(model):
        with torch.no_grad():
            return model(ids, None, target)

    lora = SelectiveLM(apply_lora(AutoModelForCausalLM.from_pretrained(tiny_lm), r=4, alpha=8))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)  # the round-1 policy differs from its base
    base = SelectiveLM(AutoModelForCausalLM.from_pretrained(tiny_lm))
    previous, ctx = round_reference(config(tiny_lm, tmp_path, lora=True), lora, None)
    with ctx:
        assert previous is lora and not torch.allclose(logits(previous), logits(base))
    sft, ctx = round_reference(config(tiny_lm, tmp_path, lora=True, ref_policy="sft"), lora, None)
    with ctx:
        torch.testing.assert_close(logits(sft), logits(base), rtol=1e-5, atol=1e-5)
    frozen = SelectiveLM(AutoModelForCausalLM.from_pretrained(tiny_lm))
    fixed, _ = round_reference(config(tiny_lm, tmp_path, ref_policy="sft"), base, frozen)
    assert fixed is frozen


def test_distinct_responses():
    assert distinct_responses(["a", " a", "", "b", "a "]) == ["a", "b"]
