"""Step 3 without a critic: REINFORCE (with baselines), RLOO and GRPO, as one table.

All three sample from the policy and score with the reward model like PPO; they differ in how
a sample's weight (its advantage) is formed and what the loss is, and each is one entry of
:data:`ALGORITHMS`: its config class, its advantage function and its loss function. A new
algorithm of this shape is one more entry (the CLI and the demo pick it up from the table).

- **REINFORCE** (Williams 1992; the lecture notes' seed 001): per-token rewards (score on the
  last token, ``-beta * k1`` per token), reward-to-go ``G_t`` with discount ``gamma`` (or the
  whole return at every token), minus a baseline: none, the batch mean, or a learned value
  (a value head on the policy, trained on ``G_t``). Loss ``-A_t log pi(y_t)``.
- **RLOO** (Ahmadian et al. 2024): k samples per prompt; the sequence reward
  ``R = score - beta * sum_t k1_t``; each sample's baseline is the mean of the other k - 1.
- **GRPO** (Shao et al. 2024): k samples per prompt; advantage ``(score - mean) / std`` over
  the group; PPO's clipped ratio; the KL to the reference is a loss term (k3, weight beta)
  rather than part of the reward (:func:`rlhfkit.losses.grpo_loss`, with the averaging of
  ``--loss-type`` and the ratio of ``--importance-level``).

When an update reuses its samples (``--update-epochs > 1``, or mini-batches after the first
optimizer step), REINFORCE and RLOO weight each token by the clipped ratio to the sampling
policy (PPO's surrogate, ``--clip-range``) instead of plain ``-A log pi``, whose gradient would
be that of another policy's samples. With one pass over the whole batch the two have the same
gradient, and the plain loss is used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as cfglib
from rlhfkit.engines.placement import run_on_ray
from rlhfkit.losses import (
    GRPO_LOSS_TYPES,
    IMPORTANCE_LEVELS,
    baseline_advantages,
    discounted_returns,
    entropy_from_logits,
    grpo_advantages,
    grpo_loss,
    masked_mean,
    ppo_policy_loss,
    reinforce_loss,
    rloo_advantages,
    whiten,
)
from rlhfkit.rewards.shaping import token_rewards
from rlhfkit.rewards.sources import RewardTerms
from rlhfkit.rollout import Rollout, forward_response
from rlhfkit.train.episodes import EpisodeOptions
from rlhfkit.train.rl import (
    PlacementOptions,
    RewardFn,
    RewardOptions,
    RLConfig,
    RLRun,
    UpdateOptions,
)
from rlhfkit.train.rlvr import RLVROptions, check_rlvr, dynamic_batch, loss_mask, overlong_source


@dataclass
class ReinforceConfig(RLConfig, RewardOptions, UpdateOptions, PlacementOptions, EpisodeOptions):
    """REINFORCE with reward-to-go and a baseline (``rlhfkit reinforce``)."""

    output_dir: str = "runs/reinforce"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    num_samples: int = 1
    """Responses per prompt."""
    baseline: Literal["none", "mean", "value"] = "mean"
    """Baseline: none, mean (batch mean return) or value (a learned value head)."""
    gamma: float = 1.0
    """Discount factor."""
    reward_to_go: bool = True
    """Weight each token by the rewards after it (else by the whole return)."""
    whiten_advantages: bool = False
    """Normalise advantages over the batch."""
    vf_coef: float = 0.1
    """Weight of the value loss (--baseline value)."""


@dataclass
class RLOOConfig(RLConfig, RewardOptions, UpdateOptions, PlacementOptions, EpisodeOptions):
    """REINFORCE leave-one-out over k samples per prompt (``rlhfkit rloo``)."""

    output_dir: str = "runs/rloo"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    num_samples: int = 4
    """Responses per prompt (k)."""
    batch_size: int = 4
    """Prompts per rollout batch (each sampled k times)."""
    whiten_advantages: bool = False
    """Normalise advantages over the batch."""


@dataclass
class GRPOConfig(RLConfig, RewardOptions, UpdateOptions, PlacementOptions, EpisodeOptions,
                 RLVROptions):
    """Group-relative policy optimisation (``rlhfkit grpo``)."""

    output_dir: str = "runs/grpo"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    num_samples: int = 4
    """Responses per prompt (the group size)."""
    batch_size: int = 4
    """Prompts per rollout batch (each sampled k times)."""
    kl_coef: float = 0.04
    """beta: weight of the k3 KL loss term (Shao et al. 2024 use 0.04)."""
    clip_range: float = 0.2
    """Policy ratio clip epsilon (the lower edge when --clip-range-high is set)."""
    clip_range_high: float = 0.0
    """Upper clip epsilon, DAPO's clip-higher (e.g. 0.28; 0 = the same as --clip-range)."""
    scale_advantages: bool = True
    """Divide by the group's standard deviation (off = Dr. GRPO's advantage)."""
    loss_type: Literal["bnpo", "grpo", "dr_grpo", "dapo"] = "bnpo"
    """How per-token terms are averaged: bnpo (token mean over each mini-batch; the default:
    every token weighs the same, no length bias), grpo (per-response mean, then mean: Shao et
    al. eq. 3), dr_grpo (sum / (responses x --max-new-tokens): Liu et al. 2025), dapo (token
    mean over the whole generation batch, all mini-batches and processes: Yu et al. 2025)."""
    importance_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (PPO/GRPO) or per sequence (GSPO, Zheng et al. 2025)."""


Advantages = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
"""(advantages (B, R), value targets (B, R) or None, per-token rewards (B, R))."""


@dataclass
class Update:
    """What a loss function gets for one mini-batch."""

    out: dict[str, torch.Tensor]
    """The policy's ``forward_response`` on the mini-batch (``logprobs``, ``logits``, maybe
    ``values``)."""
    mb: Rollout
    """The mini-batch (``logprobs`` at sampling time, ``ref_logprobs``, ``extras``)."""
    on_policy: bool
    """True when the samples come from the very weights being updated (one pass, one batch)."""
    kl_coef: float
    """The current beta."""
    normalizer: float
    """Response tokens of the generation batch per mini-batch, over all processes (``dapo``)."""
    token_weights: torch.Tensor | None = None
    """(B, R) truncated importance weights to the sampling engine (``--tis-cap``), or None."""


LossFn = Callable[[Any, Update], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``(config, update) -> (loss, metrics)``: the policy loss (without the entropy bonus)."""
AdvantageFn = Callable[[Any, RLRun, Rollout, RewardTerms], Advantages]
"""``(config, run, rollout, reward terms) -> Advantages``."""


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def reinforce_advantages(cfg: Any, run: RLRun, rollout: Rollout, terms: RewardTerms
                         ) -> Advantages:
    """Reward-to-go (or the whole return) minus the baseline of ``--baseline``.

    Rewards given after each segment (fine-grained sources) reach only the tokens before them.
    """
    mask = rollout.response_mask
    rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs, run.kl_ctl.value,
                               dense=terms.dense, weights=terms.weights, ended=rollout.ended,
                               missing_eos_penalty=cfg.missing_eos_penalty)  # (B, R)
    if cfg.reward_to_go:
        returns = discounted_returns(rewards, mask, cfg.gamma)  # (B, R)
    else:
        returns = rewards.sum(-1, keepdim=True) * mask
    values = rollout.extras.get("values")
    adv = baseline_advantages(returns, mask, cfg.baseline, values, reduce=run.global_sum)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask, reduce=run.global_sum)
    return adv, returns, rewards


