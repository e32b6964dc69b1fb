"""The one on-policy RL loop: every algorithm of :mod:`rlhfkit.train.algorithms` runs here.

One step = one rollout batch, in labelled phases::

    1. sample     k responses per prompt; log-probs at sampling time, reference log-probs,
                  old values (RLRun.train_rollout)
    2. score      every reward source, or the algorithm's own payoff (RLRun.score); DAPO's
                  dynamic sampling keeps the groups whose rewards differ
    3. advantages per-token rewards (KL in the reward or not), then the algorithm's estimator
    4. update     --update-epochs passes over shuffled mini-batches, one optimizer step each:
                  the algorithm's policy loss - entropy bonus (+ PPO-ptx); an epoch whose mean
                  approx-KL to the sampling policy passes --target-kl ends the update early
    5. log        reward/…, kl/…, loss/…, policy/…, gold/… (docs/rl.md); the engine syncs on
                  the next sample

PPO (Ouyang et al. 2022, eq. 2) is the entry with GAE and a value function; the policy-gradient
algorithms with their baselines, Nash-MD and online DPO differ from it only in their entries
(online DPO's loss couples a group's best and worst response, so its batches are cut between
groups only). :func:`train_rl` is what every RL command calls
(``rlhfkit rl --algo NAME``, ``rlhfkit ppo``, ``rlhfkit grpo``, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rlhfkit import config as cfglib
from rlhfkit.config import ConfigError, bounds, only
from rlhfkit.data.chat import Encoded
from rlhfkit.engines.placement import run_on_ray
from rlhfkit.losses import GRPO_LOSS_TYPES, entropy_from_logits, masked_mean, token_nll
from rlhfkit.models.policy import targets_of
from rlhfkit.options import MicroBatchOptions
from rlhfkit.rewards.shaping import token_rewards
from rlhfkit.rewards.sources import RewardTerms
from rlhfkit.rollout import Rollout, forward_response, scatter_tokens
from rlhfkit.train.algorithms import (
    ALGORITHMS,
    AdvantageInputs,
    Advantages,
    Algorithm,
    Update,
    algorithm_specific_options,
    checked_advantages,
    checked_loss,
    get_algorithm,
)
from rlhfkit.train.dpo import DPOOptions
from rlhfkit.train.episodes import EpisodeOptions
from rlhfkit.train.inputs import load_records
from rlhfkit.train.microbatch import Normaliser, group_units, shuffled_groups
from rlhfkit.train.nash import NashOptions
from rlhfkit.train.online_dpo import RETIRED_OPTIONS, OnlineDPOOptions
from rlhfkit.train.rl import (
    PlacementOptions,
    RewardFn,
    RewardOptions,
    RLConfig,
    RLRun,
    UpdateOptions,
)
from rlhfkit.train.rlvr import RLVROptions, check_rlvr, dynamic_batch, loss_mask, overlong_source
from rlhfkit.train.services import ModelActor
from rlhfkit.train.sft import collate_padded, encode_demonstrations
from rlhfkit.train.sharding import FSDPOptions


@dataclass
class AlgorithmOptions:
    """The algorithm, and the options of the estimators and policy losses (each read by some)."""

    algo: str = "ppo"
    """The RL algorithm: a name of the registry (rlhfkit.train.algorithms; rlhfkit --help lists
    them), or your own as py:FILE.py:NAME (docs/custom-algorithm.md). The demo also takes
    best-of-n, or dpo/ipo/kto in place of RM + RL, or a comma-separated list (e.g. ppo,dpo)
    that runs each from the same SFT policy and compares them."""
    num_samples: int = field(default=1, metadata=bounds(ge=1))
    """Responses per prompt (k; the group of the group baselines)."""
    baseline: Literal["none", "mean", "value"] = "mean"
    """REINFORCE's baseline: none, mean (batch mean return) or value (a learned value head)."""
    gamma: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    """Discount factor."""
    lam: float = field(default=0.95, metadata=bounds(ge=0, le=1))
    """GAE lambda."""
    reward_to_go: bool = True
    """Weight each token by the rewards after it (else by the whole return)."""
    whiten_advantages: bool = False
    """Normalise advantages to zero mean and unit variance over each rollout batch."""
    scale_advantages: bool = True
    """GRPO: divide by the group's standard deviation (off = Dr. GRPO's advantage)."""
    critic: Literal["policy", "rm"] = "policy"
    """PPO's value function: policy (a value head on the policy) or rm (a separate critic
    initialised from the reward model)."""
    vf_coef: float = field(default=0.1, metadata=bounds(ge=0))
    """Weight of the value loss."""
    clip_range_value: float = field(default=0.2, metadata=bounds(gt=0))
    """Value clip epsilon (in reward units)."""
    clip_range_high: float = field(default=0.0, metadata=bounds(ge=0))
    """Upper clip epsilon, DAPO's clip-higher (e.g. 0.28; 0 = the same as --clip-range)."""
    loss_type: Literal["bnpo", "grpo", "dr_grpo", "dapo"] = "bnpo"
    """How GRPO's per-token terms are averaged: bnpo (token mean over each mini-batch; every
    token weighs the same, no length bias), grpo (per-response mean, then mean: Shao et al.
    eq. 3), dr_grpo (sum / (responses x --max-new-tokens): Liu et al. 2025), dapo (token mean
    over the whole generation batch, all mini-batches and processes: Yu et al. 2025)."""
    importance_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (PPO/GRPO) or per sequence (GSPO, Zheng et al. 2025)."""


@dataclass
class TrainRLConfig(RLConfig, RewardOptions, UpdateOptions, MicroBatchOptions, PlacementOptions,
                    EpisodeOptions, RLVROptions, AlgorithmOptions, NashOptions, OnlineDPOOptions,
                    only(DPOOptions, "loss", "beta", "label_smoothing", "unlikelihood_alpha"),
                    FSDPOptions):
    """On-policy RL with any registered algorithm (``rlhfkit rl --algo NAME``)."""

    retired: ClassVar[dict[str, str]] = RETIRED_OPTIONS
    """Options that are gone, and what to use instead (one line each, exit code 2)."""

    @classmethod
    def defaults_for(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The chosen algorithm's defaults (its run folder, its group size, ...)."""
        algo = get_algorithm(str(values.get("algo", cls.algo)))
        return {"output_dir": f"runs/{algo.name}", **algo.defaults}

    def check(self) -> None:
        """Rules between options, checked before any model loads."""
        algo = get_algorithm(self.algo)
        if self.num_samples < algo.min_samples:
            raise ConfigError(f"{algo.name} needs --num-samples >= {algo.min_samples}, "
                              f"got {self.num_samples}")
        if self.temperature <= 0:
            raise ConfigError("--temperature must be > 0 for RL: at 0 every sample of a prompt "
                              "is the same and the log-probs are not those of the sampler")
        gpu_only = [f"--{n.replace('_', '-')}" for n, on in (
            ("vllm_sleep", self.vllm_sleep), ("vllm_tensor_parallel_size",
                                               self.vllm_tensor_parallel_size > 1)) if on]
        if gpu_only and not torch.cuda.is_available():
            raise ConfigError(f"{', '.join(gpu_only)} needs CUDA: vLLM engines on CPU run one "
                              "process, eagerly, without sleep mode")
        if self.vllm_sleep and self.async_generation:
            raise ConfigError("--vllm-sleep does not combine with --async-generation: the engine "
                              "samples while the trainer updates")
        if self.loss_type not in GRPO_LOSS_TYPES:  # the Literal and the losses kept in step
            raise ConfigError(f"--loss-type must be one of {', '.join(GRPO_LOSS_TYPES)}")
        if algo.source == "rlhfkit":
            refuse_unread_options(self, algo)
        if algo.group_loss and self.mini_batch_size % self.num_samples:
            raise ConfigError(f"--mini-batch-size must be a multiple of --num-samples "
                              f"({self.num_samples}) for {algo.name}: its loss couples the "
                              f"responses of a group, so a mini-batch holds whole groups; got "
                              f"{self.mini_batch_size}")
        algo.check_options(self)
        check_rlvr(self, int(os.environ.get("WORLD_SIZE", "1")))


