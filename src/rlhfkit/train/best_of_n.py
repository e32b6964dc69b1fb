"""Best-of-N: sample N responses, keep the one the reward model likes best.

Two uses (Rafailov et al. 2023, sec. 6, the "Best of N" baseline; Touvron et al. 2023,
rejection-sampling fine-tuning):

- an inference-time baseline that needs no training: its gold reward shows what the RM can buy
  by selection alone, at N times the sampling cost;
- rejection sampling: the kept responses become a new SFT dataset of :class:`Demonstration`
  records (``output_dir/demonstrations.jsonl``), so the policy can be fine-tuned on its own best
  outputs (self-improvement).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from rlhfkit import config as cfglib
from rlhfkit.config import only
from rlhfkit.data.io import write_records
from rlhfkit.data.records import Demonstration
from rlhfkit.evaluate.best_of_n import best_of_n_summary, pick_best
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.options import (
    DataOptions,
    EvalOptions,
    GenerationOptions,
    ModelOptions,
    RewardOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.rewards.sources import SourceContext, combine
from rlhfkit.rollout import SamplingConfig, make_backend, sample
from rlhfkit.train.inputs import build_gold, load_prompts, reward_sources
from rlhfkit.train.loop import make_accelerator, seed_everything
from rlhfkit.train.rl import RewardFn


@cfglib.stage_defaults(output_dir="runs/best-of-n", model="runs/sft/model", eval_fraction=0.0)
@dataclass
class BestOfNConfig(only(RunOptions, "output_dir", "precision", "seed", "progress"),
                    only(EvalOptions, "gold"), only(GenerationOptions, "generation_backend"),
                    only(SamplingOptions, "n", "batch_size", "max_new_tokens", "temperature",
                         "top_p", "top_k", "max_prompt_tokens"),
                    only(DataOptions, "data", "eval_data", "eval_fraction", "system_prompt"),
                    only(RewardOptions, "reward_model", "rewards"), only(ModelOptions, "model")):
    """Best-of-N sampling and rejection sampling (``rlhfkit best-of-n``)."""

    prompt_set: Literal["train", "eval"] = "train"
    """Which prompts to use: train (rejection sampling) or eval (the inference baseline)."""
    max_prompts: int = 0
    """Use at most this many prompts (0 = all)."""


def best_of_n(
    lm: torch.nn.Module,
    tokenizer: Any,
    prompts: list[Any],
    n: int,
    score: RewardFn,
    sampling: SamplingConfig,
    system_prompt: str | None = None,
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
    progress: bool = False,
    max_prompt_tokens: int | None = None,
    backend: Any = None,
) -> list[dict[str, Any]]:
    """For each prompt, sample ``n`` responses and keep the highest-scoring one (:func:`pick_best`).

    Returns:
        One dict per prompt: ``prompt``, ``best`` (text), ``best_score``, ``first`` (the first
        sample, i.e. plain sampling) and ``scores`` (all n).
    """
    flat = [p for p in prompts for _ in range(n)]
    if hasattr(backend, "sync"):  # an engine takes the whole batch, n copies per prompt
        batch_size = max(batch_size, len(flat))
    texts: list[str] = []
    scores: list[float] = []
    for i in tqdm(range(0, len(flat), batch_size), desc="best-of-n", disable=not progress):
        rollout = sample(lm, tokenizer, flat[i:i + batch_size], sampling, system_prompt,
                         autocast=autocast, max_prompt_tokens=max_prompt_tokens,
                         backend=backend)
        texts += rollout.texts
        scores += [float(s) for s in score(rollout.prompts, rollout.texts, rollout)]
    return pick_best(prompts, texts, scores, n)


def run_best_of_n(cfg: BestOfNConfig, reward_fn: RewardFn | None = None) -> Path:
    """Sample, select, write ``demonstrations.jsonl`` and ``eval.json``; returns the folder."""
    cfglib.validate(cfg)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.precision)
    autocast = torch.bfloat16 if acc.mixed_precision == "bf16" else None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    tokenizer = load_tokenizer(cfg.model)
    train, held, system_prompt, task = load_prompts(cfg)  # type: ignore[arg-type]
    prompts = train if cfg.prompt_set == "train" else held
    if cfg.max_prompts:
        prompts = prompts[: cfg.max_prompts]
    lm = load_causal_lm(cfg.model).to(acc.device)
    if reward_fn is None:
        # The unnormalised, weighted sum of the sources: what they score, as the RL stages log it.
        sources = reward_sources(cfg.reward_model, cfg.rewards,
                                 SourceContext(tokenizer, acc.device, normalize_reward=False),
                                 task)
        reward_fn = lambda p, t, r: combine(sources, r).raw.tolist()  # noqa: E731
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    backend = make_backend(cfg.generation_backend, cfg.model, autocast, seed=cfg.seed,
                           max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens + 1)
    results = best_of_n(lm, tokenizer, prompts, cfg.n, reward_fn, sampling, system_prompt,
                        cfg.batch_size, autocast, cfg.progress, cfg.max_prompt_tokens, backend)
    write_records([Demonstration(prompt=r["prompt"], response=r["best"],
                                 source="ai", annotator="best-of-n", id=f"bon-{i}")
                   for i, r in enumerate(results)], out / "demonstrations.jsonl")
    summary = best_of_n_summary(results, cfg.n, build_gold(cfg.gold, task))
    (out / "eval.json").write_text(json.dumps(summary, indent=2))
    print(f"[best-of-n] {len(results)} prompts x {cfg.n} samples; RM reward "
          f"{summary['reward/first']:.3f} -> {summary['reward/best']:.3f}; "
          f"wrote {out / 'demonstrations.jsonl'}")
    return out
