"""Losses of Steps 1 and 2 against values worked out by hand."""

import math

import torch

from rlhfkit.losses import (
    bradley_terry_loss,
    pointwise_loss,
    reward_centering_penalty,
    token_logprobs,
    token_nll,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_token_nll_by_hand():
    """logits (0, ln 3) -> softmax (1/4, 3/4); NLL of token 1 = -ln(3/4), of token 0 = ln 4."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    nll = token_nll(logits, torch.tensor([1, 0]))
    assert torch.allclose(nll, torch.tensor([-math.log(0.75), math.log(4.0)]), atol=1e-6)


def test_token_logprobs_with_temperature():
    """At temperature 2 the logits (0, 2 ln 3) become (0, ln 3): log p(1) = ln(3/4)."""
    logits = torch.tensor([[0.0, 2 * math.log(3.0)]])
    lp = token_logprobs(logits, torch.tensor([1]), temperature=2.0)
    assert abs(lp.item() - math.log(0.75)) < 1e-6
    # equals log_softmax at temperature 1 when T = 1
    lp1 = token_logprobs(logits, torch.tensor([0]))
    assert abs(lp1.item() - torch.log_softmax(logits, -1)[0, 0].item()) < 1e-6


def test_bradley_terry_by_hand():
    """r_c - r_r = 1 -> loss = -log sigmoid(1) = log(1 + e^-1) ~= 0.3133; d = -2 -> 2.1269."""
    loss, diag = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0]))
    assert torch.allclose(loss, torch.tensor([-log_sigmoid(1.0), -log_sigmoid(-2.0)]), atol=1e-6)
    assert abs(loss[0].item() - 0.31326) < 1e-4
    assert diag["accuracy"].tolist() == [1.0, 0.0]
    assert diag["margin"].tolist() == [1.0, -2.0]


def test_bradley_terry_equal_rewards_is_log2_and_wrong():
    """d = 0 -> loss ln 2 and the pair counts as wrong (a tie in reward is not a win)."""
    loss, diag = bradley_terry_loss(torch.tensor([0.5]), torch.tensor([0.5]))
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert diag["accuracy"].item() == 0.0


def test_bradley_terry_margin():
    """With margin m = 1 and d = 1 the loss is -log sigmoid(0) = ln 2 (Llama 2, eq. 2)."""
    loss, _ = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=torch.tensor([1.0]))
    assert abs(loss.item() - math.log(2)) < 1e-6


def test_bradley_terry_tie():
    """A tie's loss -(log s(d) + log s(-d))/2 is ln 2 at d = 0, larger elsewhere; never correct."""
    loss, diag = bradley_terry_loss(
        torch.tensor([0.0, 3.0]), torch.tensor([0.0, 1.0]), tie=torch.tensor([True, True])
    )
    expected_2 = -(log_sigmoid(2.0) + log_sigmoid(-2.0)) / 2
    assert torch.allclose(loss, torch.tensor([math.log(2), expected_2]), atol=1e-6)
    assert diag["accuracy"].tolist() == [0.0, 0.0]


def test_bradley_terry_gradient_direction():
    """The gradient raises the chosen reward and lowers the rejected one by sigmoid(-d)."""
    c = torch.tensor([0.0], requires_grad=True)
    r = torch.tensor([0.0], requires_grad=True)
    loss, _ = bradley_terry_loss(c, r)
    loss.sum().backward()
    assert abs(c.grad.item() + 0.5) < 1e-6 and abs(r.grad.item() - 0.5) < 1e-6


def test_pointwise_loss():
    """P(up) = sigmoid(r): r = 0 -> ln 2 for both labels; r = ln 3 -> p = 3/4."""
    loss, diag = pointwise_loss(torch.tensor([0.0, math.log(3), math.log(3)]),
                                torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(loss, torch.tensor([math.log(2), -math.log(0.75), -math.log(0.25)]),
                          atol=1e-6)
    assert diag["accuracy"].tolist() == [0.0, 1.0, 0.0]


def test_centering_penalty():
    assert reward_centering_penalty(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 2.0])).tolist() \
        == [9.0, 0.0]