def refuse_unread_options(cfg: TrainRLConfig, algo: Algorithm) -> None:
    """A set algorithm-specific option that ``algo`` does not read is an error, not a no-op."""
    defaults = {**{f.name: f.default for f in dataclasses.fields(cfg)}, **algo.defaults}
    for name in algorithm_specific_options():
        if name in algo.reads or getattr(cfg, name) == defaults[name]:
            continue
        users = [a.name for a in ALGORITHMS.values() if name in a.reads and a.source == "rlhfkit"]
        raise ConfigError(f"--{name.replace('_', '-')} is not an option of {algo.name} "
                          f"(it is read by {', '.join(users)})")


def rl_config(algo: str = "ppo", **values: Any) -> TrainRLConfig:
    """The config of ``algo`` with its defaults, ``values`` on top (checked)."""
    return cfglib.from_dict(TrainRLConfig, {"algo": algo, **values}, source=f"rl_config({algo!r})")


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdatePlan:
    """How one rollout batch is cut for updates."""

    rollout_size: int
    """Responses per batch on this process (prompts x samples)."""
    mini_batch_size: int
    """Responses per optimizer step."""
    n_mini_batches: int
    on_policy: bool
    """One update on the whole batch, sampled by the very weights being updated (the ratio
    is exactly 1, its gradient the policy gradient)."""
    single_pass: bool
    """On-policy and no micro-batches: the log-probs "at sampling time" are those of the
    training forward pass, so no separate no-grad pass is needed."""


