"""What the RL trainers (PPO, REINFORCE, RLOO, GRPO) share: config, models, rewards, logging.

An RL step is not a supervised step: the batch is sampled from the policy itself. Each
algorithm therefore writes its own visible loop (``train/ppo.py``, ``train/pg.py``)::

    for step in run.steps():                 # progress bar, resume, checkpoints
        rollout = run.rollout(run.prompt_batch(step))     # sample + log-probs (+ values)
        scores = run.scores(rollout)                      # RM (normalised) + penalties
        ... rewards -> advantages -> losses ...
        run.backward(loss); run.optimizer_step()          # NaN guard, clipping, schedule
        run.end_step(metrics)                             # adaptive KL, metrics.jsonl

and :class:`RLRun` holds the plumbing: the policy (with LoRA or not), the reference policy, the
reward (a reward model folder, or ``scorer:SPEC`` for a programmatic reward such as the task's
gold scorer, "PPO-GT" in Rafailov et al. 2023), the gold scorer kept apart for evaluation, the
optimizer and schedule (``train/loop.py``'s helpers), checkpoints with exact resume, and the
metric names documented in ``docs/rl.md``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfkit import config as cfglib
from rlhfkit.data.sources import prompt_key, train_and_eval_records
from rlhfkit.evaluate.metrics import kl_stats
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, merge_and_save
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.models.reward import RewardModel
from rlhfkit.reward_sources import RewardSource, RewardTerms, combine
from rlhfkit.rewards import KLController
from rlhfkit.rollout import (
    PolicyWithValue,
    ReferencePolicy,
    Rollout,
    SamplingConfig,
    response_logprobs,
    sample,
)
from rlhfkit.train.loop import (
    Checkpoints,
    MetricsLog,
    TrainConfig,
    TrainingError,
    build_scheduler,
    make_accelerator,
    make_optimizer,
    reduce_sums,
    seed_everything,
)

RewardFn = Callable[[list[Any], list[str], Rollout], Sequence[float]]
"""A programmatic reward: ``(prompts, response texts, rollout) -> one score per response``."""


@dataclass
class RLConfig(TrainConfig):
    """Options every RL stage shares (``max_steps`` counts rollout batches)."""

    output_dir: str = "runs/rl"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    model: str = "runs/sft/model"
    """The policy to start from (usually the SFT model); also the reference by default."""
    reward_model: str = "runs/rm/model"
    """Reward-model folder, scorer:SPEC (e.g. scorer:sentiment), segment-gain:SPEC (a scorer's
    change after each segment), or several sources as name=SPEC,name=SPEC (fine-grained RLHF)."""
    rewards: str = ""
    """Weights of named reward sources, e.g. rel=0.3,fact=0.5,comp=0.3 (1 for a name not given)."""
    segment_unit: str = "sentence"
    """Segments of a response for per-segment rewards: sentence, subsentence or response."""
    reference: str | None = None
    """Reference policy for the KL penalty (default: the starting policy)."""
    data: str = "task:reviews"
    """Prompts: task:NAME (its train prompts) or a file of records with a prompt field."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    lr_scheduler: str = "constant"
    """constant, linear or cosine decay after warm-up."""
    warmup_ratio: float = 0.0
    """Share of the optimizer steps spent warming the learning rate up."""
    batch_size: int = 16
    """Prompts per rollout batch."""
    max_steps: int = 20
    """Rollout batches (0 = --epochs passes over the prompts)."""
    mini_batch_size: int = 0
    """Samples per optimizer step inside an update (0 = the whole rollout batch)."""
    update_epochs: int = 1
    """Passes over each rollout batch."""
    max_new_tokens: int = 32
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are computed at the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_prompt_tokens: int = 128
    """Keep at most this many prompt tokens (the most recent)."""
    kl_coef: float = 0.05
    """beta: weight of the per-token KL penalty (in the reward, or in the loss for GRPO)."""
    kl_target: float = 0.0
    """Adapt beta towards this KL per response in nats (Ziegler et al. 2019); 0 = fixed beta."""
    kl_horizon: int = 10000
    """Samples over which the adaptive KL controller corrects an error."""
    normalize_reward: bool = True
    """Standardise RM scores with the mean/std saved at RM training."""
    reward_clip: float = 5.0
    """Clip (normalised) scores to [-clip, clip] (0 = off)."""
    missing_eos_penalty: float = 0.0
    """Added to the score of a response that never ended (use a negative value; 0 = off)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus in the loss."""
    gold: str = "task"
    """Gold scorer for evaluation only: task (the task's), a scorer spec, or none."""
    eval_prompts: int = 32
    """Held-out prompts sampled at each evaluation."""
    system_prompt: str | None = None
    """System message added to prompts that have none (default: the task's, else none)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""


def load_prompts(cfg: RLConfig) -> tuple[list[Any], list[Any], str | None, Any]:
    """(train prompts, eval prompts, system prompt, task or None) for a config."""
    task = None
    system_prompt = cfg.system_prompt
    if cfg.data.startswith("task:"):
        from rlhfkit.tasks import get_task

        task = get_task(cfg.data[5:])
        if system_prompt is None:
            system_prompt = task.system_prompt
        return task.prompts("train"), task.prompts("eval"), system_prompt, task
    kinds = ["prompt", "demonstration", "comparison", "ranking", "binary", "score"]
    train, held = train_and_eval_records(
        cfg.data, cfg.eval_data, "prompts", kinds, split=cfg.split, eval_split=cfg.eval_split,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed)

    def unique(rs: list[Any]) -> list[Any]:
        seen: dict[str, Any] = {}
        for r in rs:
            seen.setdefault(prompt_key(r.prompt), r.prompt)
        return list(seen.values())

    return unique(train), unique(held), system_prompt, task


def build_gold(spec: str, task: Any) -> Any:
    """The gold scorer named by ``spec`` (``task``, a scorer spec, or ``none``)."""
    if spec == "none":
        return None
    if spec == "task":
        return task.gold_scorer() if task is not None else None
    from rlhfkit.feedback.gold import get_scorer

    return get_scorer(spec)


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
    """Models, optimizer, reward, logging and checkpoints of one RL run.

    Args:
        cfg: The stage's config.
        stage: Stage name for logs (``ppo``, ``reinforce``, ...).
        value: ``None`` (no value function), ``"policy"`` (a value head on the policy) or
            ``"critic"`` (a separate critic initialised from the reward model).
        reward_fn: A programmatic reward used instead of ``cfg.reward_model``.
        samples_per_prompt: Responses sampled per prompt (k for RLOO/GRPO).
        reward_sources: Reward sources used instead of ``cfg.reward_model`` (fine-grained
            rewards from Python; see :mod:`rlhfkit.reward_sources`).
    """

    def __init__(self, cfg: RLConfig, stage: str, value: str | None = None,
                 reward_fn: RewardFn | None = None, samples_per_prompt: int = 1,
                 reward_sources: Sequence[RewardSource] | None = None) -> None:
        self.cfg, self.stage = cfg, stage
        self.acc = acc = make_accelerator(cfg.precision)
        # One seed per process: every process samples its own prompts, and with one shared seed
        # they would all draw the same random numbers (correlated samples across the global
        # batch). Weights still start equal everywhere (loaded, zero-initialised, or broadcast
        # from process 0 when wrapped for data parallelism).
        seed_everything(cfg.seed + acc.process_index)
        self.device = acc.device
        self.autocast = torch.bfloat16 if acc.mixed_precision == "bf16" else None
        self.out = Path(cfg.output_dir)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfglib.save_yaml(cfg, self.out / "config.yaml")
        self.tokenizer = load_tokenizer(cfg.model)
        self.train_prompts, self.eval_prompts, self.system_prompt, self.task = load_prompts(cfg)
        self.k = samples_per_prompt
        # ---- policy, value, reference
        from rlhfkit.train.sft import build_policy

        lm = build_policy(cfg)
        self.value_kind = value
        self.model: nn.Module = PolicyWithValue(lm) if value == "policy" else SelectiveLM(lm)
        frozen = load_causal_lm(cfg.reference) if cfg.reference else None
        self.reference = ReferencePolicy(lm, frozen)
        self.reference.model.to(self.device)
        # ---- reward
        from rlhfkit.reward_sources import build_sources, scorer_source

        if reward_sources is not None:
            self.sources = list(reward_sources)
        elif reward_fn is not None:
            self.sources = [scorer_source("reward", lambda p, t: reward_fn(p, t, self._scoring))]
        else:
            try:
                self.sources = build_sources(cfg.reward_model, cfg.rewards, self)
            except ValueError as e:
                raise TrainingError(str(e)) from None
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
        # ---- optimizer and schedule
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.critic is not None:
            params += list(self.critic.parameters())
        self.optimizer = make_optimizer(params, cfg.learning_rate, cfg.weight_decay)
        n_prompts = len(self.train_prompts)
        self.world = acc.num_processes
        self.rank = acc.process_index
        # Sums a tensor over processes: batch statistics (advantage whitening, the batch-mean
        # baseline) are then those of the global batch, as with one process.
        self.global_sum = ((lambda t: acc.reduce(t, reduction="sum")) if self.world > 1
                           else None)
        self.batches_per_epoch = max(1, n_prompts // (cfg.batch_size * self.world))
        self.total_steps = cfg.max_steps or max(1, int(self.batches_per_epoch * cfg.epochs))
        rollout_size = cfg.batch_size * samples_per_prompt
        mb = cfg.mini_batch_size or rollout_size
        self.updates_per_step = cfg.update_epochs * math.ceil(rollout_size / mb)
        total_updates = self.total_steps * self.updates_per_step
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler,
                                         int(cfg.warmup_ratio * total_updates), total_updates)
        self.kl_ctl = KLController(cfg.kl_coef, cfg.kl_target or None, cfg.kl_horizon)
        if self.critic is not None:
            self.model, self.critic, self.optimizer = acc.prepare(self.model, self.critic,
                                                                  self.optimizer)
        else:
            self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        acc.register_for_checkpointing(self.scheduler)
        acc.register_for_checkpointing(self.kl_ctl)
        self.step = 0
        self.metrics_log = MetricsLog(self.out, acc.is_main_process,
                                      tensorboard=cfg.tensorboard)
        self.checkpoints = Checkpoints(acc, self.out / "checkpoints", cfg.keep_checkpoints)
        self._t0 = time.perf_counter()

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
    def _autocast(self):
        import contextlib

        return (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast
                else contextlib.nullcontext())

    @torch.no_grad()
    def rollout(self, prompts: list[Any], with_values: bool = True,
                policy_logprobs: bool = True) -> Rollout:
        """Sample responses; attach ``logprobs``, ``ref_logprobs`` and old ``values``.

        With ``policy_logprobs=False`` the policy's own pass (``logprobs`` and a value head's
        ``values``) is left to the caller: a single on-policy update computes them in its
        training forward pass anyway (:func:`rlhfkit.train.pg.train_pg`).
        """
        cfg = self.cfg
        scorer = self.acc.unwrap_model(self.model)
        if getattr(self, "_backend", None) is None:  # one backend: it keeps its bf16 copy
            from rlhfkit.rollout import HFBackend

            self._backend = HFBackend(self.autocast)
        rollout = sample(self.lm, self.tokenizer, prompts, self.sampling, self.system_prompt,
                         backend=self._backend, scorer=None,
                         max_prompt_tokens=cfg.max_prompt_tokens, autocast=self.autocast)
        t = cfg.temperature or 1.0
        with self._autocast():
            scorer.eval()
            if not policy_logprobs:
                pass
            elif self.value_kind == "policy":
                from rlhfkit.rollout import forward_response

                parts = [forward_response(scorer, rollout.select(range(i, min(i + 16,
                         len(rollout)))), t) for i in range(0, len(rollout), 16)]
                rollout.logprobs = torch.cat([p["logprobs"] for p in parts])
                rollout.extras["values"] = torch.cat([p["values"] for p in parts])
            else:
                rollout.logprobs = response_logprobs(scorer, rollout, t)
            scorer.train()
            rollout.ref_logprobs = self.reference.logprobs(rollout, t)
            if self.value_kind == "critic" and with_values:
                critic = self.acc.unwrap_model(self.critic)
                critic.eval()
                from rlhfkit.rollout import scatter_tokens

                v = critic(rollout.input_ids, rollout.attention_mask, rollout.target_mask,
                           rollout.position_ids)
                rollout.extras["values"] = scatter_tokens(v, rollout.response_mask)
                critic.train()
        return rollout

    @torch.no_grad()
    def rewards(self, rollout: Rollout) -> RewardTerms:
        """Every reward source on the rollout: per-response sums and per-token placements."""
        self._scoring = rollout  # what a Python reward_fn receives as its third argument
        return combine(self.sources, rollout, self.cfg.reward_clip or None,
                       self.cfg.missing_eos_penalty)

    @torch.no_grad()
    def raw_scores(self, rollout: Rollout) -> torch.Tensor:
        """(B,) weighted reward of each response before normalisation (for evaluation)."""
        return self.rewards(rollout).raw

    def scores(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw scores, scores to optimise): normalised, clipped, missing-EOS penalty added."""
        terms = self.rewards(rollout)
        return terms.raw, terms.scores

    def gold_scores(self, rollout: Rollout) -> list[float] | None:
        """Gold-scorer values of the responses (evaluation only; never optimised)."""
        if self.gold is None:
            return None
        return list(self.gold(rollout.prompts, rollout.texts))

    # ------------------------------------------------------------------ updates
    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass with a NaN guard (raised before any weight changes)."""
        if not torch.isfinite(loss.detach()):
            raise TrainingError(
                f"[{self.stage}] the loss became NaN or infinite at step {self.step + 1}; "
                f"nothing was updated. Try a lower --learning-rate, --precision fp32, or "
                f"--reward-clip; resume from {self.latest_checkpoint() or 'the start'} "
                "with --resume.")
        self.acc.backward(loss)

    def optimizer_step(self) -> float:
        """Clip, step, advance the schedule; returns the gradient norm."""
        norm = 0.0
        if self.cfg.max_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = float(self.acc.clip_grad_norm_(params, self.cfg.max_grad_norm))
            if not math.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(f"[{self.stage}] non-finite gradient norm at step "
                                    f"{self.step + 1}; nothing was updated")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ the loop
    def steps(self) -> Iterator[int]:
        """Yield step numbers from the resumed one on, with a progress bar.

        Evaluates and checkpoints between steps as configured, and saves the final policy.
        """
        from tqdm.auto import tqdm

        self.maybe_resume()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="batch",
                   disable=not (self.cfg.progress and self.acc.is_main_process),
                   dynamic_ncols=True)
        if self.cfg.eval_every and self.step == 0:
            self.log(self.evaluate())
        while self.step < self.total_steps:
            yield self.step
            self.step += 1
            bar.update(1)
            last = getattr(self, "_last", {})
            bar.set_postfix({k.split("/")[-1]: f"{last[k]:.3g}" for k in
                             ("reward/score", "kl/seq", "gold/mean") if k in last})
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 \
                    and self.step < self.total_steps:
                self.log(self.evaluate())
            if self.cfg.save_every and self.step % self.cfg.save_every == 0 \
                    and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        self.log(self.evaluate())
        self.finish()

    def end_step(self, metrics: dict[str, float], rollout: Rollout,
                 kl_seq: torch.Tensor) -> None:
        """Adapt beta, add the shared metrics and log them (called once per rollout batch)."""
        n = len(rollout)
        # Every process holds the same number of samples, so the mean of the per-process means
        # is the mean over the global batch: log that, not process 0's share alone.
        metrics = {k: v / self.world for k, v in self.reduce_sums(metrics).items()}
        metrics["kl/coef"] = self.kl_ctl.value
        mean_kl = float(self.reduce_mean({"kl": float(kl_seq.sum())}, n)["kl"])
        self.kl_ctl.update(mean_kl, n * self.world)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        elapsed = time.perf_counter() - self._step_t0
        metrics["perf/step_s"] = elapsed
        metrics["perf/samples_per_s"] = n * self.world / max(elapsed, 1e-9)
        self._last = metrics
        self.log(metrics, self.step + 1)
        if self.acc.is_main_process:
            with open(self.out / "samples.jsonl", "a") as f:
                for i in range(min(4, n)):
                    f.write(json.dumps({"step": self.step + 1, "prompt": rollout.prompts[i],
                                        "response": rollout.texts[i]}) + "\n")

    def start_step(self) -> None:
        """Mark the start of a step (for perf/step_s)."""
        self._step_t0 = time.perf_counter()

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
        for name, values in terms.by_source.items():
            m[f"reward/{name}"] = float(values.mean())
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
        local = prompts[self.rank::self.world]  # each process samples its share
        sums = dict.fromkeys(["eval/reward", "eval/kl", "eval/length"]
                             + (["eval/gold"] if self.gold is not None else []), 0.0)
        if local:
            rollout = self.rollout(local, with_values=False)
            raw = self.raw_scores(rollout)
            kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.response_mask).sum(-1)
            sums.update({"eval/reward": float(raw.sum()), "eval/kl": float(kl.sum()),
                         "eval/length": float(rollout.response_lengths.float().sum())})
            gold = self.gold_scores(rollout)
            if gold is not None:
                sums["eval/gold"] = float(sum(gold))
        return self.reduce_mean(sums, len(local))

    def reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Sum scalars over processes (every process passes the same keys)."""
        return reduce_sums(self.acc, values)

    def reduce_mean(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """Mean over all processes of per-sample sums (``n`` samples on this process)."""
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys] + [float(n)], dtype=torch.float64,
                         device=self.device)
        if self.world > 1:
            t = self.acc.reduce(t, reduction="sum")
        return {k: float(v) / max(float(t[-1]), 1.0) for k, v in zip(keys, t[:-1])}

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append to metrics.jsonl (main process only)."""
        self.metrics_log.log(metrics, self.step if step is None else step)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Model(s), optimizer, schedule, KL coefficient and RNG state for an exact resume."""
        return self.checkpoints.save(self.step)

    def latest_checkpoint(self) -> Path | None:
        """Newest complete checkpoint, if any."""
        return self.checkpoints.latest()

    def maybe_resume(self) -> None:
        """With ``--resume``, continue after the newest checkpoint."""
        if self.cfg.resume:
            step = self.checkpoints.resume(self.stage)
            if step is not None:
                self.step = step

    def finish(self) -> Path:
        """Save the policy (LoRA merged) to ``output_dir/model`` and close the logs.

        A run with several reward sources also writes ``report.html`` with each source's reward
        curve, the KL and the length (:func:`rlhfkit.evaluate.finegrained.fine_grained_section`).
        """
        if self.acc.is_main_process:
            merge_and_save(self.lm, self.tokenizer, self.out / "model",
                           adapter_dir=self.out / "adapter")
            if self.value_kind == "policy":
                head = self.acc.unwrap_model(self.model).value_head
                torch.save(head.state_dict(), self.out / "model" / "value_head.pt")
        self.metrics_log.close()
        if self.acc.is_main_process and len(self.sources) > 1:
            from rlhfkit.evaluate.finegrained import fine_grained_section
            from rlhfkit.evaluate.report import write_sections

            write_sections(self.out / "report.html", f"rlhfkit {self.stage}: fine-grained rewards",
                           [fine_grained_section(self.out)])
        self.acc.wait_for_everyone()
        return self.out / "model"


@torch.no_grad()
def rm_scores(rm: RewardModel, rollout: Rollout, pad_id: int, autocast: Callable | None = None,
              batch_size: int = 16) -> torch.Tensor:
    """(B,) reward-model scores of prompt + response, read at the last real token.

    The RM sees exactly the ids the policy sampled (prompt from the chat template, response up
    to and including its end-of-turn token), i.e. what it was trained on.
    """
    import contextlib

    out = []
    for i in range(0, len(rollout), batch_size):
        chunk = rollout.select(range(i, min(i + batch_size, len(rollout))))
        with autocast() if autocast else contextlib.nullcontext():
            out.append(rm(chunk.input_ids, chunk.attention_mask).float())
    return torch.cat(out)
