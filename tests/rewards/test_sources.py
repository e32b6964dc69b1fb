"""Reward sources by hand: segment gains, combining sources (normalise, clip, weight, penalise),
and a holistic source's token rewards."""

import math

import pytest
import torch

from rlhfkit.rewards.shaping import place_rewards, token_rewards
from rlhfkit.rewards.sources import RewardSource, RewardTerms, combine, segment_gains


def test_segment_gains_telescope_to_the_holistic_score():
    assert segment_gains([0.9, 0.2, 0.7]) == pytest.approx([0.9, -0.7, 0.5])
    assert sum(segment_gains([0.9, 0.2, 0.7])) == pytest.approx(0.7)
    assert segment_gains([]) == []


class FakeRollout:
    def __init__(self, lengths, ended):
        r = max(lengths)
        self.response_mask = torch.tensor([[i < n for i in range(r)] for n in lengths])
        self.ended = torch.tensor(ended)

    def __len__(self):
        return len(self.ended)


def test_combine_normalises_clips_weights_and_penalises_by_hand():
    rollout = FakeRollout([3, 2], [True, False])
    holistic = RewardSource("rm", lambda r: [[(2, 3.0)], [(1, -1.0)]], weight=0.5,
                            stats=(1.0, 2.0))  # -> (3-1)/2 = 1.0 and (-1-1)/2 = -1.0
    per_segment = RewardSource("seg", lambda r: [[(0, 0.4), (2, 9.0)], [(1, -0.2)]],
                               weight=2.0)  # 9.0 is clipped to 5
    terms = combine([holistic, per_segment], rollout, clip=5.0, missing_eos_penalty=-1.0)
    assert terms.raw.tolist() == pytest.approx([0.5 * 3 + 2 * 9.4, 0.5 * -1 + 2 * -0.2])
    assert terms.scores.tolist() == pytest.approx([0.5 * 1 + 2 * 5.4, 0.5 * -1 + 2 * -0.2 - 1])
    assert terms.by_source["seg"].tolist() == pytest.approx([9.4, -0.2])
    assert not terms.is_holistic
    placed = sum(w * place_rewards(d, rollout.response_mask)
                 for w, d in zip(terms.weights, terms.dense))
    assert torch.allclose(placed, torch.tensor([[0.8, 0.0, 0.5 + 10.0], [0.0, -0.5 - 0.4, 0.0]]))


def test_holistic_source_gives_the_same_token_rewards_as_one_score():
    rollout = FakeRollout([3, 2], [True, False])
    lp, ref = torch.randn(2, 3), torch.randn(2, 3)
    scores = torch.tensor([0.7, -0.3])
    terms = RewardTerms.holistic(scores, scores, rollout.response_mask)
    assert terms.is_holistic
    a, _ = token_rewards(rollout.response_mask, lp, ref, 0.1, scores=scores,
                         ended=rollout.ended, missing_eos_penalty=-2.0)
    b, _ = token_rewards(rollout.response_mask, lp, ref, 0.1, dense=terms.dense,
                         weights=terms.weights, ended=rollout.ended, missing_eos_penalty=-2.0)
    assert torch.allclose(a, b)
    assert not math.isclose(float(a[1, 1]), 0.0)
