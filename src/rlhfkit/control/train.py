"""``rlhfkit control``: an agent learns a Gymnasium task from segment comparisons.

Christiano et al. (2017), "Deep Reinforcement Learning from Human Preferences", section 2.2: three
processes share a policy ``pi`` and a reward predictor ``r_hat``.

1. ``pi`` acts in the environment and is trained by RL (here PPO) on ``r_hat``, never on the
   environment's reward;
2. pairs of trajectory segments ``(s1, s2)`` are picked from ``pi``'s recent episodes, where the
   ensemble disagrees most, and sent to a labeler (here a synthetic oracle on the true return);
3. ``r_hat`` is fitted to the growing set of comparisons by Bradley–Terry.

The paper runs them asynchronously; here they alternate, ``r_hat`` refitted every
``--reward-update-every`` environment steps while its label budget lasts, which is the same
schedule in one process. The same agent trained on the true reward is run next to it for
comparison. The run folder gets ``config.yaml``, ``metrics.jsonl`` and ``learning_curve.png``.

Termination. CartPole pays +1 on every step, so the only signal is *when the episode ends*. A
segment that reaches the end is padded with the absorbing terminal state (true reward 0), so the
oracle prefers the segment that survives longer and ``r_hat`` learns that failing states are bad.
The learned reward is shifted so that the absorbing state scores 0 on average and scaled to unit
standard deviation (section 2.2.1 normalises ``r_hat``); then ending the episode (value 0 from
there on) is a loss exactly when living states score above the absorbing one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit import config as cfglib
from rlhfkit.control.agent import ActorCritic, PPOHyper, ReturnScaler, gae, ppo_update
from rlhfkit.control.reward import (
    PreferenceData,
    RewardEnsemble,
    Segments,
    oracle_preferences,
    select_queries,
    train_reward_model,
)


@dataclass
class ControlConfig:
    """Preference-based RL for control (``rlhfkit control``).

    Fields left at ``None`` take the environment's preset (:data:`ENV_PRESETS`), else the
    CartPole settings in :data:`BASE_PRESET`; a flag or YAML key overrides either.
    """

    env: str = "CartPole-v1"
    """Gymnasium environment id (Discrete or Box actions: CartPole-v1, Pendulum-v1, ...)."""
    labels: int = 500
    """Label budget: comparisons the labeler is asked for over the whole run."""
    total_steps: int | None = None
    """Environment steps for each agent (None: the env's preset; CartPole 100k)."""
    output_dir: str = "runs/control"
    """Run folder: config.yaml, metrics.jsonl, learning_curve.png, report.html."""
    seed: int = 0
    """Seed of the environments, networks and query sampling."""
    num_envs: int | None = None
    """Environments stepped side by side (None: preset)."""
    rollout_steps: int | None = None
    """Steps per environment between PPO updates (None: preset)."""
    learning_rate: float | None = None
    """Adam learning rate of the policy and value networks (None: preset)."""
    gamma: float | None = None
    """PPO discount (None: preset; 0.99 for CartPole, 0.9 for Pendulum)."""
    gae_lambda: float | None = None
    """GAE lambda (None: preset)."""
    update_epochs: int | None = None
    """PPO epochs over each rollout (None: preset)."""
    minibatches: int | None = None
    """Mini-batches per PPO epoch (None: preset)."""
    entropy_coef: float | None = None
    """Entropy bonus of the PPO loss (None: preset)."""
    log_std_init: float | None = None
    """Initial log standard deviation of a continuous (Gaussian) policy (None: preset)."""
    scale_rewards: bool | None = None
    """Divide the agent's rewards by a running std of the discounted return (None: preset)."""
    segment_length: int = 25
    """Steps in a compared segment (the paper uses 1–2 s of play)."""
    initial_labels: float = 0.25
    """Fraction of the budget labelled on the untrained (random) policy before RL starts."""
    reward_update_every: int | None = None
    """Environment steps between two rounds of querying labels and refitting the reward model
    (None: preset)."""
    label_steps_fraction: float = 0.5
    """Labels after the initial ones are spread over this fraction of the run (front-loaded, as
    the paper's decaying label rate)."""
    candidates_per_query: int = 10
    """Random segment pairs scored for disagreement per label asked (section 2.2.4)."""
    ensemble_members: int = 3
    """Reward predictors in the ensemble."""
    reward_epochs: int = 20
    """Epochs over the comparisons at each refit."""
    reward_learning_rate: float = 1e-3
    """Adam learning rate of the reward ensemble."""
    oracle_noise: float = 0.0
    """Bradley–Terry temperature of the synthetic oracle (0: always prefers the higher return)."""
    compare_true_reward: bool = True
    """Also train the same agent on the environment's reward, for the comparison."""
    plot: bool = True
    """Write learning_curve.png (needs matplotlib)."""


BASE_PRESET: dict[str, Any] = {
    "total_steps": 100_000, "num_envs": 4, "rollout_steps": 128, "learning_rate": 1e-3,
    "gamma": 0.99, "gae_lambda": 0.95, "update_epochs": 4, "minibatches": 4,
    "entropy_coef": 0.01, "log_std_init": 0.0, "scale_rewards": False,
    "reward_update_every": 2048,
}
"""Settings of the fields left at None: cleanrl's CartPole PPO with a larger learning rate."""

ENV_PRESETS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {},
    "Pendulum-v1": {"total_steps": 200_000, "num_envs": 8, "rollout_steps": 256,
                    "gamma": 0.9, "update_epochs": 10, "entropy_coef": 0.0,
                    "scale_rewards": True, "reward_update_every": 4096},
}
"""Per-environment overrides of :data:`BASE_PRESET` (see docs/control.md for how they were chosen)."""


