"""Per-token rewards and the KL controller, by hand."""

import pytest
import torch

from rlhfkit.rewards.shaping import (
    KLController,
    normalise_scores,
    place_rewards,
    sequence_rewards,
    token_rewards,
)


def test_score_on_last_token_minus_k1_per_token():
    """Two responses of 3 and 2 tokens; scores 1.0 and -2.0; beta 0.5.

    log-ratios r = [[0.2, -0.4, 0.6], [1.0, 0.0, junk]] -> rewards
    [[-0.1, 0.2, -0.3 + 1.0], [-0.5, -2.0, 0]].
    """
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    lp = torch.tensor([[0.2, -0.4, 0.6], [1.0, 0.0, 5.0]])
    ref = torch.zeros(2, 3)
    rewards, info = token_rewards(mask, lp, ref, 0.5, scores=torch.tensor([1.0, -2.0]))
    assert torch.allclose(rewards, torch.tensor([[-0.1, 0.2, 0.7], [-0.5, -2.0, 0.0]]))
    assert info["score"].tolist() == [1.0, -2.0]
    assert torch.allclose(info["kl"].sum(-1), torch.tensor([0.4, 1.0]))


def test_missing_eos_penalty_and_dense_sources_with_weights():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    zeros = torch.zeros(2, 3)
    # A sentence-level source: a score after token 0 and after the last token of sample 0.
    sentences = [[(0, 0.5), (2, 1.0)], [(1, -1.0)]]
    rewards, _ = token_rewards(mask, zeros, zeros, 0.1, scores=torch.tensor([1.0, 1.0]),
                               dense=[sentences], weights=[2.0],
                               ended=torch.tensor([False, True]), missing_eos_penalty=-3.0)
    assert rewards.tolist() == [[1.0, 0.0, 1.0 + 2.0 - 3.0], [0.0, 1.0 - 2.0, 0.0]]
    with pytest.raises(ValueError):
        token_rewards(mask, zeros, zeros, 0.1, dense=[sentences], weights=[1.0, 2.0])


def test_sequence_rewards_and_place():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    dense = sequence_rewards(torch.tensor([3.0, 4.0]), mask)
    assert dense == [[(1, 3.0)], [(3, 4.0)]]
    assert place_rewards([[(9, 1.0)], []], mask).tolist() == [[0, 1.0, 0, 0], [0, 0, 0, 0]]


def test_normalise_with_rm_stats_and_clip():
    s = normalise_scores(torch.tensor([3.0, -7.0, 1.0]), stats=(1.0, 2.0), clip=2.5)
    assert s.tolist() == [1.0, -2.5, 0.0]
    assert normalise_scores(torch.tensor([3.0])).tolist() == [3.0]


def test_adaptive_kl_controller_ziegler():
    """KL = 2 x target -> error clipped to 0.2; beta *= 1 + 0.2 * 100 / 1000 = 1.02."""
    c = KLController(0.1, target=6.0, horizon=1000)
    assert c.update(12.0, 100) == pytest.approx(0.102)
    # KL = target / 2 -> error -0.5, clipped to -0.2 -> beta *= 1 - 0.02
    assert c.update(3.0, 100) == pytest.approx(0.102 * 0.98)
    fixed = KLController(0.1)
    assert fixed.update(100.0, 100) == 0.1
    fixed.load_state_dict(c.state_dict())
    assert fixed.value == c.value