def leave_one_out_advantages(cfg: RLOOConfig, run: RLRun, rollout: Rollout,
                             terms: RewardTerms) -> Advantages:
    """RLOO: each response's sequence reward minus the mean of its k - 1 siblings'."""
    mask = rollout.response_mask
    rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs, run.kl_ctl.value,
                               dense=terms.dense, weights=terms.weights, ended=rollout.ended,
                               missing_eos_penalty=cfg.missing_eos_penalty)  # (B, R)
    seq_reward = rewards.sum(-1)  # (B,) score - beta * sum_t k1_t
    adv = rloo_advantages(seq_reward.view(-1, cfg.num_samples)).view(-1)[:, None] * mask
    if cfg.whiten_advantages:
        adv = whiten(adv, mask, reduce=run.global_sum)
    return adv, None, rewards


def group_advantages(cfg: GRPOConfig, run: RLRun, rollout: Rollout, terms: RewardTerms
                     ) -> Advantages:
    """GRPO: ``(score - group mean) / group std``; the KL is a loss term, not a reward."""
    mask = rollout.response_mask
    rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs, 0.0,
                               scores=terms.scores)
    adv = grpo_advantages(terms.scores.view(-1, cfg.num_samples), cfg.scale_advantages)
    return adv.view(-1)[:, None] * mask, None, rewards


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def reinforce_objective(cfg: Any, u: Update) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-A log pi`` on fresh samples, the clipped ratio on reused ones; + a value loss."""
    mask, adv = u.mb.response_mask, u.mb.extras["advantages"]
    weights = u.token_weights if u.token_weights is not None else 1.0
    metrics: dict[str, torch.Tensor] = {}
    if u.on_policy:
        loss = masked_mean(weights * reinforce_loss(u.out["logprobs"], adv), mask)
    else:
        pg, diag = ppo_policy_loss(u.out["logprobs"], u.mb.logprobs, adv, cfg.clip_range)
        loss = masked_mean(weights * pg, mask)
        metrics = {"policy/clipfrac": masked_mean(diag["clipped"], mask),
                   "policy/approx_kl_k3": masked_mean(diag["approx_kl_k3"], mask)}
    metrics["loss/policy"] = loss
    if "values" in u.out:  # REINFORCE with a learned baseline
        loss_vf = masked_mean(0.5 * (u.out["values"] - u.mb.extras["returns"]) ** 2, mask)
        loss = loss + cfg.vf_coef * loss_vf
        metrics["loss/value"] = loss_vf
    return loss, metrics


def grpo_objective(cfg: GRPOConfig, u: Update) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`rlhfkit.losses.grpo_loss` with the options of the config."""
    mask = u.mb.extras.get("loss_mask", u.mb.response_mask)  # --overlong-filter drops some
    loss, diag = grpo_loss(
        u.out["logprobs"], u.mb.logprobs, u.mb.ref_logprobs, u.mb.extras["advantages"], mask,
        clip_range=cfg.clip_range, clip_range_high=cfg.clip_range_high or None,
        kl_coef=u.kl_coef, loss_type=cfg.loss_type, importance_level=cfg.importance_level,
        max_length=cfg.max_new_tokens, normalizer=u.normalizer, token_weights=u.token_weights)
    return loss, {"loss/policy": diag["policy"], "loss/kl": diag["kl"],
                  "policy/clipfrac": masked_mean(diag["clipped"], mask),
                  "policy/approx_kl_k3": masked_mean(diag["approx_kl_k3"], mask)}


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PGAlgorithm:
    """One policy-gradient algorithm: its options, advantages and loss."""

    config: type
    advantages: AdvantageFn
    loss: LossFn
    help: str
    min_samples: int = 1
    """Responses per prompt the advantages need."""


