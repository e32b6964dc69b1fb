"""The state of one RL run: options, models, rewards, rollouts, logging.

An RL step is not a supervised step: the batch is sampled from the policy itself. The one loop
of every algorithm (:func:`rlhfkit.train.trainer.train_rl`) reads::

    for step in run.steps():                 # progress bar, resume, checkpoints
        rollout = run.train_rollout(step)                 # sample + log-probs (+ values)
        terms, extra = run.score(rollout)                 # RM (normalised) + penalties
        ... rewards -> advantages -> losses (the algorithm's entry) ...
        run.backward(loss); run.optimizer_step()          # NaN guard, clipping, schedule
        run.end_step(metrics)                             # adaptive KL, metrics.jsonl

and :class:`RLRun` holds the plumbing: the policy (with LoRA or not), the reference policy, the
reward (a reward model folder, or ``scorer:SPEC`` for a programmatic reward such as the task's
gold scorer, "PPO-GT" in Rafailov et al. 2023), the gold scorer kept apart for evaluation, the
optimizer and schedule (``train/loop.py``'s helpers), checkpoints with exact resume, and the
metric names documented in ``docs/rl.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rlhfkit import memory
from rlhfkit.config import bounds, only, stage_defaults
from rlhfkit.engines.remote import SharedEngines
from rlhfkit.evaluate.finegrained import fine_grained_section
from rlhfkit.evaluate.metrics import kl_stats
from rlhfkit.evaluate.overoptimisation import overoptimisation_section
from rlhfkit.evaluate.report import Section, curves_section, write_sections
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.models.loading import (
    checkpoint_weights,
    load_causal_lm,
    load_tokenizer,
    merge_and_save,
)
from rlhfkit.models.offload import Offloaded
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.models.reward import RewardModel
from rlhfkit.options import (
    DataOptions,
    EvalOptions,
    GenerationOptions,
    KLOptions,
    ModelOptions,
    OptimOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.options import RewardOptions as RewardOptions  # re-exported: an RL option group
from rlhfkit.rewards.shaping import KLController, sequence_rewards
from rlhfkit.rewards.sources import RewardSource, RewardTerms, SourceContext, combine, scorer_source
from rlhfkit.rollout import (
    GenerationBackend,
    PolicyWithValue,
    ReferencePolicy,
    Rollout,
    SamplingConfig,
    forward_response,
    make_backend,
    response_logprobs,
    sample,
    scatter_tokens,
)
from rlhfkit.train.episodes import build_environment, episode_budget, episode_metrics, run_episodes
from rlhfkit.train.inputs import build_gold, load_prompts, reward_sources
from rlhfkit.train.loop import Run, TrainingError
from rlhfkit.train.microbatch import (
    expand_groups,
    group_lengths,
    plan_by_size,
    plan_by_tokens,
)
from rlhfkit.train.services import RemoteReference, ServiceError, remote_reference, remote_sources
from rlhfkit.train.sft import build_policy
from rlhfkit.train.sharding import shard_model

RewardFn = Callable[[list[Any], list[str], Rollout], Sequence[float]]
ASYNC_TIS_CAP = 2.0
"""The cap of the importance weights under --async-generation when --tis-cap is 0."""
"""A programmatic reward: ``(prompts, response texts, rollout) -> one score per response``."""


@stage_defaults(output_dir="runs/rl", model="runs/sft/model", lr_scheduler="constant",
                warmup_ratio=0.0, max_steps=20)
@dataclass
class RLConfig(RunOptions, OptimOptions, ModelOptions,
               only(DataOptions, "data", "split", "eval_data", "eval_split", "eval_fraction",
                    "system_prompt", "epochs", "max_steps", "max_length"),
               only(SamplingOptions, "max_new_tokens", "temperature", "top_p", "top_k",
                    "max_prompt_tokens"),
               GenerationOptions, KLOptions, EvalOptions):
    """Options every RL stage shares (``max_steps`` counts rollout batches)."""

    missing_eos_penalty: float = 0.0
    """Added to the score of a response that never ended (use a negative value; 0 = off)."""
    offload_frozen: bool = False
    """Free the reference policy and the reward models once their pass over a rollout is done,
    and map them back from a file in the run folder on their next forward (not with --fsdp):
    at most one is in memory at a time and none while the policy updates, the results are the
    same bit for bit, and each step pays the mapping back (docs/iterate.md)."""


@dataclass
class PlacementOptions:
    """Where the trainer and the engines run: this machine, or a Ray cluster (``--ray``)."""

    ray: str = ""
    """Run on Ray: auto (a local cluster, or the one this machine belongs to) or the address of
    a cluster's head (ray start --head); empty = no Ray. Needs the 'ray' extra."""
    ray_trainers: int = 1
    """--ray: trainer processes (one torch.distributed world; data parallel)."""
    ray_engines: int = 1
    """--ray: vLLM engine actors, shared out among the trainer processes."""
    ray_gpus_per_trainer: float = 0.0
    """--ray: GPUs each trainer process takes (0 on CPU)."""
    ray_gpus_per_engine: float = 0.0
    """--ray: GPUs each engine takes (0 on CPU; 0.5 puts two engines on one GPU)."""
    ray_cpus_per_worker: float = 1.0
    """--ray: CPUs each trainer process and each engine takes."""
    ray_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """--ray: placement of the bundles: PACK (as few nodes as fit) or SPREAD."""
    ray_ref_actor: bool = False
    """--ray: the reference policy on an actor of its own (a bundle like a trainer's), which
    every trainer process calls for the KL's log-probs instead of holding a copy."""
    ray_reward_actor: bool = False
    """--ray: the reward sources of --reward-model on an actor of their own, called by every
    trainer process (the PPO critic trains, and stays in the trainer)."""


