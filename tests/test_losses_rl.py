"""Policy-optimisation losses against plain loops and values worked out by hand."""

import math

import pytest
import torch

from rlhfkit.losses import (
    baseline_advantages,
    discounted_returns,
    entropy_from_logits,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    rloo_advantages,
    whiten,
)


def gae_reference(rewards, values, lengths, gamma, lam):
    """GAE written as the textbook loop over one episode at a time, in plain Python."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b][t + 1] if t + 1 < n else 0.0  # terminal after the last token
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_plain_loop(gamma, lam):
    torch.manual_seed(0)
    B, T = 4, 7
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    lengths = [7, 3, 1, 5]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    # Junk behind the mask must not leak in.
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e3))
    values = torch.where(mask.bool(), values, torch.full_like(values, -1e3))
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref = torch.tensor(gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam))
    assert torch.allclose(adv, ref, atol=1e-5)
    assert torch.allclose(ret, (ref + values) * mask, atol=1e-5)


def test_gae_lambda_one_is_returns_minus_values():
    """With lam = 1, A_t = G_t - V(s_t) (the values telescope away)."""
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    expected = (discounted_returns(rewards, mask, 0.9) - values) * mask
    assert torch.allclose(adv, expected, atol=1e-5)


def test_discounted_returns_by_hand():
    """r = [1, 0, 2] with gamma 0.5: G = [1 + 0 + 0.25*2, 0 + 0.5*2, 2] = [1.5, 1, 2]."""
    rewards = torch.tensor([[1.0, 0.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[1.5, 1.0, 2.0, 0.0]]


def test_kl_estimators_by_hand():
    """r = log 2: k1 = log 2, k2 = (log 2)^2 / 2, k3 = 1/2 - 1 + log 2."""
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(2)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(r)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(r * r / 2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 - 1 + r)
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k4")


def test_kl_estimators_unbiased_on_a_known_distribution():
    """Sampling from p = [.7, .2, .1] against q = [.2, .3, .5]: E k1 = E k3 = KL(p||q)."""
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    kl = float((p * (p / q).log()).sum())
    # Exact expectation over the three outcomes instead of a noisy Monte-Carlo sample.
    for kind in ("k1", "k3"):
        est = kl_penalty(p.log(), q.log(), kind)
        assert float((p * est).sum()) == pytest.approx(kl, rel=1e-5)
    assert (kl_penalty(p.log(), q.log(), "k3") >= 0).all()


def test_ppo_policy_loss_at_the_clip_edges():
    """eps = 0.2. Four tokens, ratios 1.5, 1.5, 0.5, 1.1 with advantages +1, -1, -1, +1.

    - rho=1.5, A=+1: clipped term -1.2 > -1.5, so loss = -1.2, no gradient (clipped).
    - rho=1.5, A=-1: unclipped 1.5 > 1.2, loss = 1.5, gradient flows (pessimistic bound).
    - rho=0.5, A=-1: clipped 0.8 > 0.5, loss = 0.8, clipped.
    - rho=1.1, A=+1: inside the range, loss = -1.1.
    """
    ratio = torch.tensor([1.5, 1.5, 0.5, 1.1])
    old = torch.zeros(4)
    logprobs = ratio.log().requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, diag = ppo_policy_loss(logprobs, old, adv, 0.2)
    assert torch.allclose(loss, torch.tensor([-1.2, 1.5, 0.8, -1.1]), atol=1e-6)
    assert diag["clipped"].tolist() == [1.0, 0.0, 1.0, 0.0]
    loss.sum().backward()
    # d loss / d logp = -A * rho where the unclipped term is active, else 0.
    assert torch.allclose(logprobs.grad, torch.tensor([0.0, 1.5, 0.0, -1.1]), atol=1e-6)
    # approx_kl_k3 = (rho - 1) - log rho
    assert diag["approx_kl_k3"][0].item() == pytest.approx(0.5 - math.log(1.5), rel=1e-5)


def test_ppo_policy_loss_equals_reinforce_gradient_at_ratio_one():
    """At rho = 1 the clipped surrogate's gradient is the policy gradient -A grad log pi."""
    logprobs = torch.tensor([-1.0, -2.0]).requires_grad_()
    adv = torch.tensor([0.5, -2.0])
    loss, _ = ppo_policy_loss(logprobs, logprobs.detach(), adv, 0.2)
    loss.sum().backward()
    assert torch.allclose(logprobs.grad, -adv)


