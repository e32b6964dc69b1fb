"""Online / iterative preference training: sample, label, train DPO, repeat.

Offline DPO learns from pairs that some other policy wrote; once the policy moves, those pairs
say little about its own mistakes. Iterative DPO closes the loop (Xu et al. 2023, "Some things
are more CRINGE than others"; Xiong et al. 2024, "Iterative preference learning from human
feedback"; Guo et al. 2024, "Direct language model alignment from online AI feedback"). Each
round:

1. **sample**: K responses per prompt from the current policy (HF ``generate``, left padding,
   :func:`rlhfkit.rollout.sample`);
2. **label**: a pluggable labeler ranks each prompt's distinct responses: the task's simulated
   gold labeler (``--labeler gold``), a trained reward model (``rm:FOLDER``), or an AI judge
   (``judge:MODEL``, RLAIF, :class:`rlhfkit.models.judge.AIJudge`, records with
   ``source="ai"``), or any reward source (``reward:SPEC``: a Python function, a remote
   scorer, a task's verifier; :mod:`rlhfkit.rewards.plugins`). The labels are written to ``round-N/labels.jsonl``;
3. **train**: the offline trainer's groups, cached reference log-probs and step
   (:mod:`rlhfkit.train.dpo`) on the new rankings, on the shared loop, with any ``--loss``. The
   reference is the policy at the start of the round (``--ref-policy previous``) or the starting
   (SFT) policy (``--ref-policy sft``: the LoRA base with the adapter off, else a frozen copy);
4. **evaluate**: when the task has a gold scorer, the mean gold reward of one sample per
   held-out prompt, before the first round and after each one.

``rounds.jsonl`` gets one line per round (pairs, ties, gold reward of the round's samples and of
the held-out samples, final training metrics); each ``round-N/`` folder holds that round's loop
output. Sampling and labeling run in every process alike (same seed, same data); only training
is distributed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from rlhfkit import config as cfglib
from rlhfkit.config import only, stage_defaults
from rlhfkit.data.chat import encode, encode_pair, pad
from rlhfkit.data.io import write_records
from rlhfkit.data.records import Ranking
from rlhfkit.models.judge import AIJudge
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, merge_and_save
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.models.reward import RewardModel
from rlhfkit.options import (
    EvalOptions,
    GenerationOptions,
    KLOptions,
    RoundsOptions,
    SamplingOptions,
)
from rlhfkit.rewards.sources import SourceContext, combine
from rlhfkit.rollout import (
    SamplingConfig,
    build_rollout,
    encode_prompts,
    eos_ids_of,
    make_backend,
    sample,
)
from rlhfkit.train.dpo import (
    DPOOptions,
    attach_reference_logps,
    build_dpo_policy,
    build_groups_for,
    collate_groups,
    disabled_adapter,
    kto_step,
    pairwise_step,
    process_sum,
)
from rlhfkit.train.inputs import (
    load_records,
    reward_sources,
    split_or_load,
    system_prompt_for,
    task_of,
)
from rlhfkit.train.loop import Loop, Run, TrainConfig


@stage_defaults(output_dir="runs/online_dpo", learning_rate=5e-6, batch_size=4)
@dataclass
class OnlineDPOConfig(TrainConfig, DPOOptions, only(KLOptions, "reference"),
                      only(SamplingOptions, "max_new_tokens", "temperature", "top_p",
                           "samples_per_prompt"),
                      only(GenerationOptions, "generation_backend"), only(EvalOptions, "eval_prompts"),
                      only(RoundsOptions, "rounds", "prompts_per_round")):
    """Online / iterative DPO (``rlhfkit online-dpo``)."""

    labeler: str = "gold"
    """gold (the task's simulated labeler), rm:FOLDER (a reward model), judge:MODEL (AI judge),
    or reward:SPEC (any --reward-model spec: py:FILE:FUNCTION, http://URL, task:NAME, ...)."""
    labeler_temperature: float = 0.1
    """Noise of the simulated gold labeler (Plackett–Luce temperature, in gold-score units)."""
    judge_criteria: str = ""
    """What the AI judge is told "better" means (default: the task's description)."""
    ref_policy: Literal["previous", "sft"] = "previous"
    """Reference of each round: previous (the policy at the round's start) or sft (the start)."""

    def check(self) -> None:
        """Rules between options, checked before any model loads."""
        if self.temperature <= 0:
            raise cfglib.ConfigError("--temperature must be > 0 for online DPO: at 0 every "
                                     "response to a prompt is the same and no pair is left "
                                     "to label")


class Labeler(Protocol):
    """Anything that ranks K responses per prompt (SimulatedLabeler, AIJudge, a reward model)."""

    def rank_batch(
        self, prompts: Sequence[Any], responses: Sequence[Sequence[str]]
    ) -> list[Ranking]:
        """One ranking per prompt."""
        ...


class RewardModelLabeler:
    """Rank responses by a trained reward model's scores (higher is better).

    Args:
        path: Folder of a reward model saved by ``rlhfkit rm``.
        system_prompt: System message added to prompts that have none, as in training.
        max_length: Longest prompt + response in tokens.
        batch_size: Sequences per forward pass.
    """

    def __init__(self, path: str, system_prompt: str | None = None, max_length: int = 512,
                 batch_size: int = 16) -> None:
        self.tokenizer = load_tokenizer(path)
        self.rm = RewardModel.from_pretrained(path, pad_token_id=self.tokenizer.pad_token_id)
        self.rm.eval()
        self.name = f"rm:{path}"
        self.system_prompt, self.max_length, self.batch_size = system_prompt, max_length, batch_size

    @torch.no_grad()
    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Reward of each (prompt, response), read at the last token as in RM training."""
        cache: dict[str, list[int]] = {}
        ids = [encode_pair(self.tokenizer, p, r, self.max_length, self.system_prompt,
                           cache).input_ids for p, r in zip(prompts, responses)]
        out: list[float] = []
        for k in range(0, len(ids), self.batch_size):
            input_ids, mask = pad(ids[k:k + self.batch_size], self.tokenizer.pad_token_id)
            out += self.rm(input_ids, mask).tolist()
        return out

    def rank_batch(
        self, prompts: Sequence[Any], responses: Sequence[Sequence[str]]
    ) -> list[Ranking]:
        """Rankings with ``scores`` = the reward model's rewards."""
        flat = self.scores([p for p, rs in zip(prompts, responses) for _ in rs],
                           [r for rs in responses for r in rs])
        records, start = [], 0
        for prompt, rs in zip(prompts, responses):
            records.append(Ranking(prompt=prompt, responses=list(rs),
                                   scores=flat[start:start + len(rs)], annotator=self.name))
            start += len(rs)
        return records


class RewardLabeler:
    """Rank responses by reward sources (``--labeler reward:SPEC``, any ``--reward-model`` spec).

    The responses are tokenized after their prompts as the policy would have written them, so
    a source that reads token ids (a reward-model folder) sees what it was trained on.
    """

    def __init__(self, spec: str, tokenizer: Any, task: Any, system_prompt: str | None) -> None:
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.sources = reward_sources(spec, "", SourceContext(tokenizer, normalize_reward=False),
                                      task)
        self.name = f"reward:{spec}"

    def rank_batch(self, prompts: Sequence[Any], responses: Sequence[Sequence[str]]
                   ) -> list[Ranking]:
        """Rankings with ``scores`` = the sources' weighted sum."""
        flat_p = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat_r = [r for rs in responses for r in rs]
        eos = eos_ids_of(self.tokenizer)
        rollout = build_rollout(self.tokenizer, flat_p,
                                encode_prompts(self.tokenizer, flat_p, self.system_prompt),
                                [encode(self.tokenizer, r) + eos[:1] for r in flat_r], eos)
        flat = combine(self.sources, rollout).raw.tolist()
        records, start = [], 0
        for prompt, rs in zip(prompts, responses):
            records.append(Ranking(prompt=prompt, responses=list(rs),
                                   scores=flat[start:start + len(rs)], annotator=self.name))
            start += len(rs)
        return records


def build_labeler(cfg: OnlineDPOConfig, task: Any, system_prompt: str | None) -> Labeler:
    """The labeler named by ``--labeler``."""
    spec = cfg.labeler
    if spec.startswith("reward:"):
        return RewardLabeler(spec[len("reward:"):], load_tokenizer(cfg.model), task,
                             system_prompt)
    if spec == "gold":
        if task is None:
            raise cfglib.ConfigError("--labeler gold needs a task (--data task:NAME); give "
                                     "rm:FOLDER or judge:MODEL for prompts from a file")
        return task.labeler(seed=cfg.seed, temperature=cfg.labeler_temperature)
    if spec.startswith("rm:"):
        return RewardModelLabeler(spec[3:], system_prompt, cfg.max_length, cfg.ref_batch_size)
    if spec.startswith("judge:"):
        criteria = cfg.judge_criteria or (task.description if task is not None else "")
        return AIJudge(spec[6:], criteria=criteria, batch_size=cfg.ref_batch_size)
    raise cfglib.ConfigError(f"--labeler must be gold, rm:FOLDER, judge:MODEL or reward:SPEC, "
                             f"got {spec!r}")


def distinct_responses(texts: Sequence[str], limit: int = 9) -> list[str]:
    """The non-empty distinct responses in order (a ranking holds 2..9 distinct responses)."""
    seen: list[str] = []
    for t in texts:
        t = t.strip()
        if t and t not in seen:
            seen.append(t)
    return seen[:limit]


def gold_mean(gold: Any, prompts: Sequence[Any], responses: Sequence[str]) -> float:
    """Mean gold score of (prompt, response) pairs."""
    scores = gold(list(prompts), list(responses))
    return sum(scores) / max(len(scores), 1)


def round_reference(
    cfg: OnlineDPOConfig, policy: SelectiveLM, fixed_reference: SelectiveLM | None
) -> tuple[SelectiveLM, Any]:
    """The reference of a round and the context to compute it in.

    ``previous``: the policy as it is at the start of the round. ``sft``: the starting policy:
    the given ``fixed_reference`` (``--reference``, or a frozen copy made before round 1), or,
    under LoRA, the same weights with the adapter disabled.
    """
    if fixed_reference is not None:
        return fixed_reference, nullcontext()
    if cfg.ref_policy == "sft":
        return policy, disabled_adapter(policy)
    return policy, nullcontext()


@dataclass
class OnlineSetup:
    """What every round of an online run uses."""

    run: Run
    tokenizer: Any
    system_prompt: str | None
    train_prompts: list[Any]
    eval_prompts: list[Any]
    gold: Any
    labeler: Labeler
    sampling: SamplingConfig
    autocast: torch.dtype | None
    backend: Any
    """The sampler; an engine is synced to the policy at each round (the round is its version)."""


def online_setup(cfg: OnlineDPOConfig) -> OnlineSetup:
    """Check the options, open the run folder, load prompts, the labeler and the gold scorer."""
    if cfg.ref_policy not in ("previous", "sft"):
        raise cfglib.ConfigError(f"--ref-policy must be previous or sft, got {cfg.ref_policy!r}")
    if cfg.samples_per_prompt < 2:
        raise cfglib.ConfigError("--samples-per-prompt must be at least 2 to make pairs")
    run = Run(cfg, f"online-{cfg.loss}")
    tokenizer = load_tokenizer(cfg.model)
    task = task_of(cfg.data)
    if task is not None:
        train_prompts, eval_prompts = task.prompts("train"), task.prompts("eval")
    else:
        records = load_records(cfg.data, "prompts", ["prompt"], split=cfg.split)
        train_records, eval_records = split_or_load(
            records, cfg.eval_data, cfg.eval_fraction, cfg.seed,
            lambda spec, split: load_records(spec, "prompts", ["prompt"], split=split),
            data=cfg.data, eval_split=cfg.eval_split)
        train_prompts = [r.prompt for r in train_records]
        eval_prompts = [r.prompt for r in eval_records]
    system_prompt = system_prompt_for(cfg.system_prompt, cfg.data)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p)
    autocast = torch.bfloat16 if run.accelerator.mixed_precision == "bf16" else None
    backend = make_backend(cfg.generation_backend, cfg.model, autocast, seed=cfg.seed,
                           max_model_len=cfg.max_length + cfg.max_new_tokens + 1)
    return OnlineSetup(run, tokenizer, system_prompt, train_prompts,
                       eval_prompts[:cfg.eval_prompts], task.gold_scorer() if task else None,
                       build_labeler(cfg, task, system_prompt), sampling, autocast, backend)


def sample_and_label(cfg: OnlineDPOConfig, setup: OnlineSetup, policy: SelectiveLM,
                     picked: list[Any]) -> tuple[list[Ranking], dict[str, Any]]:
    """Phases 1 and 2 of a round: K responses per prompt from the policy, ranked by the labeler.

    Returns the rankings (prompts whose K samples hold fewer than 2 distinct responses are
    left out) and the round's log line so far.
    """
    k = cfg.samples_per_prompt
    repeated = [p for p in picked for _ in range(k)]
    rollout = sample(policy.lm, setup.tokenizer, repeated, setup.sampling, setup.system_prompt,
                     autocast=setup.autocast, backend=setup.backend)
    texts = rollout.texts
    groups_text = [distinct_responses(texts[i * k:(i + 1) * k]) for i in range(len(picked))]
    kept = [(p, rs) for p, rs in zip(picked, groups_text) if len(rs) >= 2]
    records = setup.labeler.rank_batch([p for p, _ in kept], [rs for _, rs in kept]) \
        if kept else []
    line: dict[str, Any] = {"prompts": len(picked), "prompts_without_pairs": len(picked) - len(kept)}
    if setup.gold is not None:
        line["sample_gold_reward"] = gold_mean(setup.gold, repeated, texts)
    return records, line


def train_round(cfg: OnlineDPOConfig, setup: OnlineSetup, policy: SelectiveLM, groups: list,
                reference: SelectiveLM, context: Any, round_dir: Path
                ) -> tuple[SelectiveLM, dict[str, float], int]:
    """Phase 3: reference log-probs of the new groups, then the offline step on them.

    Returns the updated policy, the final training metrics and the number of steps.
    """
    with context:
        attach_reference_logps(groups, reference, setup.tokenizer.pad_token_id,
                               cfg.ref_batch_size, setup.run.accelerator)
    round_cfg = dataclasses.replace(
        cfg, output_dir=str(round_dir), resume=False, overwrite=True, eval_every=0,
        save_every=0, batch_size=max(1, min(cfg.batch_size, len(groups) // max(cfg.grad_accum, 1))))
    run = Run(round_cfg, cfg.loss)
    pad_id = setup.tokenizer.pad_token_id
    loop = Loop(run, policy, groups, lambda b: collate_groups(b, pad_id),
                lengths=[g.num_tokens for g in groups])
    step_fn = kto_step if cfg.loss == "kto" else pairwise_step
    extra = {"reduce": process_sum(run.accelerator)} if cfg.loss == "kto" else {}

    def step(m: torch.nn.Module, batch: dict[str, Any]):
        batch = {n: v.to(run.device) if torch.is_tensor(v) else v for n, v in batch.items()}
        return step_fn(m, batch, cfg, **extra)

    metrics = loop.run(step)
    return run.accelerator.unwrap_model(loop.model), metrics, loop.total_steps


def train_online_dpo(cfg: OnlineDPOConfig) -> Path:
    """Run ``cfg.rounds`` rounds of sample, label, train; returns ``output_dir/model``."""
    setup = online_setup(cfg)
    out, main = setup.run.out, setup.run.is_main
    policy = build_dpo_policy(cfg).to(setup.run.device)
    # The fixed reference for --ref-policy sft: the LoRA base, a given model, or a frozen copy.
    fixed_reference = None
    if cfg.reference is not None:
        fixed_reference = SelectiveLM(load_causal_lm(cfg.reference)).to(setup.run.device).eval()
    elif cfg.ref_policy == "sft" and not cfg.lora:
        fixed_reference = SelectiveLM(copy.deepcopy(policy.lm)).eval().requires_grad_(False)
    order = list(range(len(setup.train_prompts)))
    random.Random(cfg.seed).shuffle(order)

    def held_out_gold() -> float | None:
        if setup.gold is None or not setup.eval_prompts:
            return None
        rollout = sample(policy.lm, setup.tokenizer, setup.eval_prompts, setup.sampling,
                         setup.system_prompt, autocast=setup.autocast, backend=setup.backend)
        return gold_mean(setup.gold, setup.eval_prompts, rollout.texts)

    def log_round(line: dict[str, Any]) -> None:
        if main:
            with open(out / "rounds.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"[online-{cfg.loss}] " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))

    if main and (out / "rounds.jsonl").exists():
        (out / "rounds.jsonl").unlink()  # a fresh run; rounds are not resumable
    log_round({"round": 0, "eval/gold_reward": held_out_gold()})
    for r in range(1, cfg.rounds + 1):
        start = (r - 1) * cfg.prompts_per_round
        picked = [setup.train_prompts[order[(start + i) % len(order)]]
                  for i in range(cfg.prompts_per_round)]
        if hasattr(setup.backend, "sync"):  # the engine samples from this round's policy
            setup.backend.sync(policy.lm, 2 * r)
        records, line = sample_and_label(cfg, setup, policy, picked)
        line = {"round": r, **line}
        round_dir = out / f"round-{r}"
        if main:
            round_dir.mkdir(parents=True, exist_ok=True)
            if records:
                write_records(records, round_dir / "labels.jsonl")
        groups, counts = build_groups_for(cfg, records, setup.tokenizer, setup.system_prompt) \
            if records else ([], {})
        line.update(counts)
        if not groups:
            log_round({**line, "skipped": "no pairs this round"})
            continue
        reference, context = round_reference(cfg, policy, fixed_reference)
        policy, metrics, steps = train_round(cfg, setup, policy, groups, reference, context,
                                             round_dir)
        line.update({k: v for k, v in metrics.items()
                     if k.startswith(("loss/", "rewards/", "logps/", "kto/"))})
        line["steps"] = steps
        if hasattr(setup.backend, "sync"):
            setup.backend.sync(policy.lm, 2 * r + 1)  # the updated policy
        line["eval/gold_reward"] = held_out_gold()  # 4. held-out gold reward after the round
        log_round(line)
    if main:
        merge_and_save(policy.lm, setup.tokenizer, out / "model", adapter_dir=out / "adapter")
        print(f"[online-{cfg.loss}] saved policy to {out / 'model'}; rounds in "
              f"{out / 'rounds.jsonl'}")
    setup.run.accelerator.wait_for_everyone()
    return out / "model"