@dataclass
class UpdateOptions:
    """The rollout batch, and how it is reused for updates (PPO and the policy-gradient table)."""

    batch_size: int = field(default=16, metadata=bounds(ge=1))
    """Prompts per rollout batch."""
    mini_batch_size: int = field(default=0, metadata=bounds(ge=0))
    """Samples per optimizer step inside an update (0 = the whole rollout batch)."""
    update_epochs: int = field(default=1, metadata=bounds(ge=1))
    """Passes over each rollout batch."""
    clip_range: float = field(default=0.2, metadata=bounds(gt=0, le=1))
    """Ratio clip epsilon (the REINFORCE loss uses it only when an update reuses samples)."""
    target_kl: float = field(default=0.0, metadata=bounds(ge=0))
    """Stop a batch's update early once an epoch's mean per-token KL from the sampling policy
    to the updated one (the k3 estimate, policy/approx_kl_k3) exceeds this (0 = never)."""
    ptx_coef: float = field(default=0.0, metadata=bounds(ge=0))
    """PPO-ptx: weight gamma of the SFT loss on --ptx-data mixed into each update (0 = off)."""
    ptx_data: str | None = None
    """Demonstrations for PPO-ptx (default: --data when it is task:NAME)."""
    tis_cap: float = field(default=0.0, metadata=bounds(ge=0))
    """Truncated importance sampling (Yao et al. 2025): weight each token's policy loss by
    min(pi_trainer / pi_engine, cap) at sampling time, correcting the vLLM engine's numerical
    gap (0 = off; it needs the vLLM backend, e.g. 2)."""


class Critic(nn.Module):
    """A separate value model initialised from the reward model (Ouyang et al. 2022, sec. 3.5).

    ``V(s_t)`` is the RM's scalar head read at the hidden state before each response token, so
    at the start the critic predicts "the reward if the response stopped here".
    """

    def __init__(self, rm: RewardModel) -> None:
        super().__init__()
        self.rm = rm

    def forward(self, input_ids, attention_mask, target_mask, position_ids=None) -> torch.Tensor:
        """Values (N,) at the positions where ``target_mask[:, 1:]`` is true."""
        body, head = self.rm._parts()
        if body is None:
            raise TrainingError("a critic needs a decoder reward model with a 'score' head")
        hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False).last_hidden_state
        selected = hidden[:, :-1][target_mask[:, 1:].bool()]  # (N, H)
        return head(selected).squeeze(-1).float()


