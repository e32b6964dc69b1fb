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
   (``judge:MODEL``, RLAIF, :class:`rlhfkit.feedback.judge.AIJudge`, records with
   ``source="ai"``). The labels are written to ``round-N/labels.jsonl``;
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
from typing import Any, Protocol

import torch

from rlhfkit import config as cfglib
from rlhfkit.data.chat import encode_pair, pad
from rlhfkit.data.io import write_records
from rlhfkit.data.records import Ranking
from rlhfkit.data.sources import load_records, split_records
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, merge_and_save
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.rollout import SamplingConfig, sample
from rlhfkit.train.dpo import (
    DPOConfig,
    attach_reference_logps,
    build_dpo_policy,
    build_groups_for,
    collate_groups,
    disabled_adapter,
    kto_step,
    pairwise_step,
)
from rlhfkit.train.loop import Loop, make_accelerator, seed_everything


@dataclass
class OnlineDPOConfig(DPOConfig):
    """Online / iterative DPO (``rlhfkit online-dpo``)."""

    output_dir: str = "runs/online_dpo"
    """Run folder: config.yaml, rounds.jsonl, round-N/ (labels.jsonl, metrics.jsonl), model/."""
    data: str = "task:reviews"
    """Prompts: task:NAME, or a file of prompt records."""
    rounds: int = 3
    """Sample-label-train rounds."""
    prompts_per_round: int = 32
    """Prompts sampled in each round (cycling through the shuffled prompts)."""
    samples_per_prompt: int = 4
    """K responses per prompt; their distinct ones are ranked, giving up to C(K, 2) pairs."""
    labeler: str = "gold"
    """gold (the task's simulated labeler), rm:FOLDER (a reward model) or judge:MODEL (AI judge)."""
    labeler_temperature: float = 0.1
    """Noise of the simulated gold labeler (Plackett–Luce temperature, in gold-score units)."""
    judge_criteria: str = ""
    """What the AI judge is told "better" means (default: the task's description)."""
    ref_policy: str = "previous"
    """Reference of each round: previous (the policy at the round's start) or sft (the start)."""
    max_new_tokens: int = 32
    """Longest sampled response in tokens."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    eval_prompts: int = 32
    """Held-out prompts sampled once per round for the gold reward (0 = no gold evaluation)."""
    epochs: float = 1.0
    """Passes over each round's new groups (ignored when --max-steps > 0: steps per round)."""


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
        from rlhfkit.models.reward import RewardModel

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


def build_labeler(cfg: OnlineDPOConfig, task: Any, system_prompt: str | None) -> Labeler:
    """The labeler named by ``--labeler``."""
    spec = cfg.labeler
    if spec == "gold":
        if task is None:
            raise cfglib.ConfigError("--labeler gold needs a task (--data task:NAME); give "
                                     "rm:FOLDER or judge:MODEL for prompts from a file")
        return task.labeler(seed=cfg.seed, temperature=cfg.labeler_temperature)
    if spec.startswith("rm:"):
        return RewardModelLabeler(spec[3:], system_prompt, cfg.max_length, cfg.ref_batch_size)
    if spec.startswith("judge:"):
        from rlhfkit.feedback.judge import AIJudge

        criteria = cfg.judge_criteria or (task.description if task is not None else "")
        return AIJudge(spec[6:], criteria=criteria, batch_size=cfg.ref_batch_size)
    raise cfglib.ConfigError(f"--labeler must be gold, rm:FOLDER or judge:MODEL, got {spec!r}")


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


