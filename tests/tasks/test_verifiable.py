"""Verifiable tasks, their estimators and the RLVR pieces: hand-checked, no model.

The arithmetic and constraints verifiers on chosen answers; pass@k and the majority vote
against values worked out by hand; DAPO's overlong penalty and the groups with signal; the
returns and GAE of a response with holes (a multi-turn episode's environment tokens); dynamic
sampling and rollout concatenation on small fake rollouts.
"""

import math
import random
from itertools import combinations
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.losses import discounted_returns, gae, groups_with_signal, overlong_penalty
from rlhfkit.rewards.shaping import last_token_index, place_rewards, sequence_rewards
from rlhfkit.rewards.sources import RewardTerms
from rlhfkit.rollout import Rollout, concat_rollouts
from rlhfkit.stats import majority_vote, pass_at_k
from rlhfkit.tasks import get_task
from rlhfkit.tasks.arithmetic import Problem, calculate, parse_answer, worked_steps
from rlhfkit.tasks.constraints import Constraint, ConstraintsTask, check_constraint
from rlhfkit.train.rlvr import concat_terms, dynamic_batch, loss_mask, overlong_source

# ---------------------------------------------------------------------------------------
# task:arithmetic
# ---------------------------------------------------------------------------------------


def test_arithmetic_splits_are_disjoint_and_answers_exact():
    task = get_task("arithmetic")
    train, held = task.prompts("train"), task.prompts("eval")
    assert len(train) == 2000 and len(held) == 200
    assert not set(train) & set(held)
    for p in task.problems("eval")[:50]:
        a, b = p.a, p.b
        assert p.answer == {"add": a + b, "sub": a - b, "mul": a * b}[p.op]
        assert 10 <= a <= 99 and (2 <= b <= 9 if p.op == "mul" else 10 <= b <= 99)
        assert p.answer >= 0
    # the clarify variant leaves out one number; the tool variant keeps the questions
    clarify = get_task("arithmetic-clarify")
    p = clarify.problems("eval")[0]
    assert clarify.prompts("eval")[0] == p.vague and str(p.a if p.op != "mul" else p.b) \
        not in p.vague.split()
    assert get_task("arithmetic-tool").prompts("eval") == held


def test_arithmetic_verifier_reads_the_last_answer_line():
    task = get_task("arithmetic")
    prompt = task.prompts("eval")[0]
    ref = task.reference_of(prompt)
    assert task.verify(ref, f"x\nAnswer: {ref}") == 1.0
    assert task.verify(ref, f"Answer: {ref + 1}\nAnswer: {ref}") == 1.0  # the last one counts
    assert task.verify(ref, f"Answer: {ref}\nAnswer: {ref + 1}") == 0.0
    assert task.verify(ref, f"The answer is {ref}.") == 0.0  # not in the format
    assert task.verify(1234, "Answer: 1,234.0") == 1.0  # commas and a zero decimal
    assert task.gold_scorer()([prompt, "unknown prompt"], [f"Answer: {ref}"] * 2) == [1.0, 0.0]
    assert task.solved(prompt, f"Answer: {ref}") and not task.solved(prompt, "Answer: -1")
    # a chat prompt is looked up by its first user message
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": prompt}]
    assert task.reference_of(chat) == ref
    assert parse_answer("Answer: 1,234") == "1234" and parse_answer("Answer: 7.50") == "7.5"
    assert parse_answer("no answer") is None


def test_worked_steps_take_one_place_value_at_a_time_and_each_step_equals_the_answer():
    def problem(a, b, op):
        answer = {"add": a + b, "sub": a - b, "mul": a * b}[op]
        return Problem("q", a, b, op, answer, "Mia", "coins")

    assert worked_steps(problem(47, 38, "add")) == "47 + 38 = 47 + 30 + 8 = 77 + 8 = 85"
    assert worked_steps(problem(83, 38, "sub")) == "83 - 38 = 83 - 30 - 8 = 53 - 8 = 45"
    assert worked_steps(problem(76, 4, "mul")) == "76 * 4 = 70 * 4 + 6 * 4 = 280 + 24 = 304"
    assert worked_steps(problem(47, 30, "add")) == "47 + 30 = 77"  # one part: one step
    assert worked_steps(problem(40, 3, "mul")) == "40 * 3 = 120"
    assert (worked_steps(problem(305, 7, "mul"))
            == "305 * 7 = 300 * 7 + 5 * 7 = 2100 + 35 = 2135")  # a zero digit is no step
    assert (worked_steps(problem(4086, 5, "mul")) == "4086 * 5 = 4000 * 5 + 80 * 5 + 6 * 5"
            " = 20000 + 400 + 30 = 20400 + 30 = 20430")
    for digits in (2, 4):
        task = get_task("arithmetic-steps", digits=digits, n_train=300, n_eval=50, n_demos=50)
        for p in task.problems("train") + task.problems("eval"):
            parts = worked_steps(p).split(" = ")
            assert parts[0] == p.expression and parts[-1] == str(p.answer)
            assert all(calculate(part) == p.answer for part in parts), parts
        assert all(task.solved(d.prompt, d.response) and "\nAnswer: " in d.response
                   for d in task.demonstrations())


