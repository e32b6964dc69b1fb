"""The built-in "reviews" task: sizes, disjoint splits, mixed demonstrations, rankings."""

import statistics

import pytest

from rlhfkit.data.records import Comparison, Demonstration, Ranking
from rlhfkit.rewards.gold import SentimentScorer
from rlhfkit.tasks import ReviewsTask, Task, get_task, list_tasks


@pytest.fixture(scope="module")
def task():
    return get_task("reviews")


def test_registry(task):
    assert "reviews" in list_tasks()
    assert isinstance(task, Task) and task.name == "reviews"
    assert task.description and task.system_prompt
    small = get_task("reviews", n_train=40, n_eval=8, n_demos=40, n_ranked=10)
    assert len(small.prompts("eval")) == 8
    assert len(small.demonstrations()) == 40 and len(small.rankings()) == 10  # wraps around
    with pytest.raises(ValueError, match="n_demos"):
        get_task("reviews", n_train=40, n_demos=41)
    with pytest.raises(KeyError, match="reviews"):
        get_task("summaries")


def test_prompts_sizes_disjoint_and_short(task):
    train, eval_ = task.prompts("train"), task.prompts("eval")
    assert len(train) >= 300 and len(eval_) >= 64
    assert len(set(train)) == len(train) and len(set(eval_)) == len(eval_)
    assert not set(train) & set(eval_)
    assert all(isinstance(p, str) and 8 <= len(p.split()) <= 20 for p in train + eval_)
    with pytest.raises(ValueError, match="split"):
        task.prompts("test")


def test_prompts_are_deterministic_and_varied(task):
    again = ReviewsTask()
    assert again.prompts("train") == task.prompts("train")
    assert again.prompts("eval") == task.prompts("eval")
    openings = {p.split(",")[0] for p in task.prompts("train")}
    assert len(openings) > 50  # many kinds x openings, not one template


def test_prompt_openings_lean_negative(task):
    scores = SentimentScorer()(task.prompts("train"), task.prompts("train"))
    assert statistics.mean(scores) < -0.1


def test_demonstrations_have_mixed_sentiment(task):
    demos = task.demonstrations()
    assert len(demos) == task.n_demos
    assert all(isinstance(d, Demonstration) for d in demos)
    assert [d.prompt for d in demos] == task.prompts("train")[: task.n_demos]
    scores = task.gold_scorer()([d.prompt for d in demos], [d.response for d in demos])
    positive = sum(s > 0.3 for s in scores) / len(scores)
    negative = sum(s < -0.3 for s in scores) / len(scores)
    # Measured (seed 0): mean -0.05, 29% above 0.3, 41% below -0.3: room to improve.
    assert positive > 0.2 and negative > 0.2
    assert -0.25 < statistics.mean(scores) < 0.1
    assert all(1 <= d.response.count(".") + d.response.count(";") <= 3 for d in demos)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_demonstrations_stay_mixed_across_seeds(seed):
    demos = ReviewsTask(seed=seed).demonstrations()
    scores = SentimentScorer()([d.prompt for d in demos], [d.response for d in demos])
    assert -0.2 < statistics.mean(scores) < 0.15
    assert min(scores) < -0.5 < 0.5 < max(scores)


def test_rankings_and_comparisons(task):
    rankings = task.rankings()
    assert len(rankings) == task.n_ranked
    assert all(isinstance(r, Ranking) and len(r.responses) == 4 for r in rankings)
    assert all(r.source == "simulated" and r.annotator == "sim-sentiment" for r in rankings)
    train = set(task.prompts("train"))
    assert all(r.prompt in train for r in rankings)
    # reward-model prompts are not the SFT prompts (n_demos + n_ranked <= n_train)
    assert not {r.prompt for r in rankings} & {d.prompt for d in task.demonstrations()}

    pairs = task.comparisons()
    assert len(pairs) == 6 * len(rankings)
    assert all(isinstance(c, Comparison) for c in pairs)
    # The labeler at T = 0.1 mostly agrees with the gold scorer on non-tied pairs.
    gold = SentimentScorer()
    untied = [c for c in pairs if not c.tie]
    chosen = gold([c.prompt for c in untied], [c.chosen for c in untied])
    rejected = gold([c.prompt for c in untied], [c.rejected for c in untied])
    agree = sum(c > r for c, r in zip(chosen, rejected)) / len(untied)
    assert agree > 0.85
    assert [r.ranks for r in ReviewsTask().rankings()] == [r.ranks for r in rankings]


def test_gold_scorer_scores_the_continuation(task):
    scorer = task.gold_scorer()
    assert scorer.name == "sentiment"
    prompt = task.prompts("eval")[0]
    good, bad = scorer([prompt, prompt], ["is a genuine delight.", "is a dull, lifeless mess."])
    assert good > 0.3 > -0.3 > bad