def train_online_dpo(cfg: OnlineDPOConfig) -> Path:
    """Run ``cfg.rounds`` rounds of sample, label, train; returns ``output_dir/model``."""
    if cfg.ref_policy not in ("previous", "sft"):
        raise cfglib.ConfigError(f"--ref-policy must be previous or sft, got {cfg.ref_policy!r}")
    if cfg.samples_per_prompt < 2:
        raise cfglib.ConfigError("--samples-per-prompt must be at least 2 to make pairs")
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.precision)
    device = accelerator.device
    main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfglib.save_yaml(cfg, out / "config.yaml")
    tokenizer = load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id

    task = None
    if cfg.data.startswith("task:"):
        from rlhfkit.tasks import get_task

        task = get_task(cfg.data[5:])
        train_prompts, eval_prompts = task.prompts("train"), task.prompts("eval")
    else:
        records = load_records(cfg.data, "prompts", ["prompt"])
        train_records, eval_records = split_records(records, cfg.eval_fraction, cfg.seed)
        train_prompts = [r.prompt for r in train_records]
        eval_prompts = [r.prompt for r in eval_records]
    eval_prompts = eval_prompts[:cfg.eval_prompts]
    system_prompt = cfg.system_prompt
    if system_prompt is None and task is not None:
        system_prompt = task.system_prompt
    gold = task.gold_scorer() if task is not None else None
    labeler = build_labeler(cfg, task, system_prompt)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p)
    autocast = torch.bfloat16 if accelerator.mixed_precision == "bf16" else None

    policy = build_dpo_policy(cfg).to(device)
    # The fixed reference for --ref-policy sft: the LoRA base, a given model, or a frozen copy.
    fixed_reference = None
    if cfg.reference is not None:
        fixed_reference = SelectiveLM(load_causal_lm(cfg.reference)).to(device).eval()
    elif cfg.ref_policy == "sft" and not cfg.lora:
        fixed_reference = SelectiveLM(copy.deepcopy(policy.lm)).eval().requires_grad_(False)

    order = list(range(len(train_prompts)))
    random.Random(cfg.seed).shuffle(order)
    cursor = 0

    def held_out_gold() -> float | None:
        if gold is None or not eval_prompts:
            return None
        rollout = sample(policy.lm, tokenizer, eval_prompts, sampling, system_prompt,
                         autocast=autocast)
        return gold_mean(gold, eval_prompts, rollout.texts)

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
        # 1. sample K responses per prompt from the current policy
        picked = [train_prompts[order[(cursor + i) % len(order)]]
                  for i in range(cfg.prompts_per_round)]
        cursor += cfg.prompts_per_round
        repeated = [p for p in picked for _ in range(cfg.samples_per_prompt)]
        rollout = sample(policy.lm, tokenizer, repeated, sampling, system_prompt,
                         autocast=autocast)
        texts = rollout.texts
        k = cfg.samples_per_prompt
        groups_text = [distinct_responses(texts[i * k:(i + 1) * k]) for i in range(len(picked))]
        kept = [(p, rs) for p, rs in zip(picked, groups_text) if len(rs) >= 2]
        # 2. label
        records = labeler.rank_batch([p for p, _ in kept], [rs for _, rs in kept]) if kept else []
        round_dir = out / f"round-{r}"
        if main:
            round_dir.mkdir(parents=True, exist_ok=True)
            if records:
                write_records(records, round_dir / "labels.jsonl")
        line: dict[str, Any] = {"round": r, "prompts": len(picked),
                                "prompts_without_pairs": len(picked) - len(kept)}
        if gold is not None:
            line["sample_gold_reward"] = gold_mean(gold, repeated, texts)
        groups, counts = build_groups_for(cfg, records, tokenizer, system_prompt) if records \
            else ([], {})
        line.update(counts)
        if not groups:
            line["skipped"] = "no pairs this round"
            log_round(line)
            continue
        # 3. reference log-probs of the new data, then DPO on the shared loop
        reference, context = round_reference(cfg, policy, fixed_reference)
        with context:
            attach_reference_logps(groups, reference, pad_id, cfg.ref_batch_size, accelerator)
        round_cfg = dataclasses.replace(
            cfg, output_dir=str(round_dir), resume=False, eval_every=0, save_every=0,
            batch_size=max(1, min(cfg.batch_size, len(groups) // max(cfg.grad_accum, 1))))
        round_acc = make_accelerator(cfg.precision)
        loop = Loop(round_cfg, policy, groups, lambda b: collate_groups(b, pad_id),
                    stage=cfg.loss, lengths=[g.num_tokens for g in groups],
                    accelerator=round_acc)
        step_fn = kto_step if cfg.loss == "kto" else pairwise_step

        def step(m: torch.nn.Module, batch: dict[str, Any], step_fn=step_fn, acc=round_acc):
            batch = {n: v.to(acc.device) if torch.is_tensor(v) else v for n, v in batch.items()}
            return step_fn(m, batch, cfg)

        metrics = loop.run(step)
        policy = round_acc.unwrap_model(loop.model)
        line.update({k: v for k, v in metrics.items()
                     if k.startswith(("loss/", "rewards/", "logps/", "kto/"))})
        line["steps"] = loop.total_steps
        # 4. held-out gold reward of the updated policy
        line["eval/gold_reward"] = held_out_gold()
        log_round(line)
    if main:
        merge_and_save(policy.lm, tokenizer, out / "model", adapter_dir=out / "adapter")
        print(f"[online-{cfg.loss}] saved policy to {out / 'model'}; rounds in "
              f"{out / 'rounds.jsonl'}")
    accelerator.wait_for_everyone()
    return out / "model"
