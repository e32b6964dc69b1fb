"""The factqa task: prompts, the judge by hand, gold scorers, the simulated span labeler and the
``factqa-gold:`` reward sources."""

import random

import pytest
import torch

from rlhfkit.data.records import SpanFeedback
from rlhfkit.tasks import get_task
from rlhfkit.tasks.factqa import FactQAScorer, FactQATask, Item, judge, parse_prompt

ITEM = Item("Ashford", {"river": "Tull", "year": "1642", "settlers": "monks", "trade": "wool",
                        "fair": "June", "landmark": "a granary"}, ("river", "year"))


def test_prompt_round_trip():
    assert "Question: Which river does Ashford lie on? In what year was Ashford founded?" \
        in ITEM.prompt
    assert parse_prompt(ITEM.prompt) == ITEM
    assert parse_prompt([{"role": "user", "content": ITEM.prompt}]) == ITEM
    with pytest.raises(ValueError, match="not a factqa prompt"):
        parse_prompt("Continue this review")


def test_judge_by_hand():
    text = ("That is a good question. Ashford lies on the river Tull, and it was founded in "
            "1710. Its main trade is wool. It lies on the river Tull.")
    j = judge(ITEM, text)
    subs = [text[a:b].strip() for a, b in j.subsentences]
    assert subs == ["That is a good question.", "Ashford lies on the river Tull,",
                    "and it was founded in 1710.", "Its main trade is wool.",
                    "It lies on the river Tull."]
    # filler and background: irrelevant; the river again: repetitive; a wrong year is on topic
    assert j.sub_errors == ["irrelevant", None, None, "irrelevant", "repetitive"]
    assert j.wrong_subs == [2]
    assert j.sentence_wrong == [False, True, False, False]
    assert j.asked_correct == {"river"} and j.background_correct == {"trade"}
    assert j.missing == ["the founding year: 1642"]
    assert j.relevance == pytest.approx(2 / 5)
    assert j.factuality == pytest.approx(3 / 4)
    assert j.completeness == pytest.approx((1 + 0.5) / (2 + 0.5 * 4))
    assert j.overall == pytest.approx(0.5 * (1 - 4 / 5))  # recall 1/2; 4 of 5 subs have errors
    perfect = judge(ITEM, "Ashford lies on the river Tull. It was founded in 1642.")
    assert (perfect.relevance, perfect.factuality, perfect.recall, perfect.overall) == (1, 1, 1, 1)


def test_gold_scorers_read_the_prompt():
    scorers = FactQATask(n_train=8, n_eval=4, n_demos=2, n_spans=2, n_ranked=2).gold_scorers()
    answers = ["Ashford lies on the river Tull. It was founded in 1642.",
               "Ashford lies on the river Tull. It was founded in 1642. Its main trade is wool.",
               ""]
    prompts = [ITEM.prompt] * 3
    assert scorers["relevance"](prompts, answers) == pytest.approx([1.0, 2 / 3, 0.0])
    assert scorers["factuality"](prompts, answers) == [1.0, 1.0, 1.0]
    comp = scorers["completeness"](prompts, answers)
    assert comp[1] > comp[0] > comp[2] == 0.0  # background facts add completeness
    assert scorers["overall"](prompts, answers)[:2] == pytest.approx([1.0, 2 / 3])
    with pytest.raises(ValueError, match="aspect"):
        FactQAScorer("style")


