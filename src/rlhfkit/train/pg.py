"""Step 3 without a critic: REINFORCE (with baselines), RLOO and GRPO.

All three sample from the policy and score with the reward model like PPO; they differ in how
a sample's weight (its advantage) is formed and what the loss is:

- **REINFORCE** (Williams 1992; the lecture notes' seed 001): per-token rewards (score on the
  last token, ``-beta * k1`` per token), reward-to-go ``G_t`` with discount ``gamma`` (or the
  whole return at every token), minus a baseline: none, the batch mean, or a learned value
  (a value head on the policy, trained on ``G_t``). Loss ``-A_t log pi(y_t)``.
- **RLOO** (Ahmadian et al. 2024): k samples per prompt; the sequence reward
  ``R = score - beta * sum_t k1_t``; each sample's baseline is the mean of the other k - 1.
- **GRPO** (Shao et al. 2024): k samples per prompt; advantage ``(score - mean) / std`` over
  the group; PPO's clipped ratio; the KL to the reference is a loss term (k3, weight beta)
  rather than part of the reward.

Losses are summed over response tokens and divided by the number of response tokens in the
batch (a constant per batch, so long and short responses weigh the same per token).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.losses import (
    baseline_advantages,
    discounted_returns,
    entropy_from_logits,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    reinforce_loss,
    rloo_advantages,
    whiten,
)
from rlhfkit.reward_sources import RewardTerms
from rlhfkit.rewards import token_rewards
from rlhfkit.rollout import forward_response
from rlhfkit.train.loop import TrainingError
from rlhfkit.train.rl import RewardFn, RLConfig, RLRun

ALGOS = ("reinforce", "rloo", "grpo")


@dataclass
class PGConfig(RLConfig):
    """Policy-gradient methods without a critic (``rlhfkit reinforce|rloo|grpo``)."""

    output_dir: str = "runs/pg"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    algo: str = "reinforce"
    """reinforce, rloo or grpo."""
    num_samples: int = 1
    """Responses per prompt (k; RLOO and GRPO need at least 2)."""
    baseline: str = "mean"
    """REINFORCE baseline: none, mean (batch mean return) or value (a learned value head)."""
    gamma: float = 1.0
    """REINFORCE discount factor."""
    reward_to_go: bool = True
    """REINFORCE: weight each token by the rewards after it (else by the whole return)."""
    whiten_advantages: bool = False
    """Normalise advantages over the batch (REINFORCE/RLOO; GRPO normalises per group)."""
    vf_coef: float = 0.1
    """Weight of the value loss (REINFORCE with --baseline value)."""
    clip_range: float = 0.2
    """GRPO: policy ratio clip epsilon."""
    scale_advantages: bool = True
    """GRPO: divide by the group's standard deviation (off = Dr. GRPO)."""


@dataclass
class ReinforceConfig(PGConfig):
    """REINFORCE with reward-to-go and a baseline (``rlhfkit reinforce``)."""

    output_dir: str = "runs/reinforce"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""


@dataclass
class RLOOConfig(PGConfig):
    """REINFORCE leave-one-out over k samples per prompt (``rlhfkit rloo``)."""

    output_dir: str = "runs/rloo"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    algo: str = "rloo"
    """reinforce, rloo or grpo."""
    num_samples: int = 4
    """Responses per prompt (k)."""
    batch_size: int = 4
    """Prompts per rollout batch (each sampled k times)."""


@dataclass
class GRPOConfig(PGConfig):
    """Group-relative policy optimisation (``rlhfkit grpo``)."""

    output_dir: str = "runs/grpo"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    algo: str = "grpo"
    """reinforce, rloo or grpo."""
    num_samples: int = 4
    """Responses per prompt (the group size)."""
    batch_size: int = 4
    """Prompts per rollout batch (each sampled k times)."""
    kl_coef: float = 0.04
    """beta: weight of the k3 KL loss term (Shao et al. 2024 use 0.04)."""


