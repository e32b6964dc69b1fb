"""Accuracy from checked responses: pass@k, the greedy share, the answered share, the score."""

import pytest

from rlhfkit.evaluate.accuracy import mean_counts, pass_at_ks, solved_share


class Sums:
    """A verifiable task in miniature: the answer is the response itself."""

    ANSWERS = {"1+1": 2, "2+2": 4}

    def references(self, prompts):
        return [self.ANSWERS.get(p) for p in prompts]

    def verify(self, reference, response):
        return 1.0 if response == str(reference) else 0.0

    def extract_answer(self, response):
        return response if response.isdigit() else None


PROMPTS = ["1+1", "2+2", "a riddle"]  # the riddle has no reference: never correct


def test_pass_at_k_and_the_shares_by_hand():
    groups = [["2", "3"], ["5", "x"], ["7", "7"]]
    out, samples = pass_at_ks(Sums(), PROMPTS, groups, 2, [1, 2])
    # correct per problem: 1 of 2, 0 of 2, 0 of 2
    assert out["problems"] == 3.0 and out["n"] == 2.0
    assert out["pass@1"] == pytest.approx((1 / 2) / 3)
    assert out["pass@2"] == pytest.approx(1 / 3)
    assert out["answered"] == pytest.approx(5 / 6)  # every response but "x" has an answer
    assert out["score"] == pytest.approx(1 / 6)  # one right response of six
    assert samples[0] == {"prompt": "1+1", "reference": 2, "response": "2", "correct": True}
    assert samples[2]["reference"] is None and samples[2]["correct"] is False


def test_the_greedy_share_and_mean_counts():
    assert solved_share(Sums(), PROMPTS, ["2", "4", "7"]) == pytest.approx(2 / 3)
    assert mean_counts([{"turns": 1.0, "tool_calls": 2.0}, {"turns": 3.0}]) == {"turns": 2.0}
    assert mean_counts([]) == {}
