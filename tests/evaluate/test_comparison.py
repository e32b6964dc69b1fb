"""A policy against SFT: the summary from one scored response per prompt, worked by hand."""

import pytest

from rlhfkit.evaluate.comparison import Responses, compare
from rlhfkit.evaluate.metrics import length_controlled_win_rate


def test_the_summary_of_two_scored_policies():
    prompts = ["p", "q"]
    sft = Responses(["a b c", "a b"], gold=[0.0, 1.0], reward=[1.0, 3.0], lengths=[3.0, 2.0])
    final = Responses(["x y", "x y"], gold=[1.0, 1.0], reward=[2.0, 4.0], lengths=[2.0, 2.0])
    out = compare(prompts, sft, final, kl=0.5)
    s = out["summary"]
    assert s["prompts"] == 2
    assert (s["gold/sft"], s["gold/final"]) == (0.5, 1.0)
    assert (s["reward/sft"], s["reward/final"]) == (2.0, 3.0)
    # p: 1 > 0 is a win, q: 1 = 1 a tie
    assert (s["gold/win_rate"], s["gold/tie_rate"], s["gold/win_rate_ties_half"]) == (0.5, 0.5, 0.75)
    lc = length_controlled_win_rate([1.0, 1.0], [0.0, 1.0], [2.0, 2.0], [3.0, 2.0])
    assert s["gold/lc_win_rate"] == lc["lc_win_rate"]
    assert s["kl/final"] == 0.5
    assert (s["length/sft"], s["length/final"]) == (2.5, 2.0)
    # bigrams: (a b), (b c), (a b) -> 2 of 3 distinct; (x y) twice -> 1 of 2
    assert s["distinct2/sft"] == pytest.approx(2 / 3) and s["distinct2/final"] == 0.5
    assert out["samples"][1] == {"prompt": "q", "before": "a b", "after": "x y",
                                 "gold_before": 1.0, "gold_after": 1.0}