def test_every_arithmetic_demonstration_passes_its_verifier():
    for name in ("arithmetic", "arithmetic-tool", "arithmetic-steps"):
        task = get_task(name)
        demos = task.demonstrations()
        assert len(demos) == 256
        assert all(task.solved(d.prompt, d.response) for d in demos)
    tool_demos = get_task("arithmetic-tool").demonstrations()
    assert sum("<calc>" in d.response for d in tool_demos) == 128
    clarify = get_task("arithmetic-clarify").demonstrations()
    assert all(d.response.endswith("?") for d in clarify[::2])
    assert all(len(d.messages) == 4 for d in clarify[1::2])
    ranking = get_task("arithmetic").rankings()[0]
    assert ranking.meta["gold_scores"][0] == 1.0 and ranking.meta["gold_scores"][2:] == [0, 0]


def test_calculator_evaluates_arithmetic_and_nothing_else():
    assert calculate("47 + 38") == 85
    assert calculate("(12 - 4) * 3") == 24
    assert calculate("7 / 2") == 3.5
    assert calculate("6 x 7") == 42 and calculate("-3 + 1") == -2
    for bad in ("__import__('os')", "2 ** 10", "a + 1", "1 / 0", "1 +"):
        with pytest.raises(ValueError):
            calculate(bad)


# ---------------------------------------------------------------------------------------
# task:constraints
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("constraint,good,bad", [
    (Constraint("max_words", 3), "one two three", "one two three four"),
    (Constraint("min_words", 3), "one two three", "one two"),
    (Constraint("include", "home"), "Going Home now", "homework only"),
    (Constraint("exclude", "very"), "quite nice", "Very nice"),
    (Constraint("lowercase"), "all small here", "One capital"),
    (Constraint("bullets", 2), "- a\n* b\nnot a bullet", "- a\n- b\n- c"),
    (Constraint("json_keys", ("a", "b")), '```json\n{"a": 1, "b": 2}\n```', '{"a": 1}'),
])
def test_each_constraint_kind_passes_and_fails(constraint, good, bad):
    assert check_constraint(constraint, good)
    assert not check_constraint(constraint, bad)
    assert check_constraint(constraint.to_dict(), good)  # the JSON form of a reference


def test_constraints_task_scores_the_share_met_and_its_demonstrations_pass():
    task = get_task("constraints")
    assert not set(task.prompts("train")) & set(task.prompts("eval"))
    ref = [{"kind": "lowercase", "arg": None}, {"kind": "max_words", "arg": 3}]
    assert task.verify(ref, "two words") == 1.0
    assert task.verify(ref, "Two words") == 0.5
    assert task.verify(ref, "Far Too Many Words") == 0.0
    assert all(task.solved(d.prompt, d.response) for d in task.demonstrations())
    items = [i for s in task._splits.values() for i in s]
    assert all(all(check_constraint(c, ConstraintsTask.compliant(i, random.Random(1)))
                   for c in i.constraints) for i in items[:300])


# ---------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------


def test_pass_at_k_matches_counting_subsets():
    """pass@k = share of the C(n, k) k-subsets that hold a correct sample.

    n = 4 samples, c = 1 correct: pass@1 = 1/4; pass@2 = 3 of the 6 pairs hold it = 1/2;
    pass@4 = 1. c = 2: pass@2 = 1 - C(2, 2)/C(4, 2) = 5/6. c = 0: 0 for every k.
    """
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 0, 3) == 0.0
    for n, c, k in [(8, 3, 2), (10, 4, 5), (6, 6, 1)]:
        subsets = list(combinations([1] * c + [0] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_order():
    assert majority_vote(["3", None, "4", "3", None, None]) == ("3", 2)
    assert majority_vote(["b", "a", "a", "b"]) == ("b", 2)
    assert majority_vote([None, None]) == (None, 0)


def test_overlong_penalty_is_zero_then_a_ramp_then_minus_the_penalty():
    """L_max = 10, L_cache = 4: 0 up to 6 tokens, (6 - |y|) / 4 from 7 to 10, -1 past 10.

    |y| = 6 -> 0; 7 -> -0.25; 8 -> -0.5; 10 -> -1; 11 -> -1 (times penalty 0.5: half).
    """
    lengths = torch.tensor([3, 6, 7, 8, 10, 11])
    assert overlong_penalty(lengths, 10, 4).tolist() == [0, 0, -0.25, -0.5, -1, -1]
    assert overlong_penalty(lengths, 10, 4, 0.5).tolist() == [0, 0, -0.125, -0.25, -0.5, -0.5]
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 10, 0)


def test_groups_with_signal_are_those_whose_rewards_differ():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.6]])
    assert groups_with_signal(scores).tolist() == [False, True, False, True]


