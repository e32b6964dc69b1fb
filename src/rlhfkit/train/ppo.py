"""Step 3: PPO against a reward model with a per-token KL penalty (InstructGPT).

Objective (Ouyang et al. 2022, eq. 2)::

    E_{x, y ~ pi}[ r(x, y) - beta log(pi(y|x) / pi_ref(y|x)) ] + gamma E_{x ~ D_ptx}[ log pi(x) ]

One step = one rollout batch, in labelled phases:

1. rollout: sample a response per prompt; log-probs (policy at sampling time, reference) and
   values ``V(s_t)``;
2. rewards: the RM score on the last response token, ``-beta * (logp - ref_logp)`` on every
   token (``rlhfkit.rewards.token_rewards``);
3. advantages: GAE (gamma, lambda), then whitened over the batch;
4. update: ``update_epochs`` passes over shuffled mini-batches, each one optimizer step on the
   clipped policy loss + ``vf_coef`` * clipped value loss - ``entropy_coef`` * entropy
   (+ ``ptx_coef`` * SFT loss on demonstrations: PPO-ptx); an epoch whose mean approx-KL to the
   sampling policy exceeds ``target_kl`` ends the update early;
5. log: reward/…, kl/…, loss/…, policy/…, gold/… (``docs/rl.md``).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.data.chat import Encoded
from rlhfkit.engines.placement import run_on_ray
from rlhfkit.losses import (
    entropy_from_logits,
    gae,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_nll,
    whiten,
)
from rlhfkit.models.policy import targets_of
from rlhfkit.rewards.shaping import token_rewards
from rlhfkit.rollout import forward_response, scatter_tokens
from rlhfkit.train.episodes import EpisodeOptions
from rlhfkit.train.inputs import load_records
from rlhfkit.train.loop import TrainingError
from rlhfkit.train.rl import (
    PlacementOptions,
    RewardFn,
    RewardOptions,
    RLConfig,
    RLRun,
    UpdateOptions,
)
from rlhfkit.train.sft import collate_padded, encode_demonstrations


@dataclass
class PPOConfig(RLConfig, RewardOptions, UpdateOptions, PlacementOptions, EpisodeOptions):
    """PPO with a KL penalty to the reference (``rlhfkit ppo``)."""

    output_dir: str = "runs/ppo"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    mini_batch_size: int = 8
    """Samples per optimizer step inside an update."""
    update_epochs: int = 2
    """PPO epochs: passes over each rollout batch."""
    clip_range_value: float = 0.2
    """Value clip epsilon (in reward units)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    gamma: float = 1.0
    """Discount factor."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean and unit variance over each rollout batch."""
    target_kl: float = 0.0
    """Stop a batch's update early once an epoch's mean per-token KL from the sampling policy
    to the updated one (the k3 estimate, policy/approx_kl_k3) exceeds this (0 = never)."""
    critic: Literal["policy", "rm"] = "policy"
    """Value function: policy (a value head on the policy) or rm (a separate critic from the RM)."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight gamma of the SFT loss on --ptx-data mixed into each update (0 = off)."""
    ptx_data: str | None = None
    """Demonstrations for PPO-ptx (default: --data when it is task:NAME)."""
    max_length: int = 256
    """PPO-ptx: longest demonstration in tokens (prompt + response)."""


def _ptx_items(run: RLRun, cfg: PPOConfig) -> list[Encoded]:
    spec = cfg.ptx_data or cfg.data
    records = load_records(spec, "demonstrations", ["demonstration"])
    return encode_demonstrations(run.tokenizer, records, cfg.max_length, run.system_prompt)