def test_factqa_task_records():
    task = get_task("factqa", n_train=60, n_eval=12, n_demos=20, n_spans=20, n_ranked=20)
    train, eval_ = task.prompts("train"), task.prompts("eval")
    assert len(train) == 60 and len(eval_) == 12
    names = {parse_prompt(p).name for p in train}
    assert not names & {parse_prompt(p).name for p in eval_}  # eval villages are new
    demos = task.demonstrations()
    assert len(demos) == 20
    scorers = task.gold_scorers()
    ps, rs = [d.prompt for d in demos], [d.response for d in demos]
    # demonstrations give every asked fact, right, with a varied amount of background
    assert scorers["recall"](ps, rs) == scorers["factuality"](ps, rs) == [1.0] * 20
    assert min(scorers["relevance"](ps, rs)) < 0.5 < max(scorers["relevance"](ps, rs))
    spans = task.span_feedback()
    assert len(spans) == 20 and all(isinstance(r, SpanFeedback) for r in spans)
    cats = {s.category for r in spans for s in r.spans}
    assert {"irrelevant", "untruthful"} <= cats <= {"irrelevant", "repetitive", "untruthful"}
    # spans, rankings and demonstrations are on different prompts
    assert not {r.prompt for r in spans} & {d.prompt for d in demos}
    rankings = task.rankings()
    assert len(rankings) == 20 and all(len(r.responses) == 4 for r in rankings)
    assert not {r.prompt for r in rankings} & {r.prompt for r in spans}
    # the ranker mostly puts the more complete answer first (temperature 0.05)
    agree = [r.meta["gold_scores"][r.ranks.index(0)] == max(r.meta["gold_scores"])
             for r in rankings]
    assert sum(agree) >= 14
    again = get_task("factqa", n_train=60, n_eval=12, n_demos=20, n_spans=20, n_ranked=20)
    assert [r.to_dict()["spans"] for r in again.span_feedback()] == [r.to_dict()["spans"]
                                                                     for r in spans]
    with pytest.raises(ValueError, match="n_spans"):
        get_task("factqa", n_train=10, n_demos=2, n_spans=11)


def test_span_labeler_noise():
    from rlhfkit.tasks.factqa import SpanLabeler

    rng = random.Random(0)
    answers = [FactQATask.sampled_answer(rng, ITEM) for _ in range(200)]
    exact_labeler, noisy_labeler = SpanLabeler(0.0, 0.0), SpanLabeler(0.3, 0.0, seed=1)
    exact = [exact_labeler.mark(ITEM, a) for a in answers]
    noisy = [noisy_labeler.mark(ITEM, a) for a in answers]
    n_exact = sum(len(r.spans) for r in exact)
    n_noisy = sum(len(r.spans) for r in noisy)
    assert 0.6 * n_exact < n_noisy < 0.8 * n_exact  # about 30% of the marks missed
    for r in exact:  # noiseless marks agree with the judge
        j = judge(ITEM, r.response)
        marked = {(s.start, s.end) for s in r.spans if s.category != "untruthful"}
        assert len(marked) == sum(e is not None for e in j.sub_errors)


def test_factqa_gold_source_gives_the_labelers_marks(tokenizer):
    """``factqa-gold:ASPECT`` (a perfect reward model): +-1 per sub-sentence for relevance, per
    sentence for factuality, at the segment ends; completeness once, standardised."""
    from rlhfkit.data.chat import encode_pair
    from rlhfkit.rewards.sources import SourceContext
    from rlhfkit.rollout import build_rollout, encode_prompts, eos_ids_of
    from rlhfkit.segments import response_segments
    from rlhfkit.train.inputs import reward_sources

    text = "That is a good question. Ashford lies on the river Tull, and it was founded in 1710."
    prompt_ids = encode_prompts(tokenizer, [ITEM.prompt])
    response = encode_pair(tokenizer, ITEM.prompt, text, 1024).input_ids[len(prompt_ids[0]):]
    rollout = build_rollout(tokenizer, [ITEM.prompt], prompt_ids, [response],
                            eos_ids_of(tokenizer))
    run = SourceContext(tokenizer, torch.device("cpu"), segment_unit="sentence")
    rel, fact, comp = reward_sources("rel=factqa-gold:relevance,fact=factqa-gold:factuality,"
                                    "comp=factqa-gold:completeness", "rel=0.3", run)
    (rel_rewards,) = rel.fn(rollout)
    (subs,) = response_segments(tokenizer, rollout.response_ids, [text], "subsentence")
    assert rel_rewards == [(subs[0][1], -1.0), (subs[1][1], 1.0), (subs[2][1], 1.0)]
    (fact_rewards,) = fact.fn(rollout)
    assert [r for _, r in fact_rewards] == [1.0, -1.0]
    assert fact_rewards[-1][0] == len(response) - 1
    (comp_rewards,) = comp.fn(rollout)
    assert comp_rewards == [(len(response) - 1, pytest.approx(1 / 4))]  # river only: 1 / (2 + 4 / 2)
    mean, std = comp.stats
    assert 0 < mean < 1 and 0 < std < 1
    with pytest.raises(ValueError, match="aspect|use one of"):
        reward_sources("x=factqa-gold:style", "", run)