def test_ppo_value_loss_clipped():
    """eps = 0.2, old V = 0, return 1. V = 0.5: clipped V = 0.2, errors 0.25 vs 0.64 -> 0.32.

    V = 0.1 (inside the range): both errors 0.81 -> 0.405. V = 1.5 (overshoots): clipped V =
    0.2, errors 0.25 vs 0.64 -> 0.32, clipped.
    """
    values = torch.tensor([0.5, 0.1, 1.5])
    loss, diag = ppo_value_loss(values, torch.zeros(3), torch.ones(3), 0.2)
    assert torch.allclose(loss, torch.tensor([0.32, 0.405, 0.32]), atol=1e-6)
    assert diag["clipped"].tolist() == [1.0, 0.0, 1.0]


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy_from_logits(torch.tensor([[0.0, -1e4]])).item() == pytest.approx(0, abs=1e-6)


def test_rloo_advantages_by_hand():
    """Scores [1, 2, 6]: baselines are the means of the others, [4, 3.5, 1.5]."""
    adv = rloo_advantages(torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]]))
    assert adv.tolist() == [[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_grpo_advantages_by_hand():
    """Scores [1, 2, 6]: mean 3, sample std sqrt(((-2)^2 + 1 + 9) / 2) = sqrt(7)."""
    scores = torch.tensor([[1.0, 2.0, 6.0]])
    adv = grpo_advantages(scores, eps=0.0)
    assert torch.allclose(adv, torch.tensor([[-2.0, -1.0, 3.0]]) / math.sqrt(7))
    assert grpo_advantages(scores, scale=False).tolist() == [[-2.0, -1.0, 3.0]]
    # A group whose samples all score alike gives zero advantage, not NaN.
    assert grpo_advantages(torch.full((1, 4), 0.3)).abs().max() == 0


def test_whiten_and_masked_mean():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 7.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(x, mask).item() == 4.0
    w = whiten(x, mask, eps=0.0)
    # mean 4, population std sqrt(5)
    assert torch.allclose(w, torch.tensor([[-3, -1, 0], [1, 3, 0]]) / math.sqrt(5))
    kept = whiten(x, mask, shift_mean=False, eps=0.0)
    assert masked_mean(kept, mask).item() == pytest.approx(4.0)


def test_whiten_and_mean_baseline_over_processes_equal_the_global_batch():
    """Process A holds [1, 3], process B holds [5, 7]; ``reduce`` adds B's partial sums to A's,
    as an all-reduce would. A then sees the global mean 4 and std sqrt(5), not its own 2 and 1."""
    x_a, mask_a = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    x_b = torch.tensor([5.0, 7.0])

    def reduce_with_b():
        # B's contributions in call order: (sum, count), then (sum of squared deviations
        # from the global mean 4, count)
        from_b = [torch.tensor([x_b.sum(), 2.0]), torch.tensor([((x_b - 4) ** 2).sum(), 2.0])]
        return lambda t: t + from_b.pop(0).double()

    w = whiten(x_a, mask_a, eps=0.0, reduce=reduce_with_b())
    assert torch.allclose(w, torch.tensor([[-3.0, -1.0, 0.0]]) / math.sqrt(5))
    adv = baseline_advantages(x_a, mask_a, "mean", reduce=reduce_with_b())
    assert adv.tolist() == [[-3.0, -1.0, 0.0]]
    # without the reduction A is centred on its own mean
    assert whiten(x_a, mask_a, eps=0.0).tolist() == [[-1.0, 1.0, 0.0]]


def test_reinforce_with_baselines_by_hand():
    """Returns [[2, 1], [0, -]]: mean baseline 1 -> [[1, 0], [-1, 0]]; value V = 0.5 -> G - 0.5."""
    returns = torch.tensor([[2.0, 1.0], [0.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert baseline_advantages(returns, mask, "none").tolist() == [[2.0, 1.0], [0.0, 0.0]]
    assert baseline_advantages(returns, mask, "mean").tolist() == [[1.0, 0.0], [-1.0, 0.0]]
    values = torch.full((2, 2), 0.5)
    assert baseline_advantages(returns, mask, "value", values).tolist() == [[1.5, 0.5],
                                                                             [-0.5, 0.0]]
    logprobs = torch.tensor([-1.0, -2.0]).requires_grad_()
    reinforce_loss(logprobs, torch.tensor([3.0, -1.0])).sum().backward()
    assert logprobs.grad.tolist() == [-3.0, 1.0]


# ---------------------------------------------------------------------------------------------
# GRPO's loss: the four ways of averaging tokens, clip-higher, and GSPO's sequence ratio
# ---------------------------------------------------------------------------------------------


def test_aggregate_token_loss_by_hand():
    """Two responses: tokens (1, 2, 3) and (4); 10 in all over 4 tokens.

    grpo: mean of the response means = (6/3 + 4/1) / 2 = 3; bnpo: 10 / 4 = 2.5;
    dr_grpo with max_length 4: 10 / (2 * 4) = 1.25; dapo with a generation-batch count of 8:
    10 / 8 = 1.25, and without one it is bnpo.
    """
    from rlhfkit.losses import aggregate_token_loss

    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])  # the 9s are padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_token_loss(loss, mask, "grpo").item() == pytest.approx(3.0)
    assert aggregate_token_loss(loss, mask, "bnpo").item() == pytest.approx(2.5)
    assert aggregate_token_loss(loss, mask, "dr_grpo", max_length=4).item() == pytest.approx(1.25)
    assert aggregate_token_loss(loss, mask, "dapo", normalizer=8).item() == pytest.approx(1.25)
    assert aggregate_token_loss(loss, mask, "dapo").item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="max_length"):
        aggregate_token_loss(loss, mask, "dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_token_loss(loss, mask, "mean")


def test_grpo_loss_by_hand():
    """One response, two tokens, advantage 1; pi(y_1) = 0.5 where the sampler gave 0.4.

    Token ratios 1.25 and 1. Token level, eps 0.2: token 1 is clipped to 1.2, so the surrogate
    per token is (-1.2, -1) and the bnpo mean -1.1. Clip-higher with eps_high 0.3 leaves 1.25:
    mean (-1.25 - 1) / 2 = -1.125. GSPO: s = exp(mean log ratio) = sqrt(1.25) = 1.1180, inside
    the clip, on both tokens: -1.1180. KL: the reference at half the policy's probability
    gives r = log 2 per token and k3 = e^-r - 1 + r = 0.5 - 1 + 0.6931 = 0.1931; beta 0.1 adds
    0.01931.
    """
    from rlhfkit.losses import grpo_loss

    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.4, 0.5]]))
    ref = logp - math.log(2.0)
    adv = torch.ones(1, 2)
    mask = torch.ones(1, 2)
    loss, diag = grpo_loss(logp, old, ref, adv, mask, clip_range=0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-1.1, abs=1e-6)
    assert diag["clipped"].tolist() == [[1.0, 0.0]]
    loss, _ = grpo_loss(logp, old, ref, adv, mask, clip_range=0.2, clip_range_high=0.3,
                        kl_coef=0.0)
    assert loss.item() == pytest.approx(-1.125, abs=1e-6)
    loss, diag = grpo_loss(logp, old, ref, adv, mask, clip_range=0.2, kl_coef=0.0,
                           importance_level="sequence")
    assert loss.item() == pytest.approx(-math.sqrt(1.25), abs=1e-6)
    assert diag["ratio"].tolist()[0] == pytest.approx([math.sqrt(1.25)] * 2, abs=1e-6)
    loss, diag = grpo_loss(logp, old, ref, adv, mask, clip_range=0.2, kl_coef=0.1)
    k3 = 0.5 - 1 + math.log(2.0)
    assert diag["kl"].item() == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(-1.1 + 0.1 * k3, abs=1e-6)


def test_grpo_loss_gradient_stops_at_the_clip_edge_and_gspo_clips_the_whole_response():
    """Token level: the clipped token gets no gradient, the other does. Sequence level with a
    ratio past the edge: no token gets a gradient."""
    from rlhfkit.losses import grpo_loss

    old = torch.log(torch.tensor([[0.4, 0.5]]))
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    logp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
    grpo_loss(logp, old, ref, torch.ones(1, 2), torch.ones(1, 2), kl_coef=0.0)[0].backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() != 0.0
    old_far = torch.log(torch.tensor([[0.2, 0.3]]))  # s = sqrt(2.5 * 5/3) = 2.04 > 1.2
    logp.grad = None
    grpo_loss(logp, old_far, ref, torch.ones(1, 2), torch.ones(1, 2), kl_coef=0.0,
              importance_level="sequence")[0].backward()
    assert logp.grad.abs().sum().item() == 0.0
