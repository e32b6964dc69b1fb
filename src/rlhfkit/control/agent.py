"""A small PPO agent for Gymnasium tasks with discrete or continuous actions (Schulman et al. 2017).

Written after cleanrl's ``ppo.py``: separate actor and critic MLPs, GAE(lambda), a clipped
ratio, per-mini-batch advantage normalisation and an entropy bonus. The agent does not know where
its rewards come from: :mod:`rlhfkit.control.train` feeds it either the environment's reward or
the learned one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from rlhfkit.losses import ppo_policy_loss


def _mlp(inp: int, out: int, hidden: int, out_std: float) -> nn.Sequential:
    layers = [nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
              nn.Linear(hidden, out)]
    for layer in layers:  # orthogonal init (cleanrl; Engstrom et al. 2020, "implementation matters")
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, np.sqrt(2) if layer is not layers[-1] else out_std)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Policy ``pi(a | o)`` and value ``V(o)``.

    Discrete: a categorical over ``action_dim`` actions. Continuous: a diagonal Gaussian over an
    ``action_dim`` vector with a state-independent learned log-std (cleanrl's
    ``ppo_continuous_action.py``); the environment clips the sample to its bounds.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 64,
                 continuous: bool = False, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.continuous = continuous
        self.actor = _mlp(obs_dim, action_dim, hidden, out_std=0.01)
        self.critic = _mlp(obs_dim, 1, hidden, out_std=1.0)
        if continuous:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def value(self, obs: Tensor) -> Tensor:
        """(B,) state values of (B, D) observations."""
        return self.critic(obs).squeeze(-1)

    def act(self, obs: Tensor, actions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or score given) actions.

        Returns:
            actions (B,) or (B, A), their log-probs (B,), and the policy entropy (B,).
        """
        if self.continuous:
            mean = self.actor(obs)  # (B, A)
            dist = Normal(mean, self.log_std.exp().expand_as(mean))
            if actions is None:
                actions = dist.sample()
            return actions, dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)
        dist = Categorical(logits=self.actor(obs))
        if actions is None:
            actions = dist.sample()
        return actions, dist.log_prob(actions), dist.entropy()


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor,
        episode_ends: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), plain loop over time.

    Args:
        rewards: (T, N) reward of step t.
        values: (T, N) ``V(o_t)``.
        next_values: (T, N) ``V(o_{t+1})`` of the observation the step led to (before any reset).
        terminated: (T, N) 1 if ``o_{t+1}`` is terminal: no bootstrap from it.
        episode_ends: (T, N) 1 if the episode ended (terminated or truncated) at step t: the
            advantage does not carry across the reset.
        gamma: Discount.
        lam: GAE lambda.

    Returns:
        (T, N) advantages; returns are ``advantages + values``.
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * (1 - terminated[t]) - values[t]
        last = delta + gamma * lam * (1 - episode_ends[t]) * last
        advantages[t] = last
    return advantages


@dataclass
class PPOHyper:
    """PPO's settings (cleanrl's CartPole defaults, with a larger learning rate)."""

    learning_rate: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5


class ReturnScaler:
    """Divides rewards by a running standard deviation of the discounted return.

    The reward scaling of Engstrom et al. (2020), "Implementation Matters in Deep Policy
    Gradients" (section 3, and gymnasium's ``NormalizeReward``): per environment keep
    ``G <- gamma * G + r`` (reset at episode ends), track the variance of ``G`` over all steps
    seen (Chan et al.'s parallel update), and scale ``r / sqrt(var + eps)``. Rewards are only
    scaled, never shifted, so the sign of a reward and the value of ending an episode keep
    their meaning.
    """

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8) -> None:
        self.gamma, self.eps = gamma, eps
        self.running = np.zeros(num_envs)
        self.count, self.mean, self.var = eps, 0.0, 1.0

    def update(self, returns: np.ndarray) -> None:
        """Fold a batch of discounted returns into the running mean and variance."""
        b_mean, b_var, b_count = float(returns.mean()), float(returns.var()), returns.size
        delta, total = b_mean - self.mean, self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.mean, self.var, self.count = self.mean + delta * b_count / total, m2 / total, total

    def __call__(self, rewards: Tensor, episode_ends: Tensor) -> Tensor:
        """Scale a (T, N) rollout of rewards; updates the statistics first, step by step."""
        seen = np.empty(tuple(rewards.shape))
        for t in range(rewards.shape[0]):
            self.running = self.gamma * self.running + rewards[t].numpy()
            seen[t] = self.running
            self.running = self.running * (1 - episode_ends[t].numpy())
        self.update(seen.reshape(-1))
        return rewards / float(np.sqrt(self.var + self.eps))


def ppo_update(agent: ActorCritic, optimizer: torch.optim.Optimizer, obs: Tensor,
               actions: Tensor, old_logprobs: Tensor, advantages: Tensor, returns: Tensor,
               hp: PPOHyper, generator: torch.Generator | None = None) -> dict[str, float]:
    """Clipped-surrogate PPO epochs over one rollout (Schulman et al. 2017, eq. 7).

    Args:
        agent: The policy and value networks.
        optimizer: Their optimizer.
        obs: (B, D) flattened rollout observations.
        actions: (B,) or (B, A) actions taken.
        old_logprobs: (B,) their log-probs when sampled.
        advantages: (B,) GAE advantages.
        returns: (B,) value targets.
        hp: PPO settings.
        generator: Random source of the mini-batch order.

    Returns:
        The last mini-batch's ``loss/policy``, ``loss/value`` and ``policy/entropy``.
    """
    batch = obs.shape[0]
    mb_size = batch // hp.minibatches
    stats: dict[str, float] = {}
    for _ in range(hp.update_epochs):
        order = torch.randperm(batch, generator=generator)
        for start in range(0, batch, mb_size):
            mb = order[start:start + mb_size]
            _, logprobs, entropy = agent.act(obs[mb], actions[mb])
            mb_adv = advantages[mb]
            mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            policy_loss = ppo_policy_loss(logprobs, old_logprobs[mb], mb_adv, hp.clip)[0].mean()
            value_loss = 0.5 * (agent.value(obs[mb]) - returns[mb]).pow(2).mean()
            loss = policy_loss + hp.value_coef * value_loss - hp.entropy_coef * entropy.mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), hp.max_grad_norm)
            optimizer.step()
            stats = {"loss/policy": policy_loss.item(), "loss/value": value_loss.item(),
                     "policy/entropy": entropy.mean().item()}
    return stats