def test_returns_and_gae_skip_the_environment_tokens():
    """A response with a hole: mask 1 1 0 0 1 (tokens 2-3 written by the environment).

    Rewards r = (0, 1, 9, 9, 2) (the 9s sit under the hole and must not count), gamma = 0.5.
    Over the unmasked tokens only (positions 0, 1, 4 in order):
    G_4 = 2; G_1 = 1 + 0.5 * 2 = 2; G_0 = 0 + 0.5 * 2 = 1; the hole stays 0.
    GAE with values V = (1, 2, 7, 7, 3), gamma = 1, lambda = 1 is G - V over the same tokens:
    G (gamma 1) = (3, 3, 0, 0, 2) -> A = (2, 1, 0, 0, -1); with lambda = 0 it is the one-step
    TD error, the next state being the next *unmasked* token's: delta_1 = 1 + V_4 - V_1 = 2,
    delta_0 = 0 + V_1 - V_0 = 1, delta_4 = 2 - 3 = -1.
    """
    mask = torch.tensor([[1, 1, 0, 0, 1]])
    rewards = torch.tensor([[0.0, 1.0, 9.0, 9.0, 2.0]])
    values = torch.tensor([[1.0, 2.0, 7.0, 7.0, 3.0]])
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[1.0, 2.0, 0.0, 0.0, 2.0]]
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[2.0, 1.0, 0.0, 0.0, -1.0]]
    assert ret.tolist() == [[3.0, 3.0, 0.0, 0.0, 2.0]]
    adv0, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert adv0.tolist() == [[1.0, 2.0, 0.0, 0.0, -1.0]]
    # a prefix mask gives what it always gave
    prefix = torch.tensor([[1, 1, 1, 0, 0]])
    a1, _ = gae(rewards, values, prefix, 1.0, 0.0)
    assert a1.tolist() == [[1.0, 1.0 + 7 - 2, 9.0 - 7, 0.0, 0.0]]


def test_a_sequence_reward_lands_on_the_last_policy_token():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [4, 2, 0]
    assert sequence_rewards(torch.tensor([1.0, 2.0, 3.0]), mask) == [[(4, 1.0)], [(2, 2.0)],
                                                                       [(0, 3.0)]]
    placed = place_rewards([[(1, 0.5), (9, 1.0)], [], []], mask)
    assert placed[0].tolist() == [0, 0.5, 0, 0, 1.0, 0]  # past the end: the last own token


# ---------------------------------------------------------------------------------------
# Dynamic sampling, overlong shaping, concatenation
# ---------------------------------------------------------------------------------------


