"""``rlhfkit control``: an agent learns a Gymnasium task from segment comparisons.

Christiano et al. (2017), "Deep Reinforcement Learning from Human Preferences", section 2.2: three
processes share a policy ``pi`` and a reward predictor ``r_hat``.

1. ``pi`` acts in the environment and is trained by RL (here PPO) on ``r_hat``, never on the
   environment's reward;
2. pairs of trajectory segments ``(s1, s2)`` are picked from ``pi``'s recent episodes, where the
   ensemble disagrees most, and sent to a labeler (a synthetic oracle on the true return, or
   people in the feedback app: :mod:`rlhfkit.control.labelers`);
3. ``r_hat`` is fitted to the growing set of comparisons by Bradley–Terry.

The paper runs them asynchronously. By default they alternate here, ``r_hat`` refitted every
``--reward-update-every`` environment steps while its label budget lasts, which is the same
schedule in one process and reproducible; ``--async-reward`` fits ``r_hat`` in a background
thread instead (:mod:`rlhfkit.control.learner`). The same agent trained on the true reward is run
next to it for comparison. The run folder gets ``config.yaml``, ``metrics.jsonl``,
``comparisons.jsonl``, ``learning_curve.png`` and ``report.html``.

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
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlhfkit import config as cfglib
from rlhfkit.config import bounds, only
from rlhfkit.control.agent import ActorCritic, PPOHyper, ReturnScaler, gae, ppo_update
from rlhfkit.control.labelers import OracleLabeler
from rlhfkit.control.learner import AsyncRewardLearner, RewardLearner
from rlhfkit.control.reward import RewardEnsemble, Segments
from rlhfkit.options import FeedbackOptions, RunOptions


@cfglib.stage_defaults(output_dir="runs/control")
@dataclass
class ControlConfig(only(RunOptions, "output_dir", "seed"), FeedbackOptions):
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
    num_envs: int | None = None
    """Environments stepped side by side (None: preset)."""
    rollout_steps: int | None = None
    """Steps per environment between PPO updates (None: preset)."""
    learning_rate: float | None = field(default=None, metadata=bounds(gt=0))
    """Adam learning rate of the policy and value networks (None: preset)."""
    gamma: float | None = field(default=None, metadata=bounds(ge=0, le=1))
    """PPO discount (None: preset; 0.99 for CartPole, 0.9 for Pendulum)."""
    gae_lambda: float | None = None
    """GAE lambda (None: preset)."""
    update_epochs: int | None = field(default=None, metadata=bounds(ge=1))
    """PPO epochs over each rollout (None: preset)."""
    minibatches: int | None = None
    """Mini-batches per PPO epoch (None: preset)."""
    entropy_coef: float | None = field(default=None, metadata=bounds(ge=0))
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
    labeler: Literal["oracle", "app"] = "oracle"
    """Who compares segments: the synthetic oracle, or people in the feedback app (the pairs
    are shown there as animations; serve it with `rlhfkit label serve --db FEEDBACK_DB`)."""
    feedback_project: str | None = None
    """Feedback project of the pairs (None: control-ENV); created if missing."""
    feedback_prompt: str | None = None
    """What annotators are asked (None: a per-environment description of the goal)."""
    feedback_overlap: int = 1
    """Annotators per pair in a new feedback project (their answers are averaged)."""
    label_timeout: float = 3600.0
    """Seconds to wait for the answers to one batch of queries; unanswered pairs are dropped."""
    label_poll_interval: float = 2.0
    """Seconds between two looks at the feedback store for answers."""
    render_width: int = 240
    """Width in pixels of the segment animations shown to people."""
    render_fps: float | None = None
    """Playback speed of the animations (None: the environment's own, 50 for CartPole: a
    25-step segment lasts half a second; 20 slows it down for people)."""
    async_reward: bool = False
    """Fit the reward model in a background thread while the policy keeps training, picking up
    new weights when a fit finishes (the paper's asynchronous setup; not reproducible)."""
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


def make_labeler(cfg: ControlConfig, generator: torch.Generator):
    """The synthetic oracle, or people in the feedback app (``--labeler app``)."""
    if cfg.labeler == "oracle":
        return OracleLabeler(cfg.oracle_noise, generator)
    if cfg.labeler == "app":
        from rlhfkit.control.labelers import AppLabeler

        project = cfg.feedback_project or f"control-{cfg.env}".replace("/", "-")
        return AppLabeler(cfg.feedback_db, project, cfg.env, prompt=cfg.feedback_prompt,
                          overlap=cfg.feedback_overlap, timeout=cfg.label_timeout,
                          poll_interval=cfg.label_poll_interval, width=cfg.render_width,
                          fps=cfg.render_fps)
    raise ValueError(f"labeler must be 'oracle' or 'app', got {cfg.labeler!r}")


def ask_for_labels(cfg: ControlConfig, step: int, runner: Runner, learner: Any, worker: Any,
                   rng: np.random.Generator, fits: int) -> Any:
    """Phase 2: label the most disputed segment pairs the schedule asks for, refit r_hat.

    Draws ``want * candidates_per_query`` random pairs and keeps the ``want`` the ensemble
    disagrees on most (``want`` = the schedule's labels minus those held). Returns the learner's
    update, or None (nothing wanted, or an asynchronous fit still running).
    """
    want = min(cfg.labels, label_target(step, cfg)) - len(learner.data)
    if want <= 0:
        return None
    pool = want * cfg.candidates_per_query
    seg_1 = runner.sample_segments(pool, cfg.segment_length, rng)
    seg_2 = runner.sample_segments(pool, cfg.segment_length, rng)
    if worker is None:
        return learner.round(seg_1, seg_2, want)
    worker.submit(seg_1, seg_2, want)
    # no RL on an untrained r_hat: wait for the first fit
    return worker.collect(wait=True) if fits == 0 else None


@torch.no_grad()
def learned_rewards(model: RewardEnsemble, batch: dict[str, torch.Tensor], env: Any,
                    discrete: bool, shift: float, scale: float) -> torch.Tensor:
    """Phase 3: (T, N) rewards of the rollout under r_hat, standardised as it was fitted."""
    executed = batch["actions"]  # the reward model saw what the env executed
    if not discrete:
        low, high = env.action_space.low, env.action_space.high
        executed = executed.clamp(torch.as_tensor(low), torch.as_tensor(high))
    return (model.reward(batch["obs"], executed) - shift) / scale


def run_agent(cfg: ControlConfig, learned: bool, log,
              log_comparisons: Callable[[Segments, Segments, torch.Tensor], None] | None = None
              ) -> list[dict[str, Any]]:
    """Train PPO on the learned reward (``learned``) or on the environment's reward.

    Args:
        cfg: The run's settings (``None`` fields take the env's preset).
        learned: Learn the reward from comparisons (else use the environment's reward).
        log: Called with each metrics row.
        log_comparisons: Called with every newly labelled batch ``(seg_1, seg_2, mu)``.
    """
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
    learner = worker = None
    if learned:
        kwargs = dict(labeler=make_labeler(cfg, generator), epochs=cfg.reward_epochs,
                      learning_rate=cfg.reward_learning_rate, on_labels=log_comparisons)
        if cfg.async_reward:  # the worker fits its own copy; `model` only loads its weights
            worker = AsyncRewardLearner.around(model, rng=np.random.default_rng(cfg.seed + 1),
                                               **kwargs)
            learner = worker.learner
        else:  # one process, one random stream: reproducible from --seed
            learner = RewardLearner(model, rng=rng, **kwargs)
    shift, scale, reward_stats, labels, fits = 0.0, 1.0, {}, 0, 0
    pred_returns: deque[float] = deque(maxlen=10)
    pred_running = np.zeros(cfg.num_envs)
    rows: list[dict[str, Any]] = []
    step, last_refit = 0, -cfg.reward_update_every
    try:
        while step < cfg.total_steps:
            # -- 1. rollout ----------------------------------------------------------------------
            batch = runner.rollout(agent, cfg.rollout_steps)  # (T, N, ...)
            step += cfg.rollout_steps * cfg.num_envs
            # -- 2. labels and reward model (on the learned-reward agent only) -------------------
            update = worker.collect() if worker is not None else None
            if (learned and step - last_refit >= cfg.reward_update_every and runner.finished
                    and not (worker is not None and worker.pending)):
                update = ask_for_labels(cfg, step, runner, learner, worker, rng, fits) or update
                last_refit = step  # (until an episode has finished there is nothing to cut)
            if update is not None:
                if worker is not None:  # the policy picks up the worker's new weights
                    model.load_state_dict(update.state)
                shift, scale, reward_stats = update.shift, update.scale, update.stats
                labels, fits = update.labels, update.fit
            # -- 3. rewards and advantages -------------------------------------------------------
            if learned:
                rewards = learned_rewards(model, batch, envs[0], discrete, shift, scale)
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
            # -- 4. PPO update -------------------------------------------------------------------
            stats = ppo_update(agent, optimizer, batch["obs"].flatten(0, 1),
                               batch["actions"].flatten(0, 1), batch["logprobs"].flatten(0, 1),
                               advantages.flatten(0, 1), returns.flatten(0, 1), hp, generator)
            # -- 5. log --------------------------------------------------------------------------
            row = {"reward_source": "learned" if learned else "true", "step": step,
                   "labels": labels,
                   "true_return": float(np.mean(runner.returns)) if runner.returns else None,
                   "predicted_return": float(np.mean(pred_returns)) if pred_returns else None,
                   **stats, **reward_stats}
            if learned:
                row["reward/fits"] = fits
            rows.append(row)
            log(row)
    finally:
        if worker is not None:
            worker.close()
        if learner is not None:
            learner.labeler.close()
        for env in envs:
            env.close()
    return rows


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """True return against env steps (both agents) and against labels used, as a PNG."""
    from rlhfkit.control.report import curves_figure

    fig = curves_figure(rows, title)
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def comparison_rows(seg_1: Segments, seg_2: Segments, mu: torch.Tensor) -> list[dict[str, Any]]:
    """One ``comparisons.jsonl`` row per labelled pair: ``mu`` and the two true returns."""
    r_1, r_2 = seg_1.true_rewards.sum(-1).tolist(), seg_2.true_rewards.sum(-1).tolist()
    return [{"mu": float(m), "true_return_1": a, "true_return_2": b}
            for m, a, b in zip(mu.tolist(), r_1, r_2)]


def train_control(cfg: ControlConfig) -> dict[str, Any]:
    """Run the preference-learning agent (and the true-reward one); write the run folder.

    The folder gets ``config.yaml`` (resolved), ``metrics.jsonl``, ``comparisons.jsonl`` (every
    label used, with the pair's true returns), ``learning_curve.png`` and ``report.html``.

    Returns:
        ``{"learned": rows, "true": rows}``, the logged metrics of each agent.
    """
    preset = {k: v for k, v in dataclasses.asdict(resolve_preset(cfg)).items()
              if getattr(cfg, k) is None and v is not None}
    cfg = resolve_preset(cfg)
    print(f"[control] {cfg.env} preset: " + ", ".join(f"{k}={v}" for k, v in preset.items()))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks of 64 units: more threads only contend (much slower)
    lock = threading.Lock()  # the async reward worker writes comparisons from its thread
    try:
        with open(out / "metrics.jsonl", "w") as f, open(out / "comparisons.jsonl", "w") as fc:

            def log(row: dict[str, Any]) -> None:
                f.write(json.dumps(row) + "\n")
                f.flush()

            def log_comparisons(seg_1: Segments, seg_2: Segments, mu: torch.Tensor) -> None:
                with lock:
                    fc.writelines(json.dumps(r) + "\n" for r in comparison_rows(seg_1, seg_2, mu))
                    fc.flush()

            results["learned"] = run_agent(cfg, learned=True, log=log,
                                           log_comparisons=log_comparisons)
            if cfg.compare_true_reward:
                results["true"] = run_agent(cfg, learned=False, log=log)
    finally:
        torch.set_num_threads(threads)
    if cfg.plot:
        plot_curves(results["learned"] + results.get("true", []), out / "learning_curve.png",
                    cfg.env)
        from rlhfkit.control.report import control_section
        from rlhfkit.evaluate.report import write_sections

        write_sections(out / "report.html", f"rlhfkit control: {cfg.env}", [control_section(out)])
    for source, rows in results.items():
        print(f"[control] {source} reward: final true return {rows[-1]['true_return']}, "
              f"labels {rows[-1]['labels']}")
    return results
