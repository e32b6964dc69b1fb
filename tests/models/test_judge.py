"""The AI judge: both orders cancel position bias, answer-token scoring, records with source=ai."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data.chat import prompt_text
from rlhfkit.models.judge import AIJudge, both_orders


def test_both_orders_by_hand():
    """(p_ab + 1 - p_ba) / 2: 0.8 and 0.8 (pure position bias) -> 1/2; 0.9 and 0.3 -> 0.8."""
    p = both_orders(torch.tensor([0.8, 0.9, 0.5]), torch.tensor([0.8, 0.3, 0.5]))
    torch.testing.assert_close(p, torch.tensor([0.5, 0.8, 0.5]))


class RuleJudge(AIJudge):
    """A judge whose 'model' is a rule on the question text: it prefers the first position by
    0.7 vs 0.3, and a response containing 'great' by +-0.2 on top of that."""

    def first_wins(self, questions):
        out = []
        for ids in questions:
            text = self.tokenizer.decode(ids)
            first = text.split("Response 1:")[1].split("Response 2:")[0]
            second = text.split("Response 2:")[1]
            out.append(0.7 + 0.2 * ("great" in first) - 0.2 * ("great" in second.split("Answer")[0]))
        return torch.tensor(out)


def test_position_bias_cancels_and_records_are_ai(tiny_lm, tokenizer):
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    judge = RuleJudge(lm, tokenizer, tie_margin=0.01)
    records = judge.compare_batch(["p", "p"], ["a great film", "plain"], ["plain", "also plain"])
    # Pair 0: a first -> 0.9, b first -> 0.5: (0.9 + 1 - 0.5) / 2 = 0.7 for the 'great' one.
    assert records[0].chosen == "a great film" and not records[0].tie
    assert abs(records[0].meta["p_chosen"] - 0.7) < 1e-6
    # Pair 1: only the position bias (0.7 in both orders) -> exactly 1/2 -> a tie.
    assert records[1].tie and abs(records[1].meta["p_chosen"] - 0.5) < 1e-6
    assert all(r.source == "ai" and r.annotator.startswith("judge:") for r in records)
    ranking = judge.rank_batch(["p"], [["meh", "a great one", "so-so"]])[0]
    assert ranking.source == "ai" and ranking.scores[1] > ranking.scores[0]
    assert ranking.scores[0] == ranking.scores[2]  # the two plain ones tie exactly
    best = [c for c in ranking.to_comparisons() if not c.tie]
    assert best and all(c.chosen == "a great one" for c in best)


def test_answer_probabilities_match_a_plain_forward(tiny_lm, tokenizer):
    """Batched, padded, last-token scoring == full logits of each question alone; and the two
    orders make P(a > b) + P(b > a) = 1 exactly."""
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    judge = AIJudge(lm, tokenizer, criteria="Prefer kind words.", batch_size=3)
    prompts = ["Say something", "Continue: the film", "Hi"]
    a = ["You are lovely.", "was great fun and warm", "hello there, friend"]
    b = ["Go away.", "was dull", "no"]
    p, p_ab, _ = judge.prefer(prompts, a, b)
    for k in range(3):
        ids = judge.question_ids(prompts[k], a[k], b[k])
        with torch.no_grad():
            logits = lm(torch.tensor([ids])).logits[0, -1]
        two = torch.softmax(logits[judge.answer_ids], -1)
        assert abs(float(two[0]) - float(p_ab[k])) < 1e-5
    p_rev, _, _ = judge.prefer(prompts, b, a)
    torch.testing.assert_close(p + p_rev, torch.ones(3), atol=1e-6, rtol=0)
    assert judge.question_ids(prompts[0], a[0], b[0]) != judge.question_ids(prompts[0], b[0], a[0])
    assert prompt_text(tokenizer, "x").endswith("assistant\n")  # the answer starts right here


def test_answers_must_be_single_tokens(tiny_lm, tokenizer):
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    with pytest.raises(ValueError, match="one token"):
        AIJudge(lm, tokenizer, answers=("Response one", "Response two"))