def fake_rollout(prompts, lengths, width=None, prompt_len=2, ended=None):
    """A rollout with ``lengths[i]`` response tokens (ids 10 + i) after ``prompt_len`` ids."""
    R = width or max(lengths)
    B = len(prompts)
    input_ids = torch.zeros(B, prompt_len + R, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    attn[:, :prompt_len] = 1
    resp = torch.zeros(B, R, dtype=torch.bool)
    for i, n in enumerate(lengths):
        input_ids[i, prompt_len:prompt_len + n] = 10 + i
        attn[i, prompt_len:prompt_len + n] = 1
        resp[i, :n] = True
    return Rollout(list(prompts), [[1] * prompt_len] * B, [[10 + i] * n for i, n in
                   enumerate(lengths)], [f"t{i}" for i in range(B)], input_ids, attn,
                   (attn.cumsum(-1) - 1).clamp(min=0), resp,
                   torch.tensor(ended if ended is not None else [True] * B),
                   logprobs=torch.randn(B, R) * resp, ref_logprobs=torch.zeros(B, R),
                   extras={"engine_logprobs": torch.ones(B, R), "turns": torch.arange(B)})


def terms_of(scores, rollout):
    s = torch.tensor(scores)
    return RewardTerms(s, s, [sequence_rewards(s, rollout.response_mask)], [1.0],
                       {"a": s * 2, "b": s})


def test_concat_rollouts_repads_prompts_left_and_responses_right():
    a = fake_rollout(["p", "q"], [2, 3], prompt_len=2)
    b = fake_rollout(["r"], [5], prompt_len=4)
    both = concat_rollouts([a, b], pad_id=0)
    assert both.prompt_width == 4 and both.response_mask.shape == (3, 5)
    assert both.prompts == ["p", "q", "r"] and both.texts == ["t0", "t1", "t0"]
    assert both.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert both.input_ids[0, 4:6].tolist() == [10, 10]
    assert both.position_ids[0].tolist()[2:6] == [0, 1, 2, 3]
    assert both.response_mask.sum(-1).tolist() == [2, 3, 5]
    assert torch.equal(both.logprobs[2], b.logprobs[0])
    assert both.extras["engine_logprobs"].shape == (3, 5)
    assert both.extras["turns"].tolist() == [0, 1, 0]
    terms = concat_terms([terms_of([1.0, 2.0], a), terms_of([3.0], b)])
    assert terms.scores.tolist() == [1, 2, 3] and terms.by_source["a"].tolist() == [2, 4, 6]
    assert terms.dense[0][2] == [(4, 3.0)]


class FakeRun:
    """What dynamic_batch reads of an RLRun: prompts, sampling, scoring, rewards."""

    def __init__(self, scores_of):
        self.train_prompts = [f"p{i}" for i in range(20)]
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.scores_of = scores_of  # prompt -> the k scores its group gets
        self.sampled = 0

    def sample_responses(self, prompts, seed):
        self.sampled += 1
        return fake_rollout(prompts, [2] * len(prompts))

    def score_rollout(self, rollout, policy_logprobs=True):
        return rollout

    def rewards(self, rollout):
        k = 2
        scores = [s for p in rollout.prompts[::k] for s in self.scores_of(p)]
        return terms_of(scores, rollout)


def test_dynamic_sampling_drops_flat_groups_and_refills_to_the_batch_size():
    cfg = SimpleNamespace(num_samples=2, batch_size=3, dynamic_sampling="drop",
                          max_refill_rounds=3, seed=0)
    # p0 and p2 are flat (same reward twice), p1 has signal
    first = fake_rollout(["p0", "p0", "p1", "p1", "p2", "p2"], [2] * 6)
    run = FakeRun(lambda p: [0.0, 1.0] if p in ("p1", "p5", "p7", "p9") else [1.0, 1.0])
    kept, terms, m = dynamic_batch(cfg, run, 0, first, run.rewards(first), True)
    assert kept.prompts == ["p1", "p1"] and terms.scores.tolist() == [0.0, 1.0]
    assert m["rlvr/signal_groups"] == pytest.approx(1 / 3) and m["rlvr/kept_groups"] == 1
    assert run.sampled == 0
    cfg.dynamic_sampling = "refill"
    run = FakeRun(lambda p: [0.0, 1.0] if p != "p0" else [1.0, 1.0])
    kept, terms, m = dynamic_batch(cfg, run, 0, first, run.rewards(first), True)
    assert len(kept) == 6 and run.sampled == 1  # one refill round filled the batch
    assert all(len(set(terms.scores[i:i + 2].tolist())) == 2 for i in range(0, 6, 2))
    assert m["rlvr/kept_groups"] == 3 and m["rlvr/sampled_groups"] == 6
    run = FakeRun(lambda p: [1.0, 1.0])  # nothing ever has signal: empty after the rounds
    kept, _, m = dynamic_batch(cfg, run, 0, first, run.rewards(first), True)
    assert len(kept) == 0 and run.sampled == 3 and m["rlvr/kept_groups"] == 0


def test_overlong_source_and_filter_use_the_length_and_the_cut():
    cfg = SimpleNamespace(max_new_tokens=8, overlong_buffer=4, overlong_penalty=1.0,
                          overlong_filter=True)
    rollout = fake_rollout(["a", "b", "c"], [3, 6, 8], ended=[True, True, False])
    rewards = overlong_source(cfg).fn(rollout)
    # 3 -> 0; 6 -> (4 - 6) / 4 = -0.5; cut at the limit -> -1, each on the last token
    assert rewards == [[(2, 0.0)], [(5, -0.5)], [(7, -1.0)]]
    mask = loss_mask(cfg, rollout)
    assert mask.sum(-1).tolist() == [3, 6, 0]
    assert math.isclose(float(rollout.response_mask.sum()), 17)