ALGORITHMS: dict[str, PGAlgorithm] = {
    "reinforce": PGAlgorithm(ReinforceConfig, reinforce_advantages, reinforce_objective,
                             "Step 3: REINFORCE with reward-to-go and a baseline"),
    "rloo": PGAlgorithm(RLOOConfig, leave_one_out_advantages, reinforce_objective,
                        "Step 3: REINFORCE leave-one-out over k samples per prompt", 2),
    "grpo": PGAlgorithm(GRPOConfig, group_advantages, grpo_objective,
                        "Step 3: GRPO (group-normalised advantages, clipped ratio, KL loss)", 2),
}
"""Policy-gradient algorithms by name (``rlhfkit NAME``)."""


def algorithm_of(cfg: Any) -> tuple[str, PGAlgorithm]:
    """The table entry whose config class ``cfg`` is (or derives from)."""
    for name, algo in ALGORITHMS.items():
        if type(cfg) is algo.config:
            return name, algo
    for name, algo in ALGORITHMS.items():
        if isinstance(cfg, algo.config):
            return name, algo
    raise cfglib.ConfigError(f"{type(cfg).__name__} is not the config of a policy-gradient "
                             f"algorithm ({', '.join(ALGORITHMS)})")


def check_pg_config(name: str, algo: PGAlgorithm, cfg: Any) -> None:
    """Clear errors for options the algorithm cannot take."""
    if cfg.num_samples < algo.min_samples:
        raise cfglib.ConfigError(f"{name} needs --num-samples >= {algo.min_samples}, "
                                 f"got {cfg.num_samples}")
    if getattr(cfg, "baseline", "mean") not in ("none", "mean", "value"):
        raise cfglib.ConfigError(f"--baseline must be none, mean or value, got {cfg.baseline!r}")
    if getattr(cfg, "loss_type", "bnpo") not in GRPO_LOSS_TYPES:
        raise cfglib.ConfigError(f"--loss-type must be one of {', '.join(GRPO_LOSS_TYPES)}, "
                                 f"got {cfg.loss_type!r}")
    if getattr(cfg, "importance_level", "token") not in IMPORTANCE_LEVELS:
        raise cfglib.ConfigError(f"--importance-level must be token or sequence, got "
                                 f"{cfg.importance_level!r}")
    check_rlvr(cfg, int(os.environ.get("WORLD_SIZE", "1")))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train_pg(cfg: Any, reward_fn: RewardFn | None = None) -> Path:
    """Run the policy-gradient algorithm of ``cfg`` (its config class); returns the saved policy."""
    name, algo = algorithm_of(cfg)
    check_pg_config(name, algo, cfg)
    if cfg.ray:  # the same function, as trainer actors next to engine actors on Ray
        return Path(run_on_ray(functools.partial(train_pg, reward_fn=reward_fn), cfg))
    value = "policy" if getattr(cfg, "baseline", None) == "value" else None
    rollout_size = cfg.batch_size * cfg.num_samples
    mb_size = cfg.mini_batch_size or rollout_size
    n_mb = -(-rollout_size // mb_size)
    run = RLRun(cfg, name, value=value, reward_fn=reward_fn, samples_per_prompt=cfg.num_samples,
                updates_per_step=cfg.update_epochs * n_mb)
    if run.acc.is_main_process:
        print(f"[{name}] {len(run.train_prompts)} prompts, {run.total_steps} rollout batches of "
              f"{cfg.batch_size} prompts x {cfg.num_samples} samples, {cfg.update_epochs} "
              f"epoch(s) x {n_mb} mini-batch(es) of {min(mb_size, rollout_size)}, precision "
              f"{run.acc.mixed_precision}")
    if getattr(cfg, "overlong_buffer", 0):  # DAPO's overlong shaping, one more reward term
        run.sources.append(overlong_source(cfg))
    dynamic = getattr(cfg, "dynamic_sampling", "off") != "off"
    temperature = cfg.temperature or 1.0
    # One update on the whole rollout: the policy that sampled is the one being updated, so
    # the log-probs "at sampling time" are those of the training forward pass. Take them from
    # there instead of a separate no-grad pass over the rollout (the ratio is then exactly 1,
    # and its gradient is the policy gradient).
    single_pass = cfg.update_epochs == 1 and mb_size >= rollout_size and not run.off_policy
    for step in run.steps():
        run.start_step()
        # 1. rollout (k consecutive samples per prompt) ---------------------------------
        rollout = run.train_rollout(step, policy_logprobs=not single_pass)
        # 2. rewards (and DAPO's dynamic sampling: only groups whose rewards differ) ----
        terms = run.rewards(rollout)
        rlvr: dict[str, float] = {}
        if dynamic:
            full = (rollout, terms)
            rollout, terms, rlvr = dynamic_batch(cfg, run, step, rollout, terms, not single_pass)
            if not len(rollout):  # no group with any signal: nothing to learn from this step
                rollout, terms = full
                if single_pass:
                    rollout.logprobs = run.score_rollout(rollout).logprobs
                metrics, kl_seq = run.rollout_metrics(rollout, terms)
                run.end_step({**metrics, **rlvr, "rlvr/skipped": 1.0}, rollout, kl_seq)
                continue
        first = None
        if single_pass:
            with run.acc.autocast():
                first = forward_response(run.model, rollout, temperature)
            rollout.logprobs = first["logprobs"].detach()
            if "values" in first:
                rollout.extras["values"] = first["values"].detach()
        # 3. advantages ----------------------------------------------------------------
        adv, returns, rewards = algo.advantages(cfg, run, rollout, terms)
        rollout.extras.update(advantages=adv)
        if returns is not None:
            rollout.extras["returns"] = returns
        # 4. update ---------------------------------------------------------------------
        if getattr(cfg, "overlong_filter", False):
            rollout.extras["loss_mask"] = loss_mask(cfg, rollout)
        mask = rollout.extras.get("loss_mask", rollout.response_mask)
        tokens = run.run.reduce_sums({"t": float(mask.sum())})["t"]
        normalizer = tokens / (n_mb * run.world)
        sums: dict[str, float] = {}
        n_updates = 0
        for _epoch in range(cfg.update_epochs):
            perm = list(range(len(rollout))) if single_pass else \
                torch.randperm(len(rollout)).tolist()
            for start in range(0, len(perm), mb_size):
                mb = rollout if single_pass else rollout.select(perm[start:start + mb_size])
                with run.acc.autocast():
                    out = first if single_pass else forward_response(run.model, mb, temperature)
                    update = Update(out, mb, single_pass, run.kl_ctl.value, normalizer,
                                    run.tis_weights(mb))
                    loss, extra = algo.loss(cfg, update)
                    entropy = entropy_from_logits(out["logits"])
                    loss = loss - cfg.entropy_coef * entropy.mean()
                run.backward(loss)
                grad_norm = run.optimizer_step()
                n_updates += 1
                for k, v in {"loss/total": loss, "policy/entropy": entropy.mean(),
                             "grad_norm": grad_norm, **extra}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        # 5. log ------------------------------------------------------------------------
        metrics, kl_seq = run.rollout_metrics(rollout, terms, rewards)
        metrics.update({k: v / max(n_updates, 1) for k, v in sums.items()})
        metrics.update(rlvr)
        metrics["rlvr/truncated"] = float((~rollout.ended).float().mean())
        metrics["reward/advantage_std"] = float(adv[rollout.response_mask].std())
        run.end_step(metrics, rollout, kl_seq)
    return run.out / "model"
