"""Preference-based RL for control (Christiano et al. 2017): maths, reward learning, a short run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rlhfkit.control.agent import gae
from rlhfkit.control.reward import (
    PreferenceData,
    RewardEnsemble,
    Segments,
    disagreement,
    oracle_preferences,
    select_queries,
    train_reward_model,
)
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.losses import segment_preference_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _segments(obs: list[list[float]], rewards: list[list[float]] | None = None) -> Segments:
    """Segments with 1-d observations and continuous 1-d zero actions: (N, K, 1)."""
    o = torch.tensor(obs, dtype=torch.float32).unsqueeze(-1)
    r = torch.tensor(rewards if rewards is not None else np.zeros(o.shape[:2]), dtype=torch.float32)
    return Segments(o, torch.zeros_like(o), r)


# -- maths ---------------------------------------------------------------------------------------


def test_segment_preference_loss_by_hand():
    """Loss = -(mu log sigmoid(R1 - R2) + (1 - mu) log sigmoid(R2 - R1)), R the segment sum.

    Pair 0: R1 = 1 + 0.5 = 1.5, R2 = 0, mu = 1 -> log(1 + e^-1.5) = 0.201413.
    Pair 1: R1 = R2 = 0.25, a tie mu = 1/2 -> -(log 1/2) = log 2 = 0.693147.
    Pair 2: R1 = 2, R2 = 0, mu = 0 (the second was preferred) -> log(1 + e^2) = 2.126928.
    Accuracy counts strict labels only: pair 0 right, pair 2 wrong -> 0.5. Margin = (1.5+0+2)/3.
    """
    r1 = torch.tensor([[1.0, 0.5], [0.25, 0.0], [1.0, 1.0]])  # (B=3, K=2)
    r2 = torch.tensor([[0.0, 0.0], [0.0, 0.25], [0.5, -0.5]])
    mu = torch.tensor([1.0, 0.5, 0.0])
    loss, diag = segment_preference_loss(r1, r2, mu)
    torch.testing.assert_close(loss, torch.tensor([0.201413, 0.693147, 2.126928]), atol=1e-5,
                               rtol=0)
    assert diag["accuracy"].item() == pytest.approx(0.5)
    assert diag["margin"].item() == pytest.approx(3.5 / 3)
    # eq. 1 written as exp / (exp + exp) for pair 0
    p = math.exp(1.5) / (math.exp(1.5) + math.exp(0.0))
    assert loss[0].item() == pytest.approx(-math.log(p), abs=1e-6)


def test_segment_preference_loss_is_symmetric():
    """Swapping the segments and flipping mu gives the same loss."""
    r1, r2 = torch.randn(5, 4), torch.randn(5, 4)
    mu = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    torch.testing.assert_close(segment_preference_loss(r1, r2, mu)[0],
                               segment_preference_loss(r2, r1, 1 - mu)[0])


def _two_member_ensemble() -> RewardEnsemble:
    """Member 0 says r(o, a) = o, member 1 says r(o, a) = -o (input is [o, a], a = 0)."""
    model = RewardEnsemble(obs_dim=1, action_dim=1, discrete=False, members=2)
    for m, sign in enumerate((1.0, -1.0)):
        linear = nn.Linear(2, 1)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor([[sign, 0.0]]))
            linear.bias.zero_()
        model.members[m] = linear
    return model


def test_disagreement_by_hand_and_query_selection():
    """One-step segments: s1 has o = a_i, s2 has o = 0, so P_0 = sigmoid(a), P_1 = sigmoid(-a).

    The population variance of two values is ((P_0 - P_1) / 2)^2; it grows with |a|, so among
    a = [0, 1, -3, 2] the most disputed pair is index 2, then 3, then 1, and pair 0 (a = 0, both
    members say 1/2) has none.
    """
    a = [0.0, 1.0, -3.0, 2.0]
    seg_1, seg_2 = _segments([[x] for x in a]), _segments([[0.0] for _ in a])
    model = _two_member_ensemble()
    expected = torch.tensor([((1 / (1 + math.exp(-x)) - 1 / (1 + math.exp(x))) / 2) ** 2
                             for x in a])
    torch.testing.assert_close(disagreement(model, seg_1, seg_2), expected)
    assert select_queries(model, seg_1, seg_2, 1).tolist() == [2]
    assert select_queries(model, seg_1, seg_2, 3).tolist() == [2, 3, 1]


def test_oracle_prefers_higher_true_return():
    """No noise: 1 if the first segment's true return is higher, 0 if lower, 1/2 if equal."""
    seg_1 = _segments([[0, 0], [0, 0], [0, 0]], rewards=[[1, 1], [1, 0], [0, 0]])
    seg_2 = _segments([[0, 0], [0, 0], [0, 0]], rewards=[[1, 0], [1, 1], [0, 0]])
    assert oracle_preferences(seg_1, seg_2).tolist() == [1.0, 0.0, 0.5]
    # With Bradley–Terry noise a gap of 1 at temperature 1 is right sigmoid(1) = 73% of the time.
    many_1 = _segments([[0]] * 4000, rewards=[[1.0]] * 4000)
    many_2 = _segments([[0]] * 4000, rewards=[[0.0]] * 4000)
    noisy = oracle_preferences(many_1, many_2, noise=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert noisy.mean().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.03)