def resolve_preset(cfg: ControlConfig) -> ControlConfig:
    """A copy of ``cfg`` with every ``None`` field filled from the env's preset."""
    preset = {**BASE_PRESET, **ENV_PRESETS.get(cfg.env, {})}
    return dataclasses.replace(cfg, **{k: v for k, v in preset.items()
                                       if getattr(cfg, k) is None})


def _make_envs(cfg: ControlConfig):
    try:
        import gymnasium as gym
    except ImportError as err:  # errors for people: name the extra
        raise ImportError("rlhfkit control needs gymnasium: pip install 'rlhfkit[control]'") from err
    envs = [gym.make(cfg.env) for _ in range(cfg.num_envs)]
    if not isinstance(envs[0].action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise ValueError(f"{cfg.env}: the PPO agent here needs Discrete or Box actions")
    return envs


def _action_spec(env) -> tuple[int, bool]:
    """(action_dim, discrete): the number of actions, or the size of the action vector."""
    if hasattr(env.action_space, "n"):
        return int(env.action_space.n), True
    return int(np.prod(env.action_space.shape)), False


@dataclass
class Episode:
    """One finished episode, kept for cutting segments."""

    obs: np.ndarray
    """(L, D) observations."""
    actions: np.ndarray
    """(L,) actions."""
    rewards: np.ndarray
    """(L,) true rewards."""
    terminated: bool
    final_obs: np.ndarray
    """(D,) the observation the last step led to."""


class Runner:
    """Steps ``N`` environments, keeping the current episodes and the recently finished ones."""

    def __init__(self, envs: list, seed: int, keep: int = 200) -> None:
        self.envs = envs
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        self.current: list[list[tuple]] = [[] for _ in envs]
        self.finished: deque[Episode] = deque(maxlen=keep)
        self.returns: deque[float] = deque(maxlen=10)  # true returns of the last episodes

    def rollout(self, agent: ActorCritic, steps: int) -> dict[str, torch.Tensor]:
        """Play ``steps`` steps in each environment; returns (T, N, ...) tensors."""
        n = len(self.envs)
        buf: dict[str, list] = {k: [] for k in ("obs", "actions", "logprobs", "next_obs",
                                                "true_rewards", "terminated", "ends")}
        for _ in range(steps):
            obs = torch.tensor(self.obs, dtype=torch.float32)  # (N, D), a copy: self.obs changes
            with torch.no_grad():
                actions, logprobs, _ = agent.act(obs)
            next_obs = np.empty_like(self.obs)
            rewards, terms, ends = np.zeros(n), np.zeros(n), np.zeros(n)
            for i, env in enumerate(self.envs):
                action = self.env_action(env, actions[i])
                o, r, term, trunc, _ = env.step(action)
                next_obs[i], rewards[i], terms[i], ends[i] = o, r, term, term or trunc
                self.current[i].append((self.obs[i].copy(), action, float(r)))
                if term or trunc:
                    ob, act, rew = map(np.array, zip(*self.current[i]))
                    self.finished.append(Episode(ob, act, rew, bool(term), o))
                    self.returns.append(float(rew.sum()))
                    self.current[i] = []
                    o, _ = env.reset()
                self.obs[i] = o
            for k, v in zip(buf, (obs, actions, logprobs, next_obs, rewards, terms, ends)):
                buf[k].append(torch.tensor(np.asarray(v), dtype=torch.float32)
                              if k != "actions" else v)
        return {k: torch.stack(v) for k, v in buf.items()}

    @staticmethod
    def env_action(env, action: torch.Tensor):
        """The action the environment executes: an int, or the sample clipped to the bounds."""
        if hasattr(env.action_space, "n"):
            return int(action)
        return np.clip(action.numpy(), env.action_space.low, env.action_space.high)

    def sample_segments(self, count: int, length: int, rng: np.random.Generator) -> Segments:
        """Cut ``count`` random segments of ``length`` steps from the finished episodes."""
        episodes = [e for e in self.finished if e.terminated or len(e.actions) >= length]
        obs, actions, rewards, absorbing = [], [], [], []
        for j in rng.integers(0, len(episodes), size=count):
            e = episodes[j]
            last = len(e.actions) - 1 if e.terminated else len(e.actions) - length
            start = int(rng.integers(0, last + 1))
            take = min(length, len(e.actions) - start)
            pad = length - take  # steps in the absorbing state after termination
            obs.append(np.concatenate([e.obs[start:start + take], np.repeat(e.final_obs[None], pad, 0)]))
            actions.append(np.concatenate([e.actions[start:start + take], np.zeros((pad, *e.actions.shape[1:]), e.actions.dtype)]))
            rewards.append(np.concatenate([e.rewards[start:start + take], np.zeros(pad)]))
            absorbing.append(np.arange(length) >= take)
        actions = np.stack(actions)
        return Segments(torch.as_tensor(np.stack(obs), dtype=torch.float32),
                        torch.as_tensor(actions, dtype=torch.float32 if actions.ndim == 3 else None),
                        torch.as_tensor(np.stack(rewards), dtype=torch.float32),
                        torch.as_tensor(np.stack(absorbing)))


def label_target(step: int, cfg: ControlConfig) -> int:
    """Labels that should have been asked by env step ``step`` (a square-root schedule)."""
    first = int(cfg.labels * cfg.initial_labels)
    span = max(1.0, cfg.label_steps_fraction * cfg.total_steps)
    return first + int((cfg.labels - first) * math.sqrt(min(1.0, step / span)))


def query_and_label(runner: Runner, model: RewardEnsemble, data: PreferenceData, n: int,
                    cfg: ControlConfig, rng: np.random.Generator,
                    generator: torch.Generator) -> None:
    """Pick the ``n`` most disputed of ``n * candidates_per_query`` random pairs, label them."""
    pool = n * cfg.candidates_per_query
    seg_1 = runner.sample_segments(pool, cfg.segment_length, rng)
    seg_2 = runner.sample_segments(pool, cfg.segment_length, rng)
    idx = select_queries(model, seg_1, seg_2, n)
    data.add(seg_1[idx], seg_2[idx],
             oracle_preferences(seg_1[idx], seg_2[idx], cfg.oracle_noise, generator))


@torch.no_grad()
def reward_normaliser(model: RewardEnsemble, data: PreferenceData) -> tuple[float, float]:
    """(shift, scale): the mean reward of absorbing steps and the std over all labelled steps."""
    segs = Segments.cat([data.seg_1, data.seg_2])  # type: ignore[list-item]
    rewards = model.reward(segs.obs, segs.actions)  # (2|D|, K)
    shift = rewards[segs.absorbing].mean().item() if segs.absorbing.any() else rewards.mean().item()
    return shift, rewards.std().item() + 1e-8


def run_agent(cfg: ControlConfig, learned: bool, log) -> list[dict[str, Any]]:
    """Train PPO on the learned reward (``learned``) or on the environment's reward."""
    cfg = resolve_preset(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    envs = _make_envs(cfg)
    obs_dim = envs[0].observation_space.shape[0]
    action_dim, discrete = _action_spec(envs[0])
    runner = Runner(envs, cfg.seed)
    agent = ActorCritic(obs_dim, action_dim, continuous=not discrete,
                        log_std_init=cfg.log_std_init)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    hp = PPOHyper(learning_rate=cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                  update_epochs=cfg.update_epochs, minibatches=cfg.minibatches,
                  entropy_coef=cfg.entropy_coef)
    scaler = ReturnScaler(cfg.num_envs, cfg.gamma) if cfg.scale_rewards else None
    model = RewardEnsemble(obs_dim, action_dim, discrete, members=cfg.ensemble_members)
    reward_opt = torch.optim.Adam(model.parameters(), lr=cfg.reward_learning_rate)
    data, shift, scale, reward_stats = PreferenceData(), 0.0, 1.0, {}
    pred_returns: deque[float] = deque(maxlen=10)
    pred_running = np.zeros(cfg.num_envs)
    rows: list[dict[str, Any]] = []
    step, last_refit = 0, -cfg.reward_update_every
    while step < cfg.total_steps:
        # -- 1. rollout ------------------------------------------------------------------------
        batch = runner.rollout(agent, cfg.rollout_steps)  # (T, N, ...)
        step += cfg.rollout_steps * cfg.num_envs
        # -- 2. labels and reward model (on the learned-reward agent only) ---------------------
        if learned and step - last_refit >= cfg.reward_update_every and runner.finished:
            want = min(cfg.labels, label_target(step, cfg)) - len(data)
            if want > 0:
                query_and_label(runner, model, data, want, cfg, rng, generator)
                reward_stats = train_reward_model(model, data, reward_opt, cfg.reward_epochs,
                                                  rng=rng)
                shift, scale = reward_normaliser(model, data)
            last_refit = step  # (until an episode has finished there is nothing to cut)
        # -- 3. rewards and advantages -----------------------------------------------------------
        if learned:
            with torch.no_grad():
                executed = batch["actions"]  # the reward model saw what the env executed
                if not discrete:
                    low, high = envs[0].action_space.low, envs[0].action_space.high
                    executed = executed.clamp(torch.as_tensor(low), torch.as_tensor(high))
                rewards = (model.reward(batch["obs"], executed) - shift) / scale  # (T, N)
            for t in range(rewards.shape[0]):  # predicted return of the episodes, for the log
                pred_running += rewards[t].numpy()
                for i in np.flatnonzero(batch["ends"][t].numpy()):
                    pred_returns.append(float(pred_running[i]))
                    pred_running[i] = 0.0
        else:
            rewards = batch["true_rewards"]
        if scaler is not None:
            rewards = scaler(rewards, batch["ends"])
        with torch.no_grad():
            values = agent.value(batch["obs"])  # (T, N)
            next_values = agent.value(batch["next_obs"])  # (T, N)
        advantages = gae(rewards, values, next_values, batch["terminated"], batch["ends"],
                         hp.gamma, hp.gae_lambda)
        returns = advantages + values
        # -- 4. PPO update -----------------------------------------------------------------------
        stats = ppo_update(agent, optimizer, batch["obs"].flatten(0, 1),
                           batch["actions"].flatten(0, 1), batch["logprobs"].flatten(0, 1),
                           advantages.flatten(0, 1), returns.flatten(0, 1), hp, generator)
        # -- 5. log ------------------------------------------------------------------------------
        row = {"reward_source": "learned" if learned else "true", "step": step,
               "labels": len(data),
               "true_return": float(np.mean(runner.returns)) if runner.returns else None,
               "predicted_return": float(np.mean(pred_returns)) if pred_returns else None,
               **stats, **reward_stats}
        rows.append(row)
        log(row)
    for env in envs:
        env.close()
    return rows


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """True return against env steps (both agents) and against labels used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for source, label in (("learned", "learned reward (preferences)"), ("true", "true reward")):
        pts = [(r["step"], r["true_return"]) for r in rows
               if r["reward_source"] == source and r["true_return"] is not None]
        if pts:
            ax1.plot(*zip(*pts), label=label)
    ax1.set(xlabel="environment steps", ylabel="true return (last 10 episodes)")
    ax1.legend()
    pts = [(r["labels"], r["true_return"]) for r in rows
           if r["reward_source"] == "learned" and r["true_return"] is not None]
    if pts:
        ax2.plot(*zip(*pts), marker=".")
    ax2.set(xlabel="labels used", ylabel="true return", title="learned-reward agent")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_control(cfg: ControlConfig) -> dict[str, Any]:
    """Run the preference-learning agent (and the true-reward one); write the run folder.

    Returns:
        ``{"learned": rows, "true": rows}``, the logged metrics of each agent.
    """
    cfg = resolve_preset(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks of 64 units: more threads only contend (much slower)
    try:
        with open(out / "metrics.jsonl", "w") as f:

            def log(row: dict[str, Any]) -> None:
                f.write(json.dumps(row) + "\n")
                f.flush()

            results["learned"] = run_agent(cfg, learned=True, log=log)
            if cfg.compare_true_reward:
                results["true"] = run_agent(cfg, learned=False, log=log)
    finally:
        torch.set_num_threads(threads)
    if cfg.plot:
        plot_curves(results["learned"] + results.get("true", []), out / "learning_curve.png")
    for source, rows in results.items():
        print(f"[control] {source} reward: final true return {rows[-1]['true_return']}, "
              f"labels {rows[-1]['labels']}")
    return results