def update_plan(cfg: TrainRLConfig) -> UpdatePlan:
    """The plan of ``cfg``'s batch, mini-batch and epoch options."""
    size = cfg.batch_size * cfg.num_samples
    mb = cfg.mini_batch_size or size
    on_policy = cfg.update_epochs == 1 and mb >= size and not cfg.async_generation
    micro = bool(cfg.micro_batch_size or cfg.micro_batch_tokens)
    return UpdatePlan(size, mb, -(-size // mb), on_policy, on_policy and not micro)


def train_rl(cfg: TrainRLConfig, reward_fn: RewardFn | None = None,
             preference_fn: Any = None) -> Path:
    """Run the RL algorithm of ``cfg.algo``; returns the folder of the saved policy.

    Args:
        cfg: The options (:func:`rl_config` builds them with the algorithm's defaults).
        reward_fn: A programmatic reward used instead of ``cfg.reward_model``.
        preference_fn: Nash-MD's payoff used instead of ``cfg.preference_model``.
    """
    algo = get_algorithm(cfg.algo)
    if cfg.ray:  # the same function, as trainer actors next to engine actors on Ray
        return Path(run_on_ray(functools.partial(train_rl, reward_fn=reward_fn,
                                                 preference_fn=preference_fn), cfg,
                               model_actor=ModelActor))
    plan = update_plan(cfg)
    extra = {"preference_fn": preference_fn} if preference_fn is not None else {}
    run = algo.run_type()(cfg, algo.name, value=algo.value(cfg), reward_fn=reward_fn,
                         samples_per_prompt=cfg.num_samples,
                         updates_per_step=cfg.update_epochs * plan.n_mini_batches, **extra)
    ptx = ptx_items(run, cfg) if cfg.ptx_coef > 0 else []
    if run.acc.is_main_process:
        print(f"[{algo.name}] {len(run.train_prompts)} prompts, {run.total_steps} rollout "
              f"batches of {cfg.batch_size} prompts x {cfg.num_samples} samples, "
              f"{cfg.update_epochs} epoch(s) x {plan.n_mini_batches} mini-batch(es) of "
              f"{min(plan.mini_batch_size, plan.rollout_size)}, precision "
              f"{run.acc.mixed_precision}")
    if cfg.overlong_buffer:  # DAPO's overlong shaping, one more reward term
        run.sources.append(overlong_source(cfg))
    for step in run.steps():
        run.start_step()
        # 1. sample (k consecutive responses per prompt) --------------------------------
        rollout = run.train_rollout(step, policy_logprobs=not plan.single_pass)
        # 2. score (and DAPO's dynamic sampling: only groups whose rewards differ) -------
        with run.timed("reward"):
            terms, metrics = run.score(rollout)
        if cfg.dynamic_sampling != "off":
            full = (rollout, terms)
            rollout, terms, rlvr = dynamic_batch(cfg, run, step, rollout, terms,
                                                 not plan.single_pass)
            metrics.update(rlvr)
            if not len(rollout):  # no group with any signal: nothing to learn from this step
                rollout, terms = full
                if plan.single_pass:
                    rollout.logprobs = run.score_rollout(rollout).logprobs
                logged, kl_seq = run.rollout_metrics(rollout, terms)
                run.end_step({**logged, **metrics, "rlvr/skipped": 1.0}, rollout, kl_seq)
                continue
        with run.timed("update"):  # the single pass is the update's forward
            first = policy_pass(run, rollout) if plan.single_pass else None
        run.engine_sleep()  # --vllm-sleep: the engine frees its memory while the trainer updates
        run.release_frozen()  # --offload-frozen: so do the reference and the reward models
        # 3. advantages -----------------------------------------------------------------
        adv, rewards = advantages_of(algo, run, rollout, terms)
        # 4. update ---------------------------------------------------------------------
        rng = random.Random(f"ptx/{cfg.seed}/{run.rank}/{step}")  # resumable PPO-ptx draws
        with run.timed("update"):
            metrics.update(update_policy(algo, run, plan, rollout, first, ptx, rng))
        # 5. log ------------------------------------------------------------------------
        logged, kl_seq = run.rollout_metrics(rollout, terms, rewards)
        if "values" in rollout.extras:
            logged["value/mean"] = float(masked_mean(rollout.extras["values"],
                                                     rollout.response_mask))
        logged["rlvr/truncated"] = float((~rollout.ended).float().mean())
        logged["reward/advantage_std"] = float(adv.advantages[rollout.response_mask].std())
        run.end_step({**logged, **metrics}, rollout, kl_seq)
    return run.out / "model"


def policy_pass(run: RLRun, rollout: Rollout) -> dict[str, torch.Tensor]:
    """The training forward pass over the whole batch (a single on-policy update).

    Its detached log-probs (and values) stand for those at sampling time.
    """
    with run.acc.autocast():
        first = forward_response(run.model, rollout, run.cfg.temperature)
    rollout.logprobs = first["logprobs"].detach()
    if "values" in first:
        rollout.extras["values"] = first["values"].detach()
    return first


def advantages_of(algo: Algorithm, run: RLRun, rollout: Rollout, terms: RewardTerms
                  ) -> tuple[Advantages, torch.Tensor]:
    """Per-token rewards, then the algorithm's advantages; kept on the rollout's extras."""
    cfg, mask = run.cfg, rollout.response_mask
    if algo.kl_in_reward:  # every source at its tokens, minus beta * k1 on every token
        rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs,
                                   run.kl_ctl.value, dense=terms.dense, weights=terms.weights,
                                   ended=rollout.ended,
                                   missing_eos_penalty=cfg.missing_eos_penalty)  # (B, R)
    else:  # the loss holds the KL: the rewards are the scores alone
        rewards, _ = token_rewards(mask, rollout.logprobs, rollout.ref_logprobs, 0.0,
                                   scores=terms.scores)
    batch = AdvantageInputs(rewards, terms.scores, mask, rollout.extras.get("values"),
                            cfg.num_samples, run.kl_ctl.value, cfg, run.global_sum)
    adv = checked_advantages(algo, batch)
    rollout.extras["advantages"] = adv.advantages
    if adv.returns is not None:
        rollout.extras["returns"] = adv.returns
    if cfg.overlong_filter:
        rollout.extras["loss_mask"] = loss_mask(cfg, rollout)
    return adv, rewards


def update_policy(algo: Algorithm, run: RLRun, plan: UpdatePlan, rollout: Rollout,
                  first: dict[str, torch.Tensor] | None, ptx: list[Encoded],
                  rng: random.Random) -> dict[str, float]:
    """``--update-epochs`` passes over mini-batches, one optimizer step each; mean metrics."""
    cfg = run.cfg
    group = cfg.num_samples if algo.group_loss else 1  # a group loss: whole groups only
    mask = rollout.extras.get("loss_mask", rollout.response_mask)
    tokens = run.run.reduce_sums({"t": float(mask.sum())})["t"]
    normalizer = tokens / (plan.n_mini_batches * run.world)
    sums: dict[str, float] = {}
    n_updates, stopped_early = 0, 0.0
    for _epoch in range(cfg.update_epochs):
        epoch_kl, epoch_n = 0.0, 0
        perm = (list(range(len(rollout))) if plan.on_policy
                else shuffled_groups(len(rollout), group))
        for start in range(0, len(perm), plan.mini_batch_size):
            mb = rollout if plan.on_policy else rollout.select(
                perm[start:start + plan.mini_batch_size])
            metrics = accumulate_gradients(algo, run, mb, first, plan, normalizer,
                                           ptx_batch(run, ptx, rng, plan.mini_batch_size))
            metrics["grad_norm"] = run.optimizer_step()
            n_updates += 1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
            if "policy/approx_kl_k3" in metrics:
                epoch_kl += float(metrics["policy/approx_kl_k3"])
                epoch_n += 1
        if cfg.target_kl and epoch_n and epoch_kl / epoch_n > cfg.target_kl:
            stopped_early = 1.0  # the policy moved far enough from the sampling policy
            break
    means = {k: v / max(n_updates, 1) for k, v in sums.items()}
    means["policy/early_stop"] = stopped_early
    return means


def accumulate_gradients(algo: Algorithm, run: RLRun, mb: Rollout,
                         first: dict[str, torch.Tensor] | None, plan: UpdatePlan,
                         normalizer: float, ptx: dict[str, torch.Tensor] | None
                         ) -> dict[str, Any]:
    """Forward and backward of one mini-batch, micro-batch by micro-batch; its metrics.

    Each micro-batch's loss is weighted by its share of the mini-batch (its tokens, or its
    sequences, over the mini-batch's: :class:`rlhfkit.train.microbatch.Normaliser`), so the
    accumulated gradient is that of the mini-batch's loss, whatever the cut. Under several
    processes only the last backward all-reduces the gradients.
    """
    cfg = run.cfg
    group = cfg.num_samples if algo.group_loss else 1  # micro-batches of whole groups
    micro = [list(range(len(mb)))] if first is not None else run.micro_batches(
        mb, same_count=True, group=group)
    kind = algo.loss_average(cfg)

    def units(part: Rollout) -> torch.Tensor:  # what the loss averages over, as a mask
        if kind == "group":
            return group_units(part.extras["advantages"], group)
        return part.extras.get("loss_mask", part.response_mask)

    norm = (Normaliser.tokens(units(mb)) if kind in ("token", "group") else
            Normaliser.sequences(units(mb)) if kind == "sequence" else Normaliser.constant(1.0))
    entropy_norm = Normaliser.tokens(mb.response_mask)
    totals: dict[str, Any] = {}
    for i, rows in enumerate(micro):
        # a rank's padding: any one group, weighted 0
        sub = run.for_forward(mb if len(micro) == 1 else mb.select(rows or list(range(group))))
        weight = norm.scale(units(sub)) if rows else 0.0
        entropy_weight = entropy_norm.scale(sub.response_mask) if rows else 0.0
        with gradient_sync(run, i == len(micro) - 1), run.acc.autocast():
            out = first if first is not None else forward_response(run.model, sub,
                                                                    cfg.temperature)
            loss, metrics = mini_batch_loss(algo, run, sub, out, plan.on_policy, normalizer)
            entropy = metrics.pop("policy/entropy")
            total = weight * loss - cfg.entropy_coef * entropy_weight * entropy
            if ptx is not None and i == 0:  # PPO-ptx: once per mini-batch, its own mean
                loss_ptx = ptx_loss(run, ptx)
                total = total + cfg.ptx_coef * loss_ptx
                totals["loss/ptx"] = loss_ptx.detach()
        run.backward(total)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + weight * (v.detach() if torch.is_tensor(v) else v)
        totals["policy/entropy"] = totals.get("policy/entropy", 0.0) + \
            entropy_weight * entropy.detach()
        totals["loss/total"] = totals.get("loss/total", 0.0) + total.detach()
    return totals


def gradient_sync(run: RLRun, last: bool) -> contextlib.AbstractContextManager:
    """Under several processes, hold back the gradient all-reduce until the last micro-batch.

    (DDP only: FSDP2 reduce-scatters each micro-batch's gradients as it goes.)
    """
    stack = contextlib.ExitStack()
    if not last and run.world > 1 and not run.run.sharded:
        for model in (run.model, run.critic):
            if model is not None:
                stack.enter_context(run.acc.no_sync(model))
    return stack


def mini_batch_loss(algo: Algorithm, run: RLRun, mb: Rollout, out: dict[str, torch.Tensor],
                    on_policy: bool, normalizer: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """The algorithm's policy loss on one (micro-)batch; ``policy/entropy`` among its metrics."""
    cfg = run.cfg
    values = out.get("values")
    if run.critic is not None:  # a separate critic: its values now, with gradient
        values = scatter_tokens(run.critic(*mb.model_inputs()), mb.response_mask)
    update = Update(
        logprobs=out["logprobs"], old_logprobs=mb.logprobs, ref_logprobs=mb.ref_logprobs,
        advantages=mb.extras["advantages"],
        mask=mb.extras.get("loss_mask", mb.response_mask),  # --overlong-filter drops some
        on_policy=on_policy, kl_coef=run.kl_ctl.value, normalizer=normalizer, cfg=cfg,
        returns=mb.extras.get("returns"), values=values, old_values=mb.extras.get("values"),
        token_weights=run.tis_weights(mb), group_size=cfg.num_samples)
    loss, metrics = checked_loss(algo, update)
    entropy = entropy_from_logits(out["logits"])  # (N,)
    return loss, {**metrics, "policy/entropy": entropy.mean()}


# ---------------------------------------------------------------------------------------------
# PPO-ptx: the pretraining (SFT) term mixed into each update
# ---------------------------------------------------------------------------------------------


def ptx_items(run: RLRun, cfg: TrainRLConfig) -> list[Encoded]:
    """The demonstrations of ``--ptx-data`` (default ``--data``), encoded."""
    records = load_records(cfg.ptx_data or cfg.data, "demonstrations", ["demonstration"])
    return encode_demonstrations(run.tokenizer, records, cfg.max_length, run.system_prompt)


def ptx_batch(run: RLRun, items: list[Encoded], rng: random.Random, n: int
              ) -> dict[str, torch.Tensor] | None:
    """``n`` random demonstrations for one mini-batch's PPO-ptx term, or None (off)."""
    if not items:
        return None
    batch = collate_padded(rng.sample(items, min(n, len(items))), run.tokenizer.pad_token_id)
    return {k: batch[k].to(run.device) for k in ("input_ids", "attention_mask", "target_mask")}


def ptx_loss(run: RLRun, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token NLL of the demonstrations (the PPO-ptx term, Ouyang et al. 2022, eq. 2)."""
    ids, mask, tmask = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
    out = run.model(ids, mask, tmask)
    logits = out[0] if isinstance(out, tuple) else out
    return token_nll(logits, targets_of(ids, tmask)).mean()