class RLRun:
    """Models, reward, rollouts and metrics of one RL run, on one :class:`Run`.

    Args:
        cfg: The stage's config.
        stage: Stage name for logs (``ppo``, ``reinforce``, ...).
        value: ``None`` (no value function), ``"policy"`` (a value head on the policy) or
            ``"critic"`` (a separate critic initialised from the reward model).
        reward_fn: A programmatic reward used instead of ``cfg.reward_model``.
        samples_per_prompt: Responses sampled per prompt (the group of a group baseline).
        reward_sources: Reward sources used instead of ``cfg.reward_model`` (fine-grained
            rewards from Python; see :mod:`rlhfkit.rewards.sources`).
        updates_per_step: Optimizer steps per rollout batch (the schedule's unit).
    """

    def __init__(self, cfg: RLConfig, stage: str, value: str | None = None,
                 reward_fn: RewardFn | None = None, samples_per_prompt: int = 1,
                 reward_sources: Sequence[RewardSource] | None = None,
                 updates_per_step: int = 1) -> None:
        self.cfg, self.stage = cfg, stage
        # One seed per process: every process samples its own prompts, and with one shared seed
        # they would all draw the same random numbers (correlated samples across the global
        # batch). Weights still start equal everywhere (loaded, zero-initialised, or broadcast
        # from process 0 when wrapped for data parallelism).
        self.run = run = Run(cfg, stage, seed_per_process=True)
        run.live_roots.append(self)  # the reference, rewards and engine count as live memory
        self.acc = acc = run.accelerator
        self.device, self.world, self.rank, self.out = run.device, run.world, run.rank, run.out
        self.autocast = torch.bfloat16 if acc.mixed_precision == "bf16" else None
        self.tokenizer = load_tokenizer(cfg.model)
        self.train_prompts, self.eval_prompts, self.system_prompt, self.task = load_prompts(cfg)
        self.k = samples_per_prompt
        # ---- policy, value, reference
        lm = build_policy(cfg)
        self.value_kind = value
        self.model: nn.Module = PolicyWithValue(lm) if value == "policy" else SelectiveLM(lm)
        head = Path(cfg.model) / "value_head.pt"
        if value == "policy" and head.exists():  # a policy PPO trained before: its value head
            self.model.value_head.load_state_dict(torch.load(head, weights_only=True))
        if getattr(cfg, "ray_ref_actor", False):  # on a Ray actor: no copy here
            try:
                self.reference: ReferencePolicy | RemoteReference = remote_reference(
                    self.device, cfg, bf16=self.autocast is not None)
            except ServiceError as e:
                raise TrainingError(str(e)) from None
        else:
            frozen = load_causal_lm(cfg.reference) if cfg.reference else None
            self.reference = ReferencePolicy(lm, frozen)
            self.reference.model.to(self.device)
        env = getattr(cfg, "environment", "")
        self.environment = build_environment(env) if env else None
        """The multi-turn environment of ``--environment``, or None (one turn)."""
        # ---- reward
        self.reward_clip = cfg.reward_clip if isinstance(cfg, RewardOptions) else 0.0
        self.sources = self._sources(reward_sources, reward_fn)
        # The first reward-model folder: the critic starts from it (--critic rm).
        rm_path = next((s.path for s in self.sources if s.path), None)
        self.gold = build_gold(cfg.gold, self.task)
        self.critic: nn.Module | None = None
        if value == "critic":
            if rm_path is None:
                raise TrainingError("--critic rm needs a reward-model folder to start from")
            critic_rm = RewardModel.from_pretrained(rm_path,
                                                    pad_token_id=self.tokenizer.pad_token_id)
            critic_rm.seq_model.config.use_cache = False
            self.critic = Critic(critic_rm)
        # ---- optimizer, schedule, wrapping for the processes, checkpointed state
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.critic is not None:
            params += list(self.critic.parameters())
        # Sums a tensor over processes: batch statistics (advantage whitening, the batch-mean
        # baseline) are then those of the global batch, as with one process.
        self.global_sum = ((lambda t: acc.reduce(t, reduction="sum")) if self.world > 1
                           else None)
        self.batches_per_epoch = max(1, len(self.train_prompts) // (cfg.batch_size * self.world))
        self.total_steps = cfg.max_steps or max(1, int(self.batches_per_epoch * cfg.epochs))
        self.updates_per_step = updates_per_step
        self.kl_ctl = KLController(cfg.kl_coef, cfg.kl_target or None, cfg.kl_horizon)
        models = [self.model] + ([self.critic] if self.critic is not None else [])
        wrapped = run.prepare(models, params, self.total_steps * updates_per_step,
                              state=[self.kl_ctl])
        self.model = wrapped[0]
        if self.critic is not None:
            self.critic = wrapped[1]
        if run.sharded:  # --fsdp: the frozen models too, without optimizer state
            if self.reference.shared:  # LoRA: the policy's own shards, adapters off
                self.reference.gathered = self.gathered
            elif self.reference.model is not None:  # (None: on a Ray actor)
                shard_model(self.reference.model, cfg, frozen=True)
            for source in self.sources:  # reward models: each called through its own forward,
                if isinstance(source.model, nn.Module):  # on equal shares of every rollout
                    shard_model(source.model, cfg, frozen=True)
            self._first_forward()
        self.offloaded = self._offload_frozen() if getattr(cfg, "offload_frozen", False) else {}
        """--offload-frozen: the frozen models, each freed once its pass is done
        (:meth:`release_frozen`): "reference", "reward-0", ..."""
        self._backend: GenerationBackend | None = None
        self._ahead: dict[int, tuple[threading.Event, list, int]] = {}
        """Batches sampled, or being sampled, in the background (--async-generation): step ->
        (set when done, [rollout or the error], the policy version that sampled it)."""
        self._chain: threading.Thread | None = None
        """The thread sampling them, one batch after another on the one engine."""
        self.max_staleness = int(getattr(cfg, "max_staleness", 1))
        if self.max_staleness != 1 and not self.off_policy:
            raise TrainingError(f"--max-staleness {self.max_staleness} bounds how far "
                                "--async-generation samples ahead: turn that on, or leave it 1")
        self.staleness = 0
        """Policy versions between the weights that sampled this batch and the update's."""
        if (self.off_policy or getattr(cfg, "tis_cap", 0.0)) and (cfg.top_p < 1 or cfg.top_k):
            raise TrainingError("--async-generation and --tis-cap compare the engine's log-probs "
                                "with the trainer's, which under --top-p/--top-k are not those "
                                "of the same distribution (the engine's are renormalised over "
                                "the kept tokens): sample with --top-p 1 --top-k 0")
        self.policy_version = 0
        """Optimizer steps taken by this process (a generation engine syncs when it changes)."""
        self._last: dict[str, float] = {}
        self._step_t0 = time.perf_counter()
        self._phase_s: dict[str, float] = {}
        """Seconds of this step's phases (:meth:`timed`), logged as time/PHASE_s."""
        self._phase_gib: dict[str, float] = {}
        """Peak RSS of this step's phases, logged as mem/PHASE_peak_gib."""

    def _sources(self, given: Sequence[RewardSource] | None,
                 reward_fn: RewardFn | None) -> list[RewardSource]:
        remote = getattr(self.cfg, "ray_reward_actor", False)
        if remote and (given is not None or reward_fn is not None):
            raise TrainingError("--ray-reward-actor builds the rewards of --reward-model on its "
                                "actor; a reward given in Python stays in the trainer: leave "
                                "--ray-reward-actor off")
        if given is not None:
            return list(given)
        if remote:
            try:
                return remote_sources(self.cfg, bf16=self.autocast is not None)
            except ServiceError as e:
                raise TrainingError(str(e)) from None
        if reward_fn is not None:
            return [scorer_source("reward", lambda p, t: reward_fn(p, t, self._scoring))]
        cfg = self.cfg
        ctx = SourceContext(self.tokenizer, self.device, self._autocast, cfg.segment_unit,
                            cfg.normalize_reward)
        try:
            return reward_sources(cfg.reward_model, cfg.rewards, ctx, self.task)
        except ValueError as e:
            raise TrainingError(str(e)) from None

    # ------------------------------------------------------------------ models
    @property
    def lm(self) -> nn.Module:
        """The policy's causal LM (unwrapped), to sample from."""
        return self.acc.unwrap_model(self.model).lm

    @property
    def sampling(self) -> SamplingConfig:
        """The sampling settings of this run."""
        c = self.cfg
        return SamplingConfig(c.max_new_tokens, c.temperature, c.top_p, c.top_k)

    @property
    def step(self) -> int:
        """Rollout batches done."""
        return self.run.step

    @property
    def backend(self) -> GenerationBackend:
        """The sampler of ``--generation-backend``, made on first use (one per process).

        Engines given by address are shared out among the trainer processes (each syncs and
        samples on its own share); ``--vllm-engines N`` starts N engines per process.
        """
        if self._backend is None:
            cfg = self.cfg
            kind = cfg.generation_backend
            if kind != "hf" and self.acc.distributed_type.name == "FSDP":
                raise TrainingError("accelerate's FSDP: vLLM engines are synced from rlhfkit's "
                                    "own --fsdp only; use --fsdp, or --generation-backend hf")
            if kind == "auto" and self.run.sharded:
                kind = "hf"
                if self.acc.is_main_process:
                    print("[generation] Hugging Face generate on the shards (--fsdp)")
            engines, shared = cfg.vllm_engines, False
            if engines and not engines.isdigit() and self.world > 1:
                addresses = [a for a in engines.split(",") if a.strip()]
                shared = len(addresses) < self.world  # process 0 feeds them all
                if not shared:
                    engines = ",".join(addresses[self.rank::self.world])
                elif self.off_policy:
                    raise TrainingError(
                        f"--async-generation with {len(addresses)} engine(s) for {self.world} "
                        "trainer processes: sharing engines is a collective the background "
                        "sampling cannot take part in; give each process an engine, or sample "
                        "in step")
                elif self.acc.is_main_process:
                    print(f"[generation] {len(addresses)} engine(s) shared by {self.world} "
                          "trainer processes: process 0 syncs them and spreads every "
                          "process's prompts over them")
            if shared and self.rank != 0:
                self._backend = SharedEngines(None, checkpoint_weights, self.run.sharded)
                return self._backend
            self._backend = backend = make_backend(
                kind, cfg.model, self.autocast, seed=cfg.seed + self.rank,
                max_model_len=cfg.max_prompt_tokens + episode_budget(cfg) + 1,
                kv_cache_gb=cfg.vllm_kv_cache_gb,
                log=print if self.acc.is_main_process else (lambda *a: None),
                engines=engines, weight_sync=cfg.weight_sync,
                sync_bucket_mb=cfg.sync_bucket_mb, engine_timeout=cfg.engine_timeout,
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                tensor_parallel_size=cfg.vllm_tensor_parallel_size, sleep_level=cfg.vllm_sleep)
            if self.run.sharded and hasattr(backend, "synced"):
                # every forward of a sharded model is a collective: decode in step
                backend.synced = True
            if shared:
                self._backend = SharedEngines(backend, checkpoint_weights, self.run.sharded)
        return self._backend

    # ------------------------------------------------------------------ data
    def prompt_batch(self, step: int) -> list[Any]:
        """This process's prompts at ``step``, each repeated ``k`` times (consecutively)."""
        epoch, b = divmod(step, self.batches_per_epoch)
        order = list(range(len(self.train_prompts)))
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
        size = self.cfg.batch_size
        start = (b * self.world + self.rank) * size
        return [self.train_prompts[i] for i in order[start:start + size] for _ in range(self.k)]

    # ------------------------------------------------------------------ rollouts and rewards
    def _autocast(self) -> contextlib.AbstractContextManager:
        return (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast
                else contextlib.nullcontext())

    @torch.no_grad()
    def sample_responses(self, prompts: list[Any], seed: int) -> Rollout:
        """Sample on the backend, its engine (if any) synced to the policy first."""
        backend = self.backend
        if hasattr(backend, "sync"):  # an engine with its own weights: bring them up to date
            # Under --fsdp every process takes part: each parameter is gathered whole once
            # (checkpoint_weights), then cast and loaded into this process's engine.
            backend.sync(self.lm, self.policy_version)
            backend.seed = seed
            return self._sample(prompts, backend)
        with self.gathered():  # transformers samples from the policy itself
            return self._sample(prompts, backend)

    @torch.no_grad()
    def _first_forward(self) -> None:
        """One forward through the sharded policy's root (two tokens), on every process.

        FSDP2 sets its units up at the first forward of the root; sampling calls the LM inside
        it, which would set the blocks up as roots of their own instead.
        """
        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        ones = torch.ones_like(ids)
        self.model(ids, ones, ones.bool() & torch.tensor([[False, True]], device=self.device),
                   (ones.cumsum(-1) - 1))

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Under ``--fsdp``, the policy's root parameters gathered for sampling.

        Sampling calls the LM itself, past the root's own gathering hook; the blocks gather
        theirs as they run.
        """
        root = self.acc.unwrap_model(self.model)
        if not self.run.sharded:
            yield
            return
        root.unshard()
        try:
            yield
        finally:
            root.reshard()

    def _sample(self, prompts: list[Any], backend: GenerationBackend) -> Rollout:
        if self.environment is not None:  # multi-turn episodes (train/episodes.py)
            cfg = self.cfg
            return run_episodes(self.lm, self.tokenizer, prompts, self.environment, self.sampling,
                                self.system_prompt, backend, cfg.max_turns,
                                cfg.max_prompt_tokens, cfg.max_env_tokens)
        return sample(self.lm, self.tokenizer, prompts, self.sampling, self.system_prompt,
                      backend=backend, scorer=None, max_prompt_tokens=self.cfg.max_prompt_tokens,
                      autocast=self.autocast)

    def _offload_frozen(self) -> dict[str, Offloaded]:
        """The reference and the reward models, each with a file of its own in the run folder."""
        if self.run.sharded:
            raise TrainingError("--offload-frozen does not combine with --fsdp: there the frozen "
                                "models are sharded over the processes instead")
        models: list[tuple[str, nn.Module]] = []
        if isinstance(self.reference, ReferencePolicy) and not self.reference.shared:
            models.append(("reference", self.reference.model.lm))
        models += [(f"reward-{i}", s.model) for i, s in enumerate(self.sources)
                   if isinstance(s.model, nn.Module)]
        folder = self.out / "offload"
        parts: dict[str, Offloaded] = {}
        for name, m in models:  # a module two sources share is offloaded once
            if all(part.module is not m for part in parts.values()):
                parts[name] = Offloaded(m, folder / f"{name}-rank{self.rank}.pt")
        return parts

    def release_frozen(self, kind: str = "") -> None:
        """--offload-frozen: free the frozen models named ``kind``... until their next forward.

        ``kind`` is a prefix of the names ("reference", "reward"; empty: all of them). Each is
        freed once its pass over a rollout is done (the reference after the trainer's passes,
        the reward models after the rewards), so that at most one is in memory at a time, and
        none during the update.
        """
        for name, part in self.offloaded.items():
            if name.startswith(kind):
                part.release()

    def engine_sleep(self) -> None:
        """Put an in-process engine to sleep until its next sync (``--vllm-sleep``)."""
        if self._backend is not None and hasattr(self._backend, "sleep"):
            self._backend.sleep()

    def _seed(self, step: int, evaluation: bool = False) -> int:
        """The engine's seed for a rollout, a function of the step.

        A resumed run then samples what an uninterrupted one would.
        """
        return (self.cfg.seed * 1_000_003 + step * 7_919 + self.rank * 131
                + (61 if evaluation else 0)) % 2**31

    @torch.no_grad()
    def rollout(self, prompts: list[Any], with_values: bool = True,
                policy_logprobs: bool = True) -> Rollout:
        """Sample responses; attach ``logprobs``, ``ref_logprobs`` and old ``values``.

        With ``policy_logprobs=False`` the policy's own pass (``logprobs`` and a value head's
        ``values``) is left to the caller: a single on-policy update computes them in its
        training forward pass anyway (:func:`rlhfkit.train.pg.train_pg`).
        """
        self._wait_for_prefetch()  # one engine: never two rollouts on it at once
        with self.timed("sample"):
            rollout = self.sample_responses(prompts, self._seed(self.step, not with_values))
        with self.timed("passes"):
            return self.score_rollout(rollout, with_values, policy_logprobs)

    @torch.no_grad()
    def score_rollout(self, rollout: Rollout, with_values: bool = True,
                      policy_logprobs: bool = True) -> Rollout:
        """The trainer's passes over a sampled rollout.

        The policy's log-probs (and a value head's values), the reference's log-probs, and a
        separate critic's values.
        """
        scorer = self.acc.unwrap_model(self.model)
        t = self.cfg.temperature
        chunks = self.micro_batches(rollout, default_size=16, same_count=self.run.sharded)
        with self._autocast():
            scorer.eval()
            if not policy_logprobs:
                pass
            elif self.value_kind == "policy":
                def policy(mb: Rollout) -> dict[str, torch.Tensor]:
                    out = forward_response(scorer, mb, t)
                    return {"logprobs": out["logprobs"], "values": out["values"]}

                parts = self.in_micro_batches(rollout, chunks, policy)
                rollout.logprobs, rollout.extras["values"] = parts["logprobs"], parts["values"]
            else:
                rollout.logprobs = self.in_micro_batches(
                    rollout, chunks, lambda mb: {"lp": response_logprobs(scorer, mb, t, len(mb))}
                )["lp"]
            scorer.train()
            rollout.ref_logprobs = self.in_micro_batches(
                rollout, chunks,
                lambda mb: {"lp": self.reference.logprobs(mb, t, len(mb))})["lp"]
            self.release_frozen("reference")
            if self.value_kind == "critic" and with_values:
                critic = self.acc.unwrap_model(self.critic)
                critic.eval()

                def values(mb: Rollout) -> dict[str, torch.Tensor]:
                    v = critic(*mb.model_inputs())
                    return {"v": scatter_tokens(v, mb.response_mask)}

                rollout.extras["values"] = self.in_micro_batches(
                    rollout, self.micro_batches(rollout, same_count=self.run.sharded),
                    values)["v"]
                critic.train()
        return rollout

    # ------------------------------------------------------------------ micro-batches
    @property
    def micro_batching(self) -> bool:
        """True with --micro-batch-size or --micro-batch-tokens."""
        return bool(self.cfg.micro_batch_size or self.cfg.micro_batch_tokens)

    def micro_batches(self, rollout: Rollout, default_size: int = 0,
                      same_count: bool = False, group: int = 1) -> list[list[int]]:
        """This process's micro-batches of ``rollout``, as lists of row indices.

        ``--micro-batch-tokens``: at most that many tokens (prompt + response) each, short
        sequences together and long ones alone (:func:`rlhfkit.train.microbatch.plan_by_tokens`);
        else ``--micro-batch-size`` sequences each; else chunks of ``default_size`` (0: all at
        once). With ``group > 1`` the rows are groups of ``group`` consecutive ones that are
        never split (a loss that couples them): the plan is made over whole groups (a group's
        tokens are its rows'; at least one group per micro-batch, so a micro-batch may exceed
        the size or budget by up to a group) and each group's rows come out together, in order.
        With ``same_count`` every process gets as many as the one with the most (empty lists
        pad the others): each backward pass is a collective.
        """
        cfg, n = self.cfg, len(rollout) // group
        if cfg.micro_batch_tokens:
            lengths = group_lengths(rollout.attention_mask.sum(-1).tolist(), group)
            plan = plan_by_tokens(lengths, cfg.micro_batch_tokens).rank(0)
        else:
            size = cfg.micro_batch_size or default_size or max(len(rollout), 1)
            plan = plan_by_size(n, max(1, size // group))
        if group > 1:
            plan = expand_groups(plan, group)
        if same_count and self.world > 1:
            count = torch.tensor(float(len(plan)), device=self.device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
            plan += [[] for _ in range(int(count) - len(plan))]
        return plan

    def for_forward(self, mb: Rollout) -> Rollout:
        """A micro-batch as its forward passes take it.

        Packed without padding with ``--pack-micro-batches``; else trimmed to its own width
        when micro-batching; else as it is.
        """
        if self.cfg.pack_micro_batches:
            return dataclasses.replace(mb, packed=True)
        return mb.trimmed() if self.micro_batching else mb

    def in_micro_batches(self, rollout: Rollout, plan: list[list[int]],
                         fn: Callable[[Rollout], dict[str, torch.Tensor]]
                         ) -> dict[str, torch.Tensor]:
        """``fn`` on each micro-batch of ``plan``, its (b, R) outputs put back in row order.

        Each micro-batch goes through :meth:`for_forward` first (packed, or trimmed to its
        own width).
        """
        width = rollout.response_mask.shape[1]
        out: dict[str, torch.Tensor] = {}
        for rows in plan:
            if not rows:
                if self.run.sharded:  # a forward is a collective: run one, keep nothing
                    fn(rollout.select([0]))
                continue
            for key, part in fn(self.for_forward(rollout.select(rows))).items():
                if key not in out:
                    out[key] = part.new_zeros((len(rollout), width))
                out[key][torch.as_tensor(rows, device=part.device), :part.shape[1]] = part
        return out

    # ------------------------------------------------------------------ overlapped generation
    @property
    def off_policy(self) -> bool:
        """True under --async-generation: each batch was sampled one update ago."""
        return bool(getattr(self.cfg, "async_generation", False))

    @torch.no_grad()
    def train_rollout(self, step: int, policy_logprobs: bool = True) -> Rollout:
        """The rollout of training step ``step``.

        Plain: sampled now. With ``--async-generation`` the batch of step ``s + 1`` is sampled
        in the background while the trainer updates on step ``s``, so it comes from the
        weights one update behind; with ``--max-staleness K`` the engine samples up to K
        batches ahead on one version of the weights (each at most K updates behind).
        Decoupled PPO (Hilton et al. 2021; as AReaL and PipelineRL run it): the trainer
        recomputes the log-probs at its current weights (the proximal policy; its "old"
        log-probs, which the ratio is clipped against, and the KL's), and each token's loss
        is weighted by ``min(pi_prox / pi_engine, --tis-cap)``, the importance of the
        proximal policy to the one that sampled (:meth:`tis_weights`).
        """
        if not self.off_policy:
            return self.rollout(self.prompt_batch(step), policy_logprobs=policy_logprobs)
        if self.environment is not None:
            raise TrainingError("--async-generation does not play multi-turn episodes yet: "
                                "leave it off with --environment")
        if not hasattr(self.backend, "sync"):
            raise TrainingError("--async-generation needs a vLLM backend (--generation-backend "
                                "vllm): the engine's log-probs are the sampling policy's")
        ahead = self._ahead.pop(step, None)
        if ahead is not None:
            done, box, version = ahead
            with self.timed("sample"):  # only what the update did not hide
                done.wait()
            if isinstance(box[0], BaseException):
                raise box[0]
            rollout, sampled_with = box[0], version
        else:  # the first step (or the first after a resume): nothing was sampled ahead
            self._wait_for_prefetch()
            with self.timed("sample"):
                rollout = self.sample_responses(self.prompt_batch(step), self._seed(step))
            sampled_with = self.policy_version
        if self._chain is None or not self._chain.is_alive():  # the engine is idle: top up
            wanted = [j for j in range(step + 1, min(step + self.max_staleness,
                                                     self.total_steps - 1) + 1)
                      if j not in self._ahead]
            if wanted:
                self._prefetch(wanted)
        self.staleness = self.policy_version - sampled_with
        # The proximal policy: log-probs (and values) at the trainer's weights now.
        with self.timed("passes"):
            return self.score_rollout(rollout)

    def _prefetch(self, steps: list[int]) -> None:
        """Start sampling the batches of ``steps`` in a thread, in order, on today's weights.

        The engine is synced first, while it is idle and the weights hold still. The batch of
        a step ``j`` is started at step ``s >= j - --max-staleness``, so it is at most that
        many updates behind when its update comes.
        """
        backend = self.backend
        backend.sync(self.lm, self.policy_version)  # before the thread: the engine is idle
        version, threads = self.policy_version, torch.get_num_threads()
        jobs = [(j, self.prompt_batch(j), self._seed(j), threading.Event(), [None])
                for j in steps]
        for j, _, _, done, box in jobs:
            self._ahead[j] = (done, box, version)

        def work() -> None:
            # A new thread starts with OpenMP's default thread count, not the one the process
            # set; vLLM's CPU attention refuses a mismatch ("thread_num (2 vs. 1)").
            torch.set_num_threads(threads)
            failed: BaseException | None = None
            for _, prompts, seed, done, box in jobs:
                if failed is None:
                    try:
                        box[0] = sample(self.lm, self.tokenizer, prompts, self.sampling,
                                        self.system_prompt, backend=_Seeded(backend, seed),
                                        max_prompt_tokens=self.cfg.max_prompt_tokens,
                                        autocast=self.autocast)
                    except BaseException as err:  # noqa: BLE001 - raised in the trainer's thread
                        failed = err
                if failed is not None:
                    box[0] = failed
                done.set()

        self._chain = threading.Thread(target=work, name=f"rollouts-{steps[0]}-{steps[-1]}",
                                       daemon=True)
        self._chain.start()

    def _wait_for_prefetch(self) -> None:
        if self._chain is not None:
            self._chain.join()

    def score(self, rollout: Rollout) -> tuple[RewardTerms, dict[str, float]]:
        """The reward terms of a training rollout, and metrics of the scoring itself.

        Every reward source (:meth:`rewards`); a run class of an algorithm with another payoff
        overrides it (Nash-MD's preference against an opponent).
        """
        return self.rewards(rollout), {}

    @torch.no_grad()
    def rewards(self, rollout: Rollout) -> RewardTerms:
        """Every reward source on the rollout: per-response sums and per-token placements."""
        self._scoring = rollout  # what a Python reward_fn receives as its third argument
        terms = combine(self.sources, rollout, self.reward_clip or None,
                        self.cfg.missing_eos_penalty)
        self.release_frozen("reward")
        if getattr(self.cfg, "length_debias", False):
            terms = length_debiased(terms, rollout.response_mask)
        if getattr(self.cfg, "length_floor", 0.0):
            terms = length_floored(terms, rollout.response_mask, self.cfg.length_floor,
                                   self.cfg.length_floor_penalty)
        return terms

    def gold_scores(self, rollout: Rollout) -> list[float] | None:
        """Gold-scorer values of the responses (evaluation only; never optimised)."""
        if self.gold is None:
            return None
        return list(self.gold(rollout.prompts, rollout.texts))

    # ------------------------------------------------------------------ updates
    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass; every process stops together if any loss is NaN or infinite."""
        self.run.backward(loss, hint=" or --reward-clip")

    def optimizer_step(self) -> float:
        """Clip, step, advance the schedule; returns the gradient norm."""
        norm = self.run.optimizer_step()
        self.policy_version += 1
        return norm

    # ------------------------------------------------------------------ the loop
    def steps(self) -> Iterator[int]:
        """Yield step numbers from the resumed one on, with a progress bar.

        Evaluates and checkpoints between steps as configured, and saves the final policy.
        """
        first = True
        for step in self.run.steps(self.total_steps, self.evaluate, unit="batch"):
            if first:  # resumed: the weights are the checkpoint's, not those of --model
                self.policy_version, first = step * self.updates_per_step, False
            yield step
            last = self._last
            self.run.postfix = {k.split("/")[-1]: f"{last[k]:.3g}" for k in
                                ("reward/score", "kl/seq", "gold/mean") if k in last}
        self.finish()

    def start_step(self) -> None:
        """Mark the start of a step (for perf/step_s); hand the last step's freed memory back."""
        memory.trim()
        self._step_t0 = time.perf_counter()
        self._phase_s = {}
        self._phase_gib = {}

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's seconds to ``time/PHASE_s`` of this step's metrics.

        Its peak resident set goes to ``mem/PHASE_peak_gib`` (the larger, if the phase runs
        twice in a step).
        """
        start = time.perf_counter()
        window = memory.PeakWindow()
        try:
            with window:
                yield
        finally:
            self._phase_s[phase] = self._phase_s.get(phase, 0.0) + time.perf_counter() - start
            self._phase_gib[phase] = max(self._phase_gib.get(phase, 0.0), window.gib)

    def end_step(self, metrics: dict[str, float], rollout: Rollout,
                 kl_seq: torch.Tensor) -> None:
        """Adapt beta, add the shared metrics and log them (called once per rollout batch)."""
        n = len(rollout)
        # Every process holds the same number of samples, so the mean of the per-process means
        # is the mean over the global batch: log that, not process 0's share alone.
        metrics = {k: v / self.world for k, v in self.run.reduce_sums(metrics).items()}
        metrics["kl/coef"] = self.kl_ctl.value
        mean_kl = float(self.reduce_mean({"kl": float(kl_seq.sum())}, n)["kl"])
        self.kl_ctl.update(mean_kl, n * self.world)
        metrics["lr"] = self.run.lr
        elapsed = time.perf_counter() - self._step_t0
        metrics["perf/step_s"] = elapsed
        metrics["perf/samples_per_s"] = n * self.world / max(elapsed, 1e-9)
        # Where the step went: sampling (weight sync included), the trainer's passes over the
        # rollout (policy, reference, critic), the rewards, the update (see docs/iterate.md).
        metrics.update({f"time/{k}_s": v for k, v in self._phase_s.items()})
        metrics.update({f"mem/{k}_peak_gib": v for k, v in self._phase_gib.items()})
        if self.device.type == "cuda":  # this process's peak so far (GPU checks read it)
            metrics["perf/gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._last = metrics
        self.run.log(metrics, self.step + 1)
        if self.acc.is_main_process:
            with open(self.out / "samples.jsonl", "a") as f:
                for i in range(min(4, n)):
                    f.write(json.dumps({"step": self.step + 1, "prompt": rollout.prompts[i],
                                        "response": rollout.texts[i]}) + "\n")

    def rollout_metrics(self, rollout: Rollout, terms: RewardTerms,
                        rewards: torch.Tensor | None = None) -> tuple[dict[str, float],
                                                                      torch.Tensor]:
        """reward/…, kl/…, gold/… and response/… metrics of a rollout; also (B,) k1 KL."""
        raw, scores = terms.raw, terms.scores
        mask = rollout.response_mask.float()
        kl_tok = (rollout.logprobs - rollout.ref_logprobs) * mask
        kl_seq = kl_tok.sum(-1)  # (B,)
        stats = kl_stats(rollout.logprobs, rollout.ref_logprobs, mask)
        m = {
            "reward/score": float(raw.mean()),
            "reward/score_std": float(raw.std(unbiased=False)),
            "reward/normalized": float(scores.mean()),
            "kl/seq": float(kl_seq.mean()),
            "kl/k3_seq": stats["kl/k3_seq_mean"],
            "kl/token": stats["kl/token_mean"],
            "response/length": float(mask.sum(-1).mean()),
            "response/ended": float(rollout.ended.float().mean()),
        }
        if rewards is not None:
            m["reward/total"] = float(rewards.sum(-1).mean())
        synced = getattr(self._backend, "last_sync", None)
        if synced:  # the latest weight sync into the engine(s)
            m.update({f"sync/{k}": float(v) for k, v in synced.items()})
        engine = rollout.extras.get("engine_logprobs")
        if engine is not None:  # the trainer's log-probs against the engine's, per token
            tokens = rollout.response_mask.bool()
            diff = (rollout.logprobs.float() - engine.float())[tokens]
            gap = diff.abs()
            m["rollout/logprob_gap_mean"] = float(gap.mean()) if gap.numel() else 0.0
            m["rollout/logprob_gap_max"] = float(gap.max()) if gap.numel() else 0.0
            if self.tis_cap and diff.numel():  # the importance weights the loss uses
                ratio = diff.exp()
                m["rollout/tis_mean"] = float(ratio.clamp(max=self.tis_cap).mean())
                m["rollout/tis_clipped"] = float((ratio > self.tis_cap).float().mean())
        if self.off_policy:
            m["rollout/staleness"] = float(self.staleness)
        for name, values in terms.by_source.items():
            m[f"reward/{name}"] = float(values.mean())
        m.update(episode_metrics(rollout))
        gold = self.gold_scores(rollout)
        if gold is not None:
            m["gold/mean"] = sum(gold) / len(gold)
        return m, kl_seq

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Sample held-out prompts: eval/reward, eval/gold, eval/kl, eval/length."""
        prompts = self.eval_prompts[: self.cfg.eval_prompts]
        if not prompts:
            return {}
        memory.trim()  # the update's freed activations, before the evaluation's own
        local = self.eval_share(prompts)
        sums = dict.fromkeys(["eval/reward", "eval/kl", "eval/length"]
                             + (["eval/gold"] if self.gold is not None else []), 0.0)
        if local:
            rollout = self.rollout(local, with_values=False)
            raw = self.rewards(rollout).raw
            kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.response_mask).sum(-1)
            sums.update({"eval/reward": float(raw.sum()), "eval/kl": float(kl.sum()),
                         "eval/length": float(rollout.response_lengths.float().sum())})
            gold = self.gold_scores(rollout)
            if gold is not None:
                sums["eval/gold"] = float(sum(gold))
        return self.reduce_mean(sums, len(local))

    def eval_share(self, prompts: list[Any]) -> list[Any]:
        """This process's share of held-out prompts (each samples its own).

        Under ``--fsdp`` every forward is a collective, so every process needs as many
        prompts: the short shares are not evened out here but refused, naming the fix.
        """
        local = prompts[self.rank::self.world]
        if self.run.sharded and len(prompts) % self.world:
            raise TrainingError(f"--fsdp: --eval-prompts {len(prompts)} must be a multiple of "
                                f"the {self.world} processes (each evaluates as many)")
        return local

    def reduce_mean(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """Mean over all processes of per-sample sums (``n`` samples on this process)."""
        total = self.run.reduce_sums({**sums, "_n": float(n)})
        count = max(total.pop("_n"), 1.0)
        return {k: v / count for k, v in total.items()}

    # ------------------------------------------------------------------ logging and saving
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append to metrics.jsonl (main process only)."""
        self.run.log(metrics, step)

    def latest_checkpoint(self) -> Path | None:
        """Newest complete checkpoint, if any."""
        return self.run.latest_checkpoint()

    def finish(self) -> Path:
        """Save the policy (LoRA merged) to ``output_dir/model`` and close the logs.

        Also writes ``report.html``: gold and proxy reward against sqrt(KL) along training
        (:func:`rlhfkit.evaluate.overoptimisation.overoptimisation_section`) and, with several
        reward sources, each source's curve
        (:func:`rlhfkit.evaluate.finegrained.fine_grained_section`).
        """
        # Under --fsdp every process gathers; the main process gets the whole model.
        policy = self.run.export_copy(self.acc.unwrap_model(self.model),
                                      lambda: self._unsharded_policy())
        if self.acc.is_main_process:
            merge_and_save(policy.lm, self.tokenizer, self.out / "model",
                           adapter_dir=self.out / "adapter")
            if self.value_kind == "policy":
                torch.save(policy.value_head.state_dict(), self.out / "model" / "value_head.pt")
        for part in self.offloaded.values():  # the files removed; the models stay freed
            part.discard()
        self.run.close()
        if self.acc.is_main_process:
            write_sections(self.out / "report.html", f"rlhfkit {self.stage}: {self.out}",
                           [s for s in self.report_sections() if s is not None])
        if self.acc.is_main_process:
            print(f"[{self.stage}] saved the policy to {self.out / 'model'}")
        self._wait_for_prefetch()
        if hasattr(self._backend, "close"):
            self._backend.close()
        self.acc.wait_for_everyone()
        return self.out / "model"

    def _unsharded_policy(self) -> nn.Module:
        """A fresh policy module of this run's kind, to load gathered weights into."""
        lm = build_policy(self.cfg)
        return PolicyWithValue(lm) if self.value_kind == "policy" else SelectiveLM(lm)

    def report_sections(self) -> list[Section | None]:
        """The sections of ``report.html`` (None for one with nothing to show)."""
        sections = [overoptimisation_section(self.out)]
        if len(self.sources) > 1:
            sections.append(fine_grained_section(self.out))
        sections.append(rlvr_section(self.out))
        return sections

    def tis_weights(self, mb: Rollout) -> torch.Tensor | None:
        """(B, R) truncated importance weights ``min(pi_trainer / pi_engine, cap)``, or None.

        Yao et al. (2025): the engine samples from a slightly different distribution than the
        trainer computes (other kernels, bf16); weighting each token's policy loss by the
        capped ratio at sampling time corrects for it. Needs ``--tis-cap`` and engine log-probs.
        """
        cap = self.tis_cap
        engine = mb.extras.get("engine_logprobs")
        if not cap or engine is None:
            return None
        return torch.exp(mb.logprobs.float() - engine.float()).clamp(max=cap).detach()

    @property
    def tis_cap(self) -> float:
        """``--tis-cap``; under ``--async-generation`` 0 stands for the default cap, 2."""
        cap = getattr(self.cfg, "tis_cap", 0.0)
        return cap or (ASYNC_TIS_CAP if self.off_policy else 0.0)


def length_debiased(terms: RewardTerms, response_mask: torch.Tensor) -> RewardTerms:
    """The rewards minus their least-squares line on response length, over the batch.

    With ``L`` the lengths and ``s`` the scores, ``b = cov(L, s) / var(L)`` and each score
    becomes ``s - b (L - mean L)``: the batch's mean is kept, its trend with length removed.
    The correction lands on each response's last token, where a holistic score sits.
    """
    lengths = response_mask.sum(-1).float().to(terms.scores.device)
    x = lengths - lengths.mean()
    scores = terms.scores.float()
    slope = (x * (scores - scores.mean())).sum() / (x * x).sum().clamp(min=1e-8)
    return with_correction(terms, -slope * x, response_mask)


def length_floored(terms: RewardTerms, response_mask: torch.Tensor, floor: float,
                   penalty: float) -> RewardTerms:
    """The rewards, less ``penalty * (floor - L) / floor`` for each response of length ``L < floor``.

    A guard against the collapse to short answers that RL finds when its reward is easiest to
    earn in a few words: the penalty grows linearly from 0 at the floor to ``penalty`` at no
    tokens and lands on the response's last token. Responses at or above the floor are
    untouched, so it does not pay to be longer than the floor.
    """
    lengths = response_mask.sum(-1).float().to(terms.scores.device)
    return with_correction(terms, -penalty * (floor - lengths).clamp(min=0) / floor,
                           response_mask)


def with_correction(terms: RewardTerms, correction: torch.Tensor,
                    response_mask: torch.Tensor) -> RewardTerms:
    """``terms`` with a (B,) correction added to the scores.

    The correction also lands on each response's last token, as one more dense source of
    weight 1.
    """
    dense = [*terms.dense, sequence_rewards(correction.cpu(), response_mask.cpu())]
    return dataclasses.replace(terms, scores=terms.scores.float() + correction, dense=dense,
                               weights=[*terms.weights, 1.0])


class _Seeded:
    """A backend whose engine samples with ``seed`` (for a rollout sampled in a thread)."""

    def __init__(self, backend: Any, seed: int) -> None:
        self.backend, self.seed = backend, seed

    def generate(self, *args: Any) -> list[list[int]]:
        self.backend.seed = self.seed
        ids = self.backend.generate(*args)
        self.last_logprobs = self.backend.last_logprobs
        return ids


EPISODE_CURVES = ("gold/mean", "episode/turns", "episode/tool_calls", "episode/questions",
                  "episode/env_tokens", "rlvr/signal_groups", "rlvr/kept_groups",
                  "rlvr/truncated", "reward/overlong")
"""Curves of verifiable and multi-turn runs (those a run logged are drawn)."""


def rlvr_section(run_dir: Path) -> Section | None:
    """Training accuracy, turns and tool calls per episode, DAPO's group counts, by step.

    None for a run that logged none of them.
    """
    rows = read_metrics(run_dir)
    if not any(k.startswith(("episode/", "rlvr/")) for r in rows for k in r):
        return None
    return curves_section("Verifiable rewards and episodes", rows, EPISODE_CURVES,
                          "gold/mean: the share of sampled responses the verifier accepts (the "
                          "training accuracy); episode/: per episode; rlvr/signal_groups: "
                          "the share of groups whose rewards differ.")