def test_gae_by_hand():
    """Three steps of reward 1, values 0, gamma = lam = 1, terminal at the end: A = [3, 2, 1].

    With the episode truncated instead (not terminated) and V(o_3) = 10, the last step
    bootstraps: A = [13, 12, 11].
    """
    rewards = torch.ones(3, 1)
    values = torch.zeros(3, 1)
    ends = torch.tensor([[0.0], [0.0], [1.0]])
    adv = gae(rewards, values, torch.zeros(3, 1), ends, ends, 1.0, 1.0)
    assert adv.squeeze(-1).tolist() == [3.0, 2.0, 1.0]
    next_values = torch.tensor([[0.0], [0.0], [10.0]])
    adv = gae(rewards, values, next_values, torch.zeros(3, 1), ends, 1.0, 1.0)
    assert adv.squeeze(-1).tolist() == [13.0, 12.0, 11.0]


# -- reward learning and a short run on CartPole -------------------------------------------------


def _random_cartpole_runner(steps: int, seed: int = 0):
    pytest.importorskip("gymnasium")
    from rlhfkit.control.agent import ActorCritic
    from rlhfkit.control.train import ControlConfig, Runner, _make_envs

    torch.manual_seed(seed)
    runner = Runner(_make_envs(ControlConfig(num_envs=4)), seed, keep=1000)
    runner.rollout(ActorCritic(4, 2), steps)  # a fresh policy is close to uniform
    return runner


def test_reward_model_ranks_held_out_segments_by_true_return():
    """Fitted on 300 oracle labels, the ensemble orders unseen segment pairs by true return."""
    runner = _random_cartpole_runner(1000)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_1, train_2 = (runner.sample_segments(300, 25, rng) for _ in range(2))
    data = PreferenceData()
    data.add(train_1, train_2, oracle_preferences(train_1, train_2))
    model = RewardEnsemble(4, 2, members=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stats = train_reward_model(model, data, opt, epochs=30, rng=rng)
    assert stats["rewards/accuracy"] > 0.8

    test_1, test_2 = (runner.sample_segments(400, 25, rng) for _ in range(2))
    true_diff = test_1.true_rewards.sum(-1) - test_2.true_rewards.sum(-1)
    with torch.no_grad():
        pred_diff = (model.reward(test_1.obs, test_1.actions).sum(-1)
                     - model.reward(test_2.obs, test_2.actions).sum(-1))
    strict = true_diff != 0
    assert strict.sum() > 100
    accuracy = ((pred_diff > 0) == (true_diff > 0))[strict].float().mean().item()
    assert accuracy > 0.8, accuracy


def test_agent_on_learned_reward_beats_random_policy(tmp_path):
    """~8k CartPole steps and 100 labels: the learned-reward agent clearly beats random play.

    A uniform random policy lasts about 22 steps; the agent never sees the environment's reward.
    """
    pytest.importorskip("gymnasium")
    from rlhfkit.control.train import ControlConfig, train_control

    random_return = float(np.mean(_random_cartpole_runner(500, seed=1).returns))
    cfg = ControlConfig(total_steps=8192, labels=100, reward_update_every=1024, reward_epochs=15,
                        compare_true_reward=False, output_dir=str(tmp_path), seed=0)
    rows = train_control(cfg)["learned"]
    final = rows[-1]
    assert final["labels"] == 100
    assert final["true_return"] > max(3 * random_return, 60), (random_return, final)
    logged = read_metrics(tmp_path)
    assert {"labels", "true_return", "predicted_return"} <= set(logged[-1])
    assert logged[-1]["predicted_return"] is not None
    assert (tmp_path / "learning_curve.png").exists()
    assert (tmp_path / "config.yaml").exists()


def test_cli_control_stage(tmp_path):
    """``rlhfkit control`` parses its flags and runs both agents end to end."""
    pytest.importorskip("gymnasium")
    from rlhfkit.cli.main import main

    rc = main(["control", "--env", "CartPole-v1", "--labels", "20", "--total-steps", "1024",
               "--reward-update-every", "512", "--reward-epochs", "2", "--no-plot",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    sources = {row["reward_source"] for row in read_metrics(tmp_path)}
    assert sources == {"learned", "true"}


def test_continuous_actions_run_on_pendulum(tmp_path):
    """Pendulum-v1 (Box actions, no termination): segments carry (K, 1) float actions and the
    learned-reward agent runs end to end. A smoke test: learning Pendulum takes far longer."""
    pytest.importorskip("gymnasium")
    from rlhfkit.control.train import ControlConfig, train_control

    cfg = ControlConfig(env="Pendulum-v1", total_steps=2048, labels=20, reward_update_every=512,
                        reward_epochs=2, compare_true_reward=False, plot=False,
                        output_dir=str(tmp_path))
    rows = train_control(cfg)["learned"]
    assert rows[-1]["labels"] == 20
    assert rows[-1]["true_return"] < 0 and rows[-1]["predicted_return"] is not None
