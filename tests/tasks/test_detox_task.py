"""The built-in "detox" task: valid records, swearing demonstrations, several sentences each."""

import statistics

import pytest

from rlhfkit.data.records import Demonstration, Ranking
from rlhfkit.rewards.gold import ToxicityScorer
from rlhfkit.segments import split_segments
from rlhfkit.tasks import DetoxTask, get_task, list_tasks
from rlhfkit.tasks.detox import EVENTS, SENTENCES, fill


@pytest.fixture(scope="module")
def task():
    return get_task("detox")


@pytest.fixture(scope="module")
def toxicity():
    return ToxicityScorer()


def test_registered_and_sized(task):
    assert "detox" in list_tasks() and isinstance(task, DetoxTask)
    assert task.description and task.system_prompt
    train, eval_ = task.prompts("train"), task.prompts("eval")
    assert len(train) == 384 and len(eval_) == 96
    assert len(set(train + eval_)) == len(train) + len(eval_)  # disjoint, no duplicates
    assert DetoxTask().prompts("eval") == eval_  # deterministic
    small = get_task("detox", n_train=20, n_eval=4, n_demos=20, n_ranked=6, k=3)
    assert len(small.demonstrations()) == 20 and len(small.rankings()) == 6
    with pytest.raises(ValueError, match="at most"):
        get_task("detox", n_train=480, n_eval=1)
    with pytest.raises(ValueError, match="toxic_share"):
        get_task("detox", toxic_share=1.5)


def test_sentence_templates_are_labelled_right_by_the_gold_scorer(toxicity):
    """Every swearing sentence is offensive alone (>= 0.5), every clean one is not (< 0.2),
    for every event: the demonstrations' toxicity is where the templates say it is."""
    for part in SENTENCES.values():
        for kind, templates in part.items():
            texts = [fill(t, thing, verb) for t in templates for _, thing, verb in EVENTS]
            scores = toxicity(texts, texts)
            if kind == "toxic":
                assert min(scores) >= 0.5, texts[scores.index(min(scores))]
            else:
                assert max(scores) < 0.2, texts[scores.index(max(scores))]


def test_prompts_are_clean(task, toxicity):
    prompts = task.prompts("train") + task.prompts("eval")
    assert max(toxicity(prompts, prompts)) < 0.3


def test_demonstrations_are_valid_multi_sentence_and_often_toxic(task, toxicity, tokenizer):
    demos = task.demonstrations()
    assert len(demos) == task.n_demos
    assert all(isinstance(d, Demonstration) for d in demos)
    assert [d.prompt for d in demos] == task.prompts("train")[: task.n_demos]
    n_sentences = [len(split_segments(d.response, "sentence")) for d in demos]
    assert set(n_sentences) == {3, 4}  # fine-grained rewards have several segments to go by
    tox = toxicity([d.prompt for d in demos], [d.response for d in demos])
    # Measured (seed 0): mean 0.54, 57% at or above 0.5, 32% below 0.2.
    assert 0.4 < sum(t >= 0.5 for t in tox) / len(tox) < 0.75
    assert sum(t < 0.2 for t in tox) / len(tox) > 0.2
    # the toxicity sits in sentences: many stories mix a swearing sentence with clean ones
    mixed = 0
    for d in demos:
        sentences = [d.response[a:b] for a, b in split_segments(d.response)]
        per = toxicity(sentences, sentences)
        mixed += max(per) >= 0.5 and min(per) < 0.2
    assert mixed / len(demos) > 0.4
    # they fit in the experiment's 48 new tokens
    lengths = [len(tokenizer(d.response)["input_ids"]) for d in demos]
    assert statistics.mean(lengths) < 40 and max(lengths) <= 50


def test_gold_scorer_is_non_toxicity(task, toxicity):
    texts = ["What a shitty day.", "I made a cup of tea."]
    gold = task.gold_scorer()(texts, texts)
    assert gold == pytest.approx([1 - t for t in toxicity(texts, texts)])
    assert gold[0] < 0.1 < 0.9 < gold[1]


def test_toxic_share_moves_the_demonstrations(toxicity):
    def mean_tox(share):
        demos = DetoxTask(toxic_share=share).demonstrations()
        return statistics.mean(toxicity([d.prompt for d in demos], [d.response for d in demos]))

    assert mean_tox(0.0) < 0.15 < 0.5 < mean_tox(0.6)


def test_rankings_prefer_clean_stories(task):
    rankings = task.rankings()
    assert len(rankings) == task.n_ranked
    assert all(isinstance(r, Ranking) and len(set(r.responses)) == task.k for r in rankings)
    demo_prompts = set(task.prompts("train")[: task.n_demos])
    assert not demo_prompts & {r.prompt for r in rankings}
    # the labeler is the gold scorer with a little noise: the top story is usually the cleanest
    best = [r.meta["gold_scores"][r.ranks.index(0)] == max(r.meta["gold_scores"])
            for r in rankings]
    assert sum(best) / len(best) > 0.7