def _ptx_loss(run: RLRun, items: list[Encoded], rng: random.Random, n: int) -> torch.Tensor:
    """Mean token NLL of ``n`` random demonstrations (the PPO-ptx term)."""
    batch = collate_padded(rng.sample(items, min(n, len(items))), run.tokenizer.pad_token_id)
    ids, mask, tmask = (batch[k].to(run.device) for k in
                        ("input_ids", "attention_mask", "target_mask"))
    out = run.model(ids, mask, tmask)
    logits = out[0] if isinstance(out, tuple) else out
    return token_nll(logits, targets_of(ids, tmask)).mean()


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None) -> Path:
    """Run PPO; returns the folder of the saved policy (``output_dir/model``).

    Args:
        cfg: The configuration.
        reward_fn: Optional programmatic reward used instead of ``cfg.reward_model``.
    """
    if cfg.critic not in ("policy", "rm"):
        raise TrainingError(f"--critic must be policy or rm, got {cfg.critic!r}")
    if cfg.ray:  # the same function, as trainer actors next to engine actors on Ray
        return Path(run_on_ray(functools.partial(train_ppo, reward_fn=reward_fn), cfg))
    n_mb = -(-cfg.batch_size // cfg.mini_batch_size)
    run = RLRun(cfg, "ppo", value="policy" if cfg.critic == "policy" else "critic",
                reward_fn=reward_fn, updates_per_step=cfg.update_epochs * n_mb)
    ptx = _ptx_items(run, cfg) if cfg.ptx_coef > 0 else []
    if run.acc.is_main_process:
        print(f"[ppo] {len(run.train_prompts)} prompts, {run.total_steps} rollout batches of "
              f"{cfg.batch_size}, {cfg.update_epochs} epochs x {n_mb} mini-batch(es) of "
              f"{min(cfg.mini_batch_size, cfg.batch_size)}, precision {run.acc.mixed_precision}")
    temperature = cfg.temperature or 1.0
    for step in run.steps():
        run.start_step()
        # Demonstrations for PPO-ptx are drawn from a generator seeded by the step (and the
        # process), so a resumed run draws exactly what an uninterrupted one would have.
        rng = random.Random(f"ptx/{cfg.seed}/{run.rank}/{step}")
        # 1. rollout ------------------------------------------------------------------
        rollout = run.train_rollout(step)
        mask = rollout.response_mask
        old_values = rollout.extras["values"]  # (B, R)
        # 2. rewards ------------------------------------------------------------------
        # every source's scores at their token positions (the last token for a holistic RM,
        # each segment's end for fine-grained rewards), minus beta * KL on every token
        terms = run.rewards(rollout)
        rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs,
                                   run.kl_ctl.value, dense=terms.dense, weights=terms.weights,
                                   ended=rollout.ended,
                                   missing_eos_penalty=cfg.missing_eos_penalty)  # (B, R)
        # 3. advantages ---------------------------------------------------------------
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, R)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask, reduce=run.global_sum)
        rollout.extras.update(advantages=advantages, returns=returns)
        # 4. update -------------------------------------------------------------------
        sums: dict[str, float] = {}
        n_updates = 0
        stopped_early = 0.0
        for _epoch in range(cfg.update_epochs):
            epoch_kl, epoch_n = 0.0, 0
            perm = torch.randperm(len(rollout)).tolist()
            for start in range(0, len(perm), cfg.mini_batch_size):
                mb = rollout.select(perm[start:start + cfg.mini_batch_size])
                mb_mask = mb.response_mask
                with run.acc.autocast():
                    out = forward_response(run.model, mb, temperature)
                    if run.critic is not None:
                        mb_values = scatter_tokens(
                            run.critic(mb.input_ids, mb.attention_mask, mb.target_mask,
                                       mb.position_ids), mb_mask)
                    else:
                        mb_values = out["values"]
                    pg, diag = ppo_policy_loss(out["logprobs"], mb.logprobs,
                                               mb.extras["advantages"], cfg.clip_range)
                    tis = run.tis_weights(mb)
                    if tis is not None:  # --tis-cap: the engine's numerical gap
                        pg = pg * tis
                    vf, vdiag = ppo_value_loss(mb_values, mb.extras["values"],
                                               mb.extras["returns"], cfg.clip_range_value)
                    entropy = entropy_from_logits(out["logits"])  # (N,)
                    loss_pg, loss_vf = masked_mean(pg, mb_mask), masked_mean(vf, mb_mask)
                    loss = loss_pg + cfg.vf_coef * loss_vf - cfg.entropy_coef * entropy.mean()
                    if ptx:
                        loss_ptx = _ptx_loss(run, ptx, rng, cfg.mini_batch_size)
                        loss = loss + cfg.ptx_coef * loss_ptx
                        sums["loss/ptx"] = sums.get("loss/ptx", 0.0) + float(loss_ptx.detach())
                run.backward(loss)
                grad_norm = run.optimizer_step()
                approx_kl = float(masked_mean(diag["approx_kl_k3"], mb_mask))
                epoch_kl += approx_kl
                epoch_n += 1
                n_updates += 1
                for k, v in {"loss/policy": loss_pg, "loss/value": loss_vf, "loss/total": loss,
                             "policy/entropy": entropy.mean(), "policy/approx_kl_k3": approx_kl,
                             "policy/approx_kl_k2": masked_mean(diag["approx_kl_k2"], mb_mask),
                             "policy/clipfrac": masked_mean(diag["clipped"], mb_mask),
                             "value/clipfrac": masked_mean(vdiag["clipped"], mb_mask),
                             "grad_norm": grad_norm}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
            if cfg.target_kl and epoch_kl / max(epoch_n, 1) > cfg.target_kl:
                stopped_early = 1.0  # the policy moved far enough from the sampling policy
                break
        # 5. log ----------------------------------------------------------------------
        metrics, kl_seq = run.rollout_metrics(rollout, terms, rewards)
        metrics.update({k: v / max(n_updates, 1) for k, v in sums.items()})
        metrics["value/mean"] = float(masked_mean(old_values, mask))
        metrics["policy/early_stop"] = stopped_early
        run.end_step(metrics, rollout, kl_seq)
    return run.out / "model"