def advantages_for(cfg: PGConfig, run: RLRun, rollout, terms: RewardTerms
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(advantages (B, R), value targets (B, R) or None, rewards (B, R)) for ``cfg.algo``.

    RLOO and GRPO compare whole responses, so they use each response's summed score;
    REINFORCE with reward-to-go credits every token with the rewards after it, so rewards
    given after each segment (fine-grained sources) reach only the tokens before them.
    """
    mask = rollout.response_mask
    k = cfg.num_samples
    scores = terms.scores
    if cfg.algo == "grpo":  # the KL is a loss term, not a reward
        rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs, 0.0,
                                   scores=scores)
        adv = grpo_advantages(scores.view(-1, k), cfg.scale_advantages).view(-1)  # (B,)
        return adv[:, None] * mask, None, rewards
    rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs, run.kl_ctl.value,
                               dense=terms.dense, weights=terms.weights, ended=rollout.ended,
                               missing_eos_penalty=cfg.missing_eos_penalty)  # (B, R)
    if cfg.algo == "rloo":
        seq_reward = rewards.sum(-1)  # (B,) score - beta * sum_t k1_t
        adv = rloo_advantages(seq_reward.view(-1, k)).view(-1)  # (B,)
        adv = adv[:, None] * mask
        if cfg.whiten_advantages:
            adv = whiten(adv, mask, reduce=run.global_sum)
        return adv, None, rewards
    if cfg.reward_to_go:
        returns = discounted_returns(rewards, mask, cfg.gamma)  # (B, R)
    else:
        returns = rewards.sum(-1, keepdim=True) * mask
    values = rollout.extras.get("values")
    adv = baseline_advantages(returns, mask, cfg.baseline, values, reduce=run.global_sum)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask, reduce=run.global_sum)
    return adv, returns, rewards


def train_pg(cfg: PGConfig, reward_fn: RewardFn | None = None) -> Path:
    """Run REINFORCE, RLOO or GRPO; returns the folder of the saved policy."""
    if cfg.algo not in ALGOS:
        raise TrainingError(f"--algo must be one of {', '.join(ALGOS)}, got {cfg.algo!r}")
    if cfg.algo in ("rloo", "grpo") and cfg.num_samples < 2:
        raise TrainingError(f"{cfg.algo} needs --num-samples >= 2, got {cfg.num_samples}")
    if cfg.baseline not in ("none", "mean", "value"):
        raise TrainingError(f"--baseline must be none, mean or value, got {cfg.baseline!r}")
    value = "policy" if (cfg.algo == "reinforce" and cfg.baseline == "value") else None
    run = RLRun(cfg, cfg.algo, value=value, reward_fn=reward_fn,
                samples_per_prompt=cfg.num_samples)
    if run.acc.is_main_process:
        print(f"[{cfg.algo}] {len(run.train_prompts)} prompts, {run.total_steps} rollout "
              f"batches of {cfg.batch_size} prompts x {cfg.num_samples} samples, precision "
              f"{run.acc.mixed_precision}")
    temperature = cfg.temperature or 1.0
    rollout_size = cfg.batch_size * cfg.num_samples
    mb_size = cfg.mini_batch_size or rollout_size
    # One update on the whole rollout: the policy that sampled is the one being updated, so
    # the log-probs "at sampling time" are those of the training forward pass. Take them from
    # there instead of a separate no-grad pass over the rollout (the ratio is then exactly 1,
    # and its gradient is the policy gradient).
    single_pass = cfg.update_epochs == 1 and mb_size >= rollout_size
    for step in run.steps():
        run.start_step()
        # 1. rollout (k consecutive samples per prompt) ---------------------------------
        rollout = run.rollout(run.prompt_batch(step), policy_logprobs=not single_pass)
        first = None
        if single_pass:
            with run.acc.autocast():
                first = forward_response(run.model, rollout, temperature)
            rollout.logprobs = first["logprobs"].detach()
            if "values" in first:
                rollout.extras["values"] = first["values"].detach()
        # 2. rewards and 3. advantages --------------------------------------------------
        terms = run.rewards(rollout)
        adv, returns, rewards = advantages_for(cfg, run, rollout, terms)
        rollout.extras.update(advantages=adv)
        if returns is not None:
            rollout.extras["returns"] = returns
        # 4. update ---------------------------------------------------------------------
        sums: dict[str, float] = {}
        n_updates = 0
        for _epoch in range(cfg.update_epochs):
            perm = list(range(len(rollout))) if single_pass else \
                torch.randperm(len(rollout)).tolist()
            for start in range(0, len(perm), mb_size):
                mb = rollout if single_pass else rollout.select(perm[start:start + mb_size])
                mask = mb.response_mask
                with run.acc.autocast():
                    out = first if single_pass else forward_response(run.model, mb, temperature)
                    extra: dict[str, torch.Tensor] = {}
                    if cfg.algo == "grpo":
                        pg, diag = ppo_policy_loss(out["logprobs"], mb.logprobs,
                                                   mb.extras["advantages"], cfg.clip_range)
                        kl = kl_penalty(out["logprobs"], mb.ref_logprobs, "k3")  # Shao eq. 4
                        loss_kl = masked_mean(kl, mask)
                        loss_pg = masked_mean(pg, mask)
                        loss = loss_pg + run.kl_ctl.value * loss_kl
                        extra = {"loss/kl": loss_kl,
                                 "policy/clipfrac": masked_mean(diag["clipped"], mask),
                                 "policy/approx_kl": masked_mean(diag["approx_kl"], mask)}
                    else:
                        loss_pg = masked_mean(reinforce_loss(out["logprobs"],
                                                             mb.extras["advantages"]), mask)
                        loss = loss_pg
                        if "values" in out:  # REINFORCE with a learned baseline
                            loss_vf = masked_mean(0.5 * (out["values"] - mb.extras["returns"])
                                                  ** 2, mask)
                            loss = loss + cfg.vf_coef * loss_vf
                            extra["loss/value"] = loss_vf
                    entropy = entropy_from_logits(out["logits"])
                    loss = loss - cfg.entropy_coef * entropy.mean()
                run.backward(loss)
                grad_norm = run.optimizer_step()
                n_updates += 1
                for k, v in {"loss/policy": loss_pg, "loss/total": loss,
                             "policy/entropy": entropy.mean(), "grad_norm": grad_norm,
                             **extra}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        # 5. log ------------------------------------------------------------------------
        metrics, kl_seq = run.rollout_metrics(rollout, terms, rewards)
        metrics.update({k: v / max(n_updates, 1) for k, v in sums.items()})
        metrics["reward/advantage_std"] = float(adv[rollout.response_mask].std())
        run.end_step(metrics, rollout, kl_seq)
    return run.out / "model"
