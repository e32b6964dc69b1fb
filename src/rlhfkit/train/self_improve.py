"""Self-improvement on the model's own reasoning paths (``rlhfkit self-improve``).

Each round samples k reasoning paths for a slice of the train problems, keeps some of them,
fine-tunes on the kept paths, and measures held-out accuracy:

- ``--mode majority`` needs **no labels** (Huang et al. 2022, "Large Language Models Can
  Self-Improve"): the answer most paths reach is taken as right (self-consistency, Wang et al.
  2022), and the paths that reach it are kept, for problems where at least
  ``--min-agreement`` of the paths agree (high-agreement votes are more often right).
- ``--mode star`` keeps the paths whose answer matches the task's reference (STaR, Zelikman et
  al. 2022; without its rationalisation step). With ``--from-base`` each round fine-tunes the
  starting model on every path kept so far, as STaR does; by default a round continues from
  the previous round's model.

With ``--environment`` (a tool the model may call inside its turn, e.g. ``calculator`` for
``task:arithmetic-tool``) every path is an episode: the model's turns with the tool's answers
between them, voted on and fine-tuned on as one transcript, the tool's messages included as
the task's own demonstrations include them. The tool answers what the model asks it (the value
of an expression); the episode's reward, which reads the reference, is not used. Environments
that answer in a new user turn (``clarify``) are refused: their transcripts are conversations,
not one response.

The references are never used by ``majority`` to choose paths; they are read only to report
how often the vote was right (``vote_accuracy``). Writes ``rounds.jsonl`` (round 0 = the
starting model), ``round-N/paths.jsonl`` and ``round-N/sft/``, and the last model to
``model/``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as cfglib
from rlhfkit.config import only
from rlhfkit.data.io import write_records
from rlhfkit.data.records import Demonstration
from rlhfkit.evaluate.accuracy import mean_counts
from rlhfkit.evaluate.report import curves_section, table_html, write_sections
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.options import (
    DataOptions,
    GenerationOptions,
    ModelOptions,
    OptimOptions,
    RoundsOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.rollout import SamplingConfig
from rlhfkit.stats import majority_vote
from rlhfkit.tasks.verifiable import VerifiableTask
from rlhfkit.train.accuracy import Sampler, make_sampler, parse_ks, task_accuracy, verifiable_task
from rlhfkit.train.episodes import EpisodeOptions
from rlhfkit.train.inputs import system_prompt_for
from rlhfkit.train.loop import make_accelerator, seed_everything
from rlhfkit.train.sft import SFTConfig, train_sft


@cfglib.stage_defaults(output_dir="runs/self-improve", model="runs/sft/model", data="task:arithmetic",
                       progress=False, learning_rate=5e-5, max_length=160, max_new_tokens=48,
                       rounds=2)
@dataclass
class SelfImproveConfig(only(RunOptions, "output_dir", "precision", "seed", "progress"),
                        EpisodeOptions, only(GenerationOptions, "generation_backend"),
                        only(SamplingOptions, "max_new_tokens", "temperature", "top_p",
                             "max_prompt_tokens"),
                        only(OptimOptions, "learning_rate"),
                        only(DataOptions, "data", "system_prompt", "epochs", "batch_size",
                             "max_length"),
                        only(RoundsOptions, "rounds"), only(ModelOptions, "model")):
    """Self-improvement rounds: sample, keep (majority vote or reference), fine-tune, evaluate."""

    mode: Literal["majority", "star"] = "majority"
    """majority (keep the paths that agree with the majority vote: no labels; Huang et al.
    2022) or star (keep the paths whose answer is the reference; Zelikman et al. 2022)."""
    problems_per_round: int = 64
    """Train problems sampled in each round (the next slice each round; the problems of the
    task's demonstrations, which the warm-up was fitted on, are skipped)."""
    samples: int = 8
    """Reasoning paths sampled per problem."""
    min_agreement: float = 0.5
    """--mode majority: keep a problem only when this share of its paths give the voted answer."""
    max_paths: int = 2
    """Keep at most this many distinct paths per problem."""
    from_base: bool = False
    """Fine-tune the starting model each round on all paths kept so far (STaR) instead of
    continuing from the last round's model."""
    voter: Literal["current", "start"] = "current"
    """Which model samples the paths that are voted on: the last round's (current) or always
    the starting model (start: each round adds the starting model's votes on new problems,
    whose agreement self-training has not yet made overconfident; see docs/verifiable.md)."""
    eval_problems: int = 200
    """Held-out problems evaluated after each round (0 = no evaluation)."""
    eval_samples: int = 4
    """Responses per held-out problem (pass@1 is their mean; greedy is reported too)."""


def keep_paths(task: VerifiableTask, prompt: Any, paths: list[str], mode: str,
               min_agreement: float, max_paths: int) -> tuple[list[str], str | None]:
    """The paths kept for one problem and the answer they were kept for (None: none kept).

    ``majority``: the paths whose answer is the most common one, if that answer has at least
    ``min_agreement`` of the votes; ``star``: the paths the verifier accepts. Duplicates are
    dropped; at most ``max_paths`` are kept, in sampling order.
    """
    answers = [task.extract_answer(p) for p in paths]
    if mode == "majority":
        vote, count = majority_vote(answers)
        if vote is None or count < min_agreement * len(paths):
            return [], None
        chosen = [p for p, a in zip(paths, answers) if a == vote]
    else:
        reference = task.reference_of(prompt)
        chosen = [p for p in paths if reference is not None and task.verify(reference, p) >= 1.0]
        vote = task.extract_answer(chosen[0]) if chosen else None
    kept: list[str] = []
    for p in chosen:
        if p.strip() and p not in kept and len(kept) < max_paths:
            kept.append(p)
    return kept, (vote if kept else None)


def fresh_problems(task: VerifiableTask) -> list[Any]:
    """The train problems without the task's demonstrations, in order.

    The warm-up SFT was fitted on the demonstrations' problems, so votes on them are votes on
    memorised answers: more often right than on any new problem (on the default model's
    arithmetic warm-up, 0.77 against 0.62 at agreement 0.5) and of nothing to learn.
    """
    shown = {json.dumps(d.prompt, sort_keys=True) for d in task.demonstrations()}
    fresh = [p for p in task.prompts("train") if json.dumps(p, sort_keys=True) not in shown]
    return fresh or task.prompts("train")


def collect_round(cfg: SelfImproveConfig, task: VerifiableTask, sampler: Sampler,
                  prompts: list[Any], round_: int) -> tuple[list[Demonstration], dict[str, float]]:
    """Sample paths for ``prompts``, keep some; returns the kept paths and the round's counts."""
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    groups, counts = sampler.episodes(prompts, cfg.samples, sampling,
                                      seed=cfg.seed * 7_919 + round_)
    demos: list[Demonstration] = []
    kept_counts: list[dict[str, float]] = []
    voted = right = 0
    sampled_right: list[float] = []  # of every path / of the paths of the problems kept
    kept_sampled_right: list[float] = []
    for i, (prompt, paths) in enumerate(zip(prompts, groups)):
        kept, answer = keep_paths(task, prompt, paths, cfg.mode, cfg.min_agreement,
                                  cfg.max_paths)
        # The references are read only to report how good the choice was, never to make it.
        reference = task.reference_of(prompt)
        scores = [float(reference is not None and task.verify(reference, p) >= 1.0)
                  for p in paths]
        sampled_right += scores
        if not kept:
            continue
        kept_sampled_right += scores
        kept_counts += [counts[i][paths.index(p)] for p in kept]
        voted += 1
        right += reference is not None and task.verify(reference,
                                                       task.answer_text(answer)) >= 1.0
        demos += [Demonstration(prompt=prompt, response=p, source="ai",
                                annotator=f"self-improve-{cfg.mode}",
                                id=f"round{round_}-{i}-{j}") for j, p in enumerate(kept)]
    stats = {"kept_problems": voted / max(len(prompts), 1), "kept_paths": float(len(demos)),
             "vote_accuracy": right / voted if voted else 0.0,
             # One sample's accuracy, on every problem and on the problems kept: the vote helps
             # only as far as it is right more often than one sample on the same problems.
             "sample_accuracy": sum(sampled_right) / max(len(sampled_right), 1),
             "kept_problem_sample_accuracy": (sum(kept_sampled_right) / len(kept_sampled_right)
                                              if kept_sampled_right else 0.0),
             **{f"sampled_episode/{k}": v
                for k, v in mean_counts([c for group in counts for c in group]).items()},
             **{f"kept_episode/{k}": v for k, v in mean_counts(kept_counts).items()}}
    return demos, stats


def _evaluate(cfg: SelfImproveConfig, task: VerifiableTask, sampler: Sampler) -> dict[str, float]:
    if not cfg.eval_problems:
        return {}
    prompts = task.prompts("eval")[:cfg.eval_problems]
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    ks = parse_ks(f"1,{cfg.eval_samples}", cfg.eval_samples)
    summary, _ = task_accuracy(sampler, task, prompts, cfg.eval_samples, ks, sampling,
                               greedy=True, seed=cfg.seed + 99)
    return {f"eval/{k}": v for k, v in summary.items()
            if k.startswith(("pass", "greedy", "episode"))}


def _fine_tune(cfg: SelfImproveConfig, start: str, data: Path, out: Path,
               system_prompt: str | None) -> Path:
    return train_sft(SFTConfig(
        model=start, data=str(data), output_dir=str(out), learning_rate=cfg.learning_rate,
        epochs=cfg.epochs, batch_size=cfg.batch_size, max_length=cfg.max_length,
        eval_fraction=0.0, system_prompt=system_prompt, precision=cfg.precision,
        seed=cfg.seed, lr_scheduler="constant", warmup_ratio=0.0, progress=cfg.progress,
        report_to="none", gradient_checkpointing=False, overwrite=True))


def run_self_improve(cfg: SelfImproveConfig) -> Path:
    """Run the rounds (see the module docstring); returns the last model's folder."""
    cfglib.validate(cfg)
    if not 0.0 <= cfg.min_agreement <= 1.0:
        raise cfglib.ConfigError(f"--min-agreement must be in 0..1, got {cfg.min_agreement}")
    task = verifiable_task(cfg.data)
    system_prompt = system_prompt_for(cfg.system_prompt, cfg.data)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.precision)
    autocast = torch.bfloat16 if acc.mixed_precision == "bf16" else None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    tokenizer = load_tokenizer(cfg.model)
    lm = load_causal_lm(cfg.model).to(acc.device).eval()
    sampler = make_sampler(cfg.generation_backend, cfg.model, lm, tokenizer, autocast,
                           system_prompt, seed=cfg.seed, max_prompt_tokens=cfg.max_prompt_tokens,
                           max_new_tokens=cfg.max_new_tokens, environment=cfg.environment,
                           max_turns=cfg.max_turns, max_env_tokens=cfg.max_env_tokens,
                           batch_size=cfg.batch_size * 8)
    sampler.tool_messages_only = True  # the transcripts are fine-tuned on as one response
    log = open(out / "rounds.jsonl", "w")
    row = {"round": 0, **_evaluate(cfg, task, sampler)}
    rows = [row]
    log.write(json.dumps(row) + "\n")
    log.flush()
    print(f"[self-improve] round 0: {row}")
    train = fresh_problems(task)
    model, kept_all = cfg.model, []
    start_lm = sampler.lm if cfg.voter == "start" else None  # kept only when it votes
    for r in range(1, cfg.rounds + 1):
        start = (r - 1) * cfg.problems_per_round
        prompts = [train[(start + i) % len(train)] for i in range(cfg.problems_per_round)]
        current_lm = sampler.lm
        if start_lm is not None:
            sampler.lm = start_lm
        demos, stats = collect_round(cfg, task, sampler, prompts, r)
        sampler.lm = current_lm
        kept_all += demos
        folder = out / f"round-{r}"
        folder.mkdir(exist_ok=True)
        data = kept_all if cfg.from_base else demos
        if data:
            write_records(data, folder / "paths.jsonl")
            model = str(_fine_tune(cfg, cfg.model if cfg.from_base else model,
                                   folder / "paths.jsonl", folder / "sft", system_prompt))
            sampler.lm = load_causal_lm(model).to(acc.device).eval()
        row = {"round": r, **stats, **_evaluate(cfg, task, sampler)}
        rows.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(f"[self-improve] round {r}: {row}")
    log.close()
    write_rounds_report(out, cfg, rows)
    if Path(model) != out / "model":
        shutil.copytree(model, out / "model", dirs_exist_ok=True)
    if hasattr(sampler.backend, "close"):
        sampler.backend.close()
    return out / "model"


def write_rounds_report(out: Path, cfg: SelfImproveConfig, rows: list[dict[str, Any]]) -> Path:
    """``report.html``: held-out accuracy and the kept paths per round (the rounds.jsonl rows)."""
    names = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "round"]
    text = (f"--mode {cfg.mode}: round 0 is the starting model; each round samples "
            f"{cfg.samples} paths for {cfg.problems_per_round} train problems, keeps "
            + ("those that agree with the majority vote (no reference is read to choose)"
               if cfg.mode == "majority" else "those whose answer is the reference")
            + f", fine-tunes and evaluates {cfg.eval_problems} held-out problems"
            + (f"; each path is an episode with --environment {cfg.environment} (tool calls "
               "per sampled, kept and evaluated episode are drawn with the accuracy)."
               if cfg.environment else "."))
    section = curves_section("Self-improvement rounds", rows, names, text, x="round")
    section.parts.append(table_html(rows, ["round", *names]))
    return write_sections(out / "report.html", f"rlhfkit self-improve: {out}", [section])
