"""Best-of-N from scored samples: the pick per prompt and its gains, worked by hand."""

from rlhfkit.evaluate.best_of_n import best_of_n_summary, pick_best

GOLD = {"a1": 0.0, "a2": 1.0, "b1": 3.0}


def gold(prompts, texts):
    return [GOLD[t] for t in texts]


def test_the_best_of_each_group_is_kept_and_the_first_of_a_tie():
    picked = pick_best(["p", "q"], ["a1", "a2", "a3", "b1", "b2", "b3"],
                       [0.1, 0.5, 0.5, 2.0, 1.0, 0.0], n=3)
    assert picked == [
        {"prompt": "p", "best": "a2", "best_score": 0.5, "first": "a1", "scores": [0.1, 0.5, 0.5]},
        {"prompt": "q", "best": "b1", "best_score": 2.0, "first": "b1", "scores": [2.0, 1.0, 0.0]},
    ]


def test_the_summary_compares_the_pick_with_the_first_sample():
    picked = pick_best(["p", "q"], ["a1", "a2", "a3", "b1", "b2", "b3"],
                       [0.1, 0.5, 0.5, 2.0, 1.0, 0.0], n=3)
    assert best_of_n_summary(picked, 3) == {"n": 3, "prompts": 2, "reward/best": 1.25,
                                            "reward/first": 1.05}
    with_gold = best_of_n_summary(picked, 3, gold)
    # gold of the picks (1, 3) against the first samples (0, 3): one win, one tie
    assert (with_gold["gold/best"], with_gold["gold/first"], with_gold["gold/win_rate"]) == (
        2.0, 1.5, 0.5)
