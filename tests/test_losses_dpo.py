"""Direct preference losses against values worked out by hand.

Inputs are chosen so that every sigmoid lands on 1/2, 1/4 or 3/4: ``sigmoid(ln 3) = 3/4``.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    preferred_ft_loss,
    unlikelihood_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def close(actual: torch.Tensor, expected) -> None:
    # The losses compute in fp32 (the house rule for losses), hence the fp32 tolerance.
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)


def test_dpo_loss_hand_values():
    """beta = 0.5; the three pairs have h = beta * (chosen ratio - rejected ratio) = ln 3, 0, -ln 3.

    Pair A: chosen ratio = -1 - (-1 - 2 ln 3) = 2 ln 3, rejected ratio 0, so h = ln 3,
    sigmoid(h) = 3/4 and the loss is ln(4/3); rewards 0.5 * 2 ln 3 = ln 3 and 0.
    Pair B: everything equal: h = 0, loss ln 2, margin 0, which is *not* counted correct.
    Pair C: the mirror of A: h = -ln 3, sigmoid = 1/4, loss ln 4.
    d loss_A / d chosen_logps_A = -beta * sigmoid(-h) = -0.5 * 1/4 = -1/8 and the rejected side
    gets +1/8; the reference gets no gradient (it is data).
    """
    chosen = t(-1.0, -2.0, -3.0, grad=True)
    rejected = t(-4.0, -2.0, -3.0 + 2 * LN3, grad=True)
    ref_chosen = t(-1.0 - 2 * LN3, -2.0, -3.0)
    ref_rejected = t(-4.0, -2.0, -3.0)
    loss, diag = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    close(loss, [math.log(4 / 3), LN2, math.log(4)])
    close(diag["chosen_rewards"], [LN3, 0.0, 0.0])
    close(diag["rejected_rewards"], [0.0, 0.0, LN3])
    close(diag["margins"], [LN3, 0.0, -LN3])
    close(diag["accuracy"], [1.0, 0.0, 0.0])
    loss[0].backward()
    close(chosen.grad, [-1 / 8, 0.0, 0.0])
    close(rejected.grad, [1 / 8, 0.0, 0.0])
    assert not diag["margins"].requires_grad


def test_dpo_label_smoothing_is_conservative():
    """eps = 1/4 at h = ln 3: loss = 3/4 * ln(4/3) + 1/4 * ln 4 (-log sigmoid(-ln 3) = ln 4).

    The gradient in h is -(1 - eps) sigmoid(-h) + eps sigmoid(h) = -3/4 * 1/4 + 1/4 * 3/4 = 0:
    conservative DPO stops pushing once sigmoid(h) = 1 - eps, where plain DPO keeps going.
    """
    chosen = t(2 * LN3, grad=True)
    zero = t(0.0)
    loss, _ = dpo_loss(chosen, zero, zero, zero, beta=0.5, label_smoothing=0.25)
    close(loss, [0.75 * math.log(4 / 3) + 0.25 * math.log(4)])
    loss.sum().backward()
    close(chosen.grad, [0.0])
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(zero, zero, zero, zero, label_smoothing=0.5)


def test_dpo_loss_is_finite_at_extreme_margins():
    """h = +-100: -log sigmoid(100) ~ 3.7e-44 and -log sigmoid(-100) = 100 (no overflow)."""
    zero = t(0.0, 0.0)
    loss, diag = dpo_loss(t(1000.0, -1000.0), zero, zero, zero, beta=0.1)
    assert torch.isfinite(loss).all()
    close(loss, [0.0, 100.0])
    close(diag["accuracy"], [1.0, 0.0])


def test_ipo_loss_hand_values():
    """beta = 1/4, so the target gap is 1 / (2 beta) = 2, on per-token log-ratios.

    Pair A: chosen ratio (-6 - -12) / 3 = 2, rejected 0: h = 2, loss 0 (on target).
    Pair B: chosen 0, rejected (-2 - -6) / 2 = 2: h = -2, loss (-2 - 2)^2 = 16.
    Pair C: chosen summed ratio 4 over 4 tokens = 1, rejected 0: h = 1, loss 1. (DPO would see
    the summed ratio 4: the per-token averaging is what makes C different from A.)
    d loss_C / d chosen_logps_C = 2 (h - 2) / |y_c| = 2 * (-1) / 4 = -1/2.
    A zero length counts as 1 (no division by zero).
    """
    chosen = t(-6.0, -4.0, -1.0, grad=True)
    rejected = t(-3.0, -2.0, -5.0)
    ref_chosen = t(-12.0, -4.0, -5.0)
    ref_rejected = t(-3.0, -6.0, -5.0)
    loss, diag = ipo_loss(chosen, rejected, ref_chosen, ref_rejected,
                          t(3.0, 5.0, 4.0), t(7.0, 2.0, 0.0), beta=0.25)
    close(loss, [0.0, 16.0, 1.0])
    close(diag["margins"], [0.5, -0.5, 0.25])  # beta * h
    close(diag["accuracy"], [1.0, 0.0, 1.0])
    loss[2].backward()
    close(chosen.grad, [0.0, 0.0, -0.5])


def test_kto_loss_hand_values():
    """beta = 1, lambda_D = 1, lambda_U = 2; mismatched log-ratios 1 and 3 give z0 = 2.

    Desirable, ratio 2:          1 - sigmoid(2 - 2) = 1/2.
    Undesirable, ratio 2 + ln 3: 2 * (1 - sigmoid(2 - (2 + ln 3))) = 2 * (1 - 1/4) = 3/2.
    Desirable, ratio 2 + ln 3:   1 - sigmoid(ln 3) = 1/4.
    d loss_0 / d logps_0 = -beta * sigmoid'(0) = -1/4; z0 is detached, so the mismatched pairs
    get no gradient.
    """
    logps = t(-1.0, -1.0 + LN3, -2.0 + LN3, grad=True)
    ref_logps = t(-3.0, -3.0, -4.0)
    kl_logps = t(-1.0, 0.0, grad=True)
    kl_ref = t(-2.0, -3.0)
    desirable = torch.tensor([True, False, True])
    loss, diag = kto_loss(logps, ref_logps, desirable, kl_logps, kl_ref, beta=1.0,
                          desirable_weight=1.0, undesirable_weight=2.0)
    close(loss, [0.5, 1.5, 0.25])
    close(diag["kl"], 2.0)
    close(diag["rewards"], [2.0, 2.0 + LN3, 2.0 + LN3])
    loss[0].backward()
    close(logps.grad, [-0.25, 0.0, 0.0])
    assert kl_logps.grad is None or torch.all(kl_logps.grad == 0)


def test_kto_reference_point_is_clamped_at_zero():
    """Mismatched log-ratios -1 and -3 average -2 < 0, so z0 = max(0, -2) = 0 (KL >= 0).

    Desirable with ratio 0: 1 - sigmoid(0) = 1/2; undesirable with ratio ln 3 and beta = 1:
    1 - sigmoid(0 - ln 3) = 3/4.
    """
    loss, diag = kto_loss(t(0.0, LN3), t(0.0, 0.0), torch.tensor([True, False]),
                          t(-1.0, -3.0), t(0.0, 0.0), beta=1.0)
    close(diag["kl"], 0.0)
    close(loss, [0.5, 0.75])


def test_preferred_ft_loss_is_mean_token_nll_of_chosen():
    """-(-6) / 3 = 2 and -(-1) / max(0, 1) = 1; the gradient of the first is -1/3."""
    chosen = t(-6.0, -1.0, grad=True)
    loss, _ = preferred_ft_loss(chosen, t(3.0, 0.0))
    close(loss, [2.0, 1.0])
    loss[0].backward()
    close(chosen.grad, [-1 / 3, 0.0])


def test_unlikelihood_loss_hand_values():
    """Chosen tokens with p = 1/2, 1/4: mean NLL (ln 2 + ln 4) / 2 = 1.5 ln 2.

    Rejected tokens with p = 1/2, 3/4: mean -log(1 - p) = (ln 2 + ln 4) / 2 = 1.5 ln 2.
    With alpha = 2 the loss is 1.5 ln 2 + 3 ln 2 = 4.5 ln 2. The third column is padding that
    holds log p = 0 (p = 1, so -log(1 - p) would be infinite): it must not reach the loss or
    the gradient. d loss / d log p_r,0 = alpha * p / (1 - p) / 2 = 2 * 1 / 2 = 1.
    """
    chosen = t(math.log(0.5), math.log(0.25), 0.0).reshape(1, 3)
    rejected = t(math.log(0.5), math.log(0.75), 0.0).reshape(1, 3).requires_grad_()
    mask = torch.tensor([[True, True, False]])
    loss, diag = unlikelihood_loss(chosen, mask, rejected, mask, alpha=2.0)
    close(loss, [4.5 * LN2])
    close(diag["nll"], [1.5 * LN2])
    close(diag["unlikelihood"], [1.5 * LN2])
    loss.sum().backward()
    assert torch.isfinite(rejected.grad).all()
    close(rejected.grad, [[1.0, 3.0, 0.0]])  # 2 * (3/4) / (1/4) / 2 = 3 for the second token


def test_unlikelihood_clamps_certain_tokens():
    """A rejected token with p = 1 gives -log(eps) = -log(1e-5) ~ 11.51, not infinity."""
    chosen = t(0.0).reshape(1, 1)
    rejected = t(0.0).reshape(1, 1)
    mask = torch.tensor([[True]])
    loss, diag = unlikelihood_loss(chosen, mask, rejected, mask)
    close(diag["unlikelihood"], [-math.log(1e-5)])
    assert torch.isfinite(loss).all()


def test_kto_reference_point_is_gathered_over_processes_before_the_clamp():
    """Two processes' mismatched log-ratios, (3, -1) and (1, -3).

    One process holding all four gets z0 = max(0, (3 - 1 + 1 - 3) / 4) = 0. Clamping per
    process gives process 0 max(0, 1) = 1 (and process 1 max(0, -1) = 0). With ``reduce``
    summing over both processes, process 0 gets 0, as the single process does.
    """
    from rlhfkit.losses import kto_loss

    a = torch.tensor([3.0, -1.0])
    b = torch.tensor([1.0, -3.0])
    other = torch.stack([b.sum(), torch.tensor(2.0)])

    def reduce(t):  # process 0's view: its sums plus process 1's
        return t + other

    logps, ref = torch.tensor([0.5]), torch.tensor([0.0])
    _, alone = kto_loss(logps, ref, torch.tensor([True]), a, torch.zeros(2))
    assert alone["kl"].item() == pytest.approx(1.0)
    _, gathered = kto_loss(logps, ref, torch.tensor([True]), a, torch.zeros(2), reduce=reduce)
    _, together = kto_loss(logps, ref, torch.tensor([True]), torch.cat([a, b]), torch.zeros(4))
    assert gathered["kl"].item() == pytest.approx(together["kl"].item()) == pytest.approx(0.0)
