"""The demo pipeline: the whole loop on the default model, from no files to a report.

Stages run in order, each writing its own run folder under ``--output-dir``::

    sft/            Step 1 on the built-in task's demonstrations
    rankings.jsonl  K responses per prompt sampled from the SFT policy, ranked by the task's
                    simulated labeler (``--rm-data task`` uses the task's written rankings)
    rm/             Step 2 on those K-rankings
    ppo/            Step 3 (or ALGO/ with --algo: any RL algorithm, best-of-n/, dpo/)
    report.html     SFT vs final policy on held-out prompts, judged by the gold scorer (never
    summary.json    trained on), with plots over training

``--quick`` shrinks every stage so the whole loop finishes in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit import config as cfglib
from rlhfkit import memory
from rlhfkit.config import only
from rlhfkit.data.chat import to_messages
from rlhfkit.data.io import read_records, write_records
from rlhfkit.evaluate.overoptimisation import overoptimisation_section
from rlhfkit.evaluate.report import Section, table_html, write_report
from rlhfkit.evaluate.runs import read_json, read_metrics, read_rounds
from rlhfkit.memory import StageMeter
from rlhfkit.options import (
    EvalOptions,
    GenerationOptions,
    KLOptions,
    ModelOptions,
    RewardOptions,
    RoundsOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.rollout import (
    generate_responses,
)
from rlhfkit.tasks import get_task
from rlhfkit.train.algorithms import reward_algorithm
from rlhfkit.train.comparison import compare_with_sft
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.iterate import IterateConfig, run_iterate, sft_mean_length
from rlhfkit.train.rl import RLConfig
from rlhfkit.train.rm import RMConfig, train_rm
from rlhfkit.train.sft import SFTConfig, train_sft
from rlhfkit.train.trainer import AlgorithmOptions, rl_config, train_rl


@cfglib.stage_defaults(output_dir="runs/demo", max_new_tokens=24, eval_prompts=0,
                       length_debias=True, length_floor=0.9, sft_steps=0, rm_steps=0,
                       rm_learning_rate=0.0, rl_steps=0, rl_learning_rate=0.0, rounds=0,
                       offload_frozen=True)
@dataclass
class DemoConfig(only(RunOptions, "output_dir", "precision", "seed", "progress"),
                 only(GenerationOptions, "generation_backend"), only(EvalOptions, "eval_prompts"),
                 only(SamplingOptions, "max_new_tokens"), only(RewardOptions, "length_debias"),
                 only(KLOptions, "kl_coef", "kl_target", "entropy_coef"),
                 only(AlgorithmOptions, "algo"),
                 only(RoundsOptions, "task", "sft_model", "sft_steps", "rm_steps",
                      "rm_learning_rate", "rank_k", "rl_steps", "rl_learning_rate", "rounds",
                      "length_floor", "fresh_processes"),
                 only(RLConfig, "offload_frozen"), only(ModelOptions, "model", "lora")):
    """The whole loop on one command (``rlhfkit demo``)."""

    quick: bool = False
    """Small settings that finish in a few minutes on a 2-core CPU."""
    rm_data: Literal["samples", "task"] = "samples"
    """What the reward model learns from: samples (K responses per prompt from the SFT policy,
    ranked by the simulated labeler, as InstructGPT's labelers ranked the policy's outputs) or
    task (the task's own written rankings)."""
    rank_prompts: int = 0
    """Prompts to sample and rank with --rm-data samples (0 = the preset's: every train prompt
    without a demonstration, 64 with --quick)."""
    round_prompts: int = 96
    """Prompts sampled and ranked in each round after the first."""
    round_rm_steps: int = 24
    """Reward-model steps of each round after the first (it continues from the last one)."""


def run_demo(cfg: DemoConfig) -> Path:
    """Run SFT then the reward model (then RL and the report, where available)."""
    check_options(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    data = f"task:{cfg.task}"
    sft_steps = cfg.sft_steps or (8 if cfg.quick else 32)
    on_samples = cfg.rm_data == "samples"
    rm_steps = cfg.rm_steps or (12 if cfg.quick else 64 if on_samples else 48)
    rm_lr = cfg.rm_learning_rate or (1e-4 if on_samples else 2e-5)
    common = dict(precision=cfg.precision, lora=cfg.lora, seed=cfg.seed, progress=cfg.progress)
    meter = StageMeter()  # each stage's seconds and peak RSS: timings.json, the report

    fresh = cfg.fresh_processes  # each stage in a new process: none inherits another's memory
    if cfg.sft_model:
        policy = Path(cfg.sft_model)
    else:
        policy = meter.run("sft", train_sft, SFTConfig(
            model=cfg.model, data=data, output_dir=str(out / "sft"), max_steps=sft_steps,
            batch_size=8, learning_rate=5e-5, max_length=128, gradient_checkpointing=False,
            **common), fresh_process=fresh)
    rm_data = data
    if on_samples:
        rm_data = str(meter.run("rank", rank_policy_samples, cfg, policy, out / "rankings.jsonl",
                                fresh_process=fresh))
    reward_model = meter.run("rm", train_rm, RMConfig(
        model=str(policy), data=rm_data, output_dir=str(out / "rm"), max_steps=rm_steps,
        batch_size=4, learning_rate=rm_lr, max_length=128, eval_fraction=0.15,
        gradient_checkpointing=False, **common), fresh_process=fresh)
    rm_eval = read_json(out / "rm")

    algos = [a.strip() for a in cfg.algo.split(",") if a.strip()]
    results = {algo: run_and_judge(cfg, algo, policy, reward_model, out, common, rm_data, meter)
               for algo in algos}  # each from the same SFT policy, judged on the same prompts
    timings = {f"{name}_s": seconds for name, seconds in meter.seconds().items()}
    timings.setdefault("rl_s", 0.0)
    timings.setdefault("eval_s", 0.0)
    write_timings(meter, out, algos)
    first = results[algos[0]]
    summary = {"policy": str(policy), "reward_model": str(reward_model),
               "final_policy": str(first["final"]), "rm_eval": rm_eval, "timings": timings,
               "eval": first["summary"],
               "eval_by_algo": {a: r["summary"] for a, r in results.items()},
               "timings_by_algo": {a: {"train_s": r["train_s"], "eval_s": r["eval_s"]}
                                   for a, r in results.items()}}

    rl_dir = next((r["dir"] for r in results.values() if (r["dir"] / "metrics.jsonl").exists()
                   and r["final"] is not None and algo_is_rl(r["dir"].name)), first["dir"])
    rows = read_metrics(rl_dir)
    head = {**first["summary"], "rm_heldout_accuracy": rm_eval.get("eval/rm_accuracy"),
            "wall_time_s": sum(timings.values())}
    comparison = [{"algorithm": a, **{k: r["summary"][k] for k in COMPARE_KEYS}}
                  for a, r in results.items()] if len(results) > 1 else []
    sections = [rounds_section(out / a) for a in results if (out / a / "rounds.jsonl").exists()]
    sections.append(overoptimisation_section(rl_dir))
    sections.append(timings_section(out))
    write_report(out / "report.html", f"rlhfkit demo: {cfg.task}, {cfg.algo}", head, rows,
                 first["samples"][:12], comparison, [x for x in sections if x is not None])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n[demo] done in {sum(timings.values()):.0f}s")
    print(f"[demo] SFT policy:    {policy}")
    print(f"[demo] reward model:  {reward_model} (held-out accuracy "
          f"{rm_eval.get('eval/rm_accuracy', float('nan')):.3f} against the simulated labeler)")
    for algo, r in results.items():
        ev = r["summary"]
        print(f"[demo] gold win rate of the {algo} policy against SFT: "
              f"{ev['gold/win_rate']:.2f} (ties {ev['gold/tie_rate']:.2f}); gold "
              f"{ev['gold/sft']:.3f} -> {ev['gold/final']:.3f}; KL {ev['kl/final']:.2f} nats")
    print(f"[demo] summary:       {out / 'summary.json'}")
    print(f"[demo] report:        {out / 'report.html'}")
    return out


def run_and_judge(cfg: DemoConfig, algo: str, policy: Path, reward_model: Path, out: Path,
                  common: dict, rm_data: str, meter: StageMeter) -> dict:
    """Step 3 with ``algo`` (stage ``rl``), then its policy against SFT (stage ``eval``)."""
    with meter.stage("rl"):
        t = time.perf_counter()
        final, rl_dir = run_rl(cfg, policy, reward_model, out, common, algo, rm_data)
        train_s = time.perf_counter() - t
    with meter.stage("eval"):
        t = time.perf_counter()
        rounds_summary = out / algo / "summary.json"
        judge = reward_model
        if rounds_of(cfg) > 1 and rounds_summary.exists():  # judged by the last round's RM
            judge = Path(read_json(out / algo, "summary.json")["final_reward_model"])
        n_eval = cfg.eval_prompts or (16 if cfg.quick else 64)
        evaluation = memory.call(compare_with_sft, cfg.task, policy, final, judge, n_eval,
                                 cfg.max_new_tokens, cfg.seed, cfg.generation_backend,
                                 out_dir=rl_dir, fresh_process=cfg.fresh_processes)
        if rounds_summary.exists():
            rounds = read_json(out / algo, "summary.json")
            for key in ("rm/accuracy_on_final_policy", "rm/labeler_ceiling_on_final_policy"):
                if rounds.get(key) is not None:
                    evaluation["summary"][key] = rounds[key]
        eval_s = time.perf_counter() - t
    return {"final": final, "dir": rl_dir, "train_s": train_s, "eval_s": eval_s, **evaluation}


def write_timings(meter: StageMeter, out: Path, algos: list[str]) -> Path:
    """``timings.json``: the demo's stages, with each algorithm's rounds (iterate's stages)."""
    table = meter.as_dict()
    rounds = {a: read_json(out / a, "timings.json")["stages"]
              for a in algos if (out / a / "timings.json").exists()}
    if rounds:
        table["rounds"] = rounds
    path = out / "timings.json"
    path.write_text(json.dumps(table, indent=2))
    return path


def timings_section(out: Path) -> Section:
    """Seconds and peak memory of every stage (``timings.json``) as a table."""
    table = read_json(out, "timings.json")
    rows = [{"stage": name, **rec} for name, rec in table["stages"].items()]
    for algo, stages in table.get("rounds", {}).items():
        rows += [{"stage": f"{algo}: {name}", **rec} for name, rec in stages.items()]
    keys = ["stage", "seconds", "peak_rss_gib", "rss_after_gib", "live_gib"]
    return Section("Time and memory by stage",
                   f"Wall-clock seconds and peak resident set (GiB) of each stage; the whole "
                   f"demo took {table['total_s']:.0f} s and peaked at "
                   f"{table['peak_rss_gib']:.2f} GiB. live_gib: the tensors alive after the "
                   f"stage's first optimizer step (models, optimizer state, engine); the rest of "
                   f"the peak is activations and allocator slack. An algorithm's rounds are "
                   f"stages within its rl stage.", [table_html(rows, keys)])


def check_options(cfg: DemoConfig) -> None:
    """Raise a ConfigError for a bad option before any stage runs."""
    cfglib.validate(cfg)
    for algo in (a.strip() for a in cfg.algo.split(",") if a.strip()):
        if algo not in (*DIRECT, "best-of-n"):
            reward_algorithm(algo)  # a registered RL algorithm, or py:FILE.py:NAME
    if cfg.sft_model and not (Path(cfg.sft_model) / "config.json").exists():
        raise cfglib.ConfigError(
            f"--sft-model: {cfg.sft_model} is not a model folder (no config.json)")


def rank_policy_samples(cfg: DemoConfig, policy: Path, path: Path) -> Path:
    """K responses per prompt from ``policy``, ranked by the task's simulated labeler.

    The prompts are the task's train prompts that have no demonstration (so the reward model
    does not learn on the SFT policy's training prompts, as InstructGPT kept its prompt sets
    apart); responses are as long as the RL stage samples them. Written as ranking records to
    ``path``.
    """
    task = get_task(cfg.task)
    demo_prompts = {str(d.prompt) for d in task.demonstrations()}
    prompts = [p for p in task.prompts("train") if str(p) not in demo_prompts]
    n = cfg.rank_prompts or (64 if cfg.quick else len(prompts))
    prompts = prompts[:n]
    print(f"[demo] sampling {cfg.rank_k} responses to each of {len(prompts)} prompts from "
          f"{policy} for the simulated labeler to rank")
    responses = generate_responses(str(policy), prompts, cfg.rank_k,
                                   max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                   system_prompt=task.system_prompt, progress=cfg.progress,
                                   generation_backend=cfg.generation_backend)
    labeler = task.labeler(seed=cfg.seed,
                           temperature=getattr(task, "labeler_temperature", 0.1))
    rankings = labeler.rank_batch(prompts, responses)
    # Store each prompt as the conversation the policy saw (with the task's system message),
    # so that the reward model reads the text the RL stage will give it.
    rankings = [dataclasses.replace(r, prompt=to_messages(r.prompt, task.system_prompt))
                for r in rankings]
    return write_records(rankings, path)


COMPARE_KEYS = ("gold/win_rate", "gold/tie_rate", "gold/sft", "gold/final", "reward/sft",
                "reward/final", "kl/final", "length/final", "distinct2/final")
DIRECT = ("dpo", "ipo", "kto")


def algo_is_rl(name: str) -> bool:
    """Whether an algorithm samples during training (its metrics have rollout curves)."""
    return name not in DIRECT and name != "best-of-n"


def run_rl(cfg: DemoConfig, policy: Path, reward_model: Path, out: Path,
           common: dict, algo: str | None = None, preferences: str | None = None
           ) -> tuple[Path | None, Path]:
    """Step 3 with one algorithm; returns (final policy folder or None, run folder).

    ``dpo``, ``ipo`` and ``kto`` replace RM + RL: they train on ``preferences``, the same
    K-rankings the reward model learned from (default: the task's), with the SFT policy as the
    reference.
    """
    algo = algo or cfg.algo
    steps = cfg.rl_steps or (6 if cfg.quick else 12 if rounds_of(cfg) > 1 else 24)
    data = f"task:{cfg.task}"
    if algo in DIRECT:

        lr = cfg.rl_learning_rate or (1e-4 if cfg.lora else 5e-6)
        return memory.call(train_dpo, DPOConfig(
            model=str(policy), data=preferences or data, output_dir=str(out / algo), loss=algo,
            max_steps=cfg.rl_steps or (12 if cfg.quick else 48), batch_size=4, learning_rate=lr,
            max_length=128, eval_fraction=0.15, **common),
            fresh_process=cfg.fresh_processes), out / algo
    # With rounds each RL pass has 12 batches (24 in a single pass); a higher rate makes up for it.
    lr = cfg.rl_learning_rate or (2e-4 if cfg.lora else 2e-5 if rounds_of(cfg) > 1 else 1e-5)
    if rounds_of(cfg) > 1 and algo != "best-of-n":
        return run_rounds(cfg, policy, reward_model, out, algo, preferences, steps, lr)
    rl = dict(model=str(policy), reward_model=str(reward_model), data=data,
              max_steps=steps, max_new_tokens=cfg.max_new_tokens, kl_coef=cfg.kl_coef,
              eval_prompts=8 if cfg.quick else 16, generation_backend=cfg.generation_backend,
              length_debias=cfg.length_debias, entropy_coef=cfg.entropy_coef,
              kl_target=cfg.kl_target, length_floor=single_pass_floor(cfg, policy, preferences),
              offload_frozen=cfg.offload_frozen, **common)
    if algo == "best-of-n":
        return None, out / "best-of-n"
    name = reward_algorithm(algo).name  # its own defaults: batch, group size, epochs
    return memory.call(train_rl, rl_config(algo, output_dir=str(out / name), learning_rate=lr,
                                           **rl), fresh_process=cfg.fresh_processes), out / name


def single_pass_floor(cfg: DemoConfig, policy: Path, preferences: str | None) -> float:
    """--length-floor in tokens for a single RL pass: its share of the SFT samples' mean."""
    if not cfg.length_floor or cfg.rm_data != "samples" or not preferences:
        return 0.0
    return cfg.length_floor * sft_mean_length(str(policy), read_records(preferences))


def rounds_of(cfg: DemoConfig) -> int:
    """The rounds of iterative RLHF: --rounds, or the preset's."""
    return cfg.rounds or (1 if cfg.quick else 3)


def run_rounds(cfg: DemoConfig, policy: Path, reward_model: Path, out: Path, algo: str,
               preferences: str | None, steps: int, lr: float) -> tuple[Path, Path]:
    """Iterative RLHF (:mod:`rlhfkit.train.iterate`) after round 1's rankings and reward model.

    Returns (final policy, the last round's RL run folder).
    """
    rankings = preferences if cfg.rm_data == "samples" else ""
    run_iterate(IterateConfig(
        model=str(policy), reward_model=str(reward_model), rankings=rankings or "",
        task=cfg.task, output_dir=str(out / algo), rounds=rounds_of(cfg),
        prompts_per_round=cfg.round_prompts, rank_k=cfg.rank_k, rm_steps=cfg.round_rm_steps,
        rm_learning_rate=cfg.rm_learning_rate or 1e-4, algo=algo, rl_steps=steps,
        rl_learning_rate=lr, kl_coef=cfg.kl_coef, kl_target=cfg.kl_target,
        entropy_coef=cfg.entropy_coef, length_debias=cfg.length_debias,
        length_floor=cfg.length_floor if rankings else 0.0,
        max_new_tokens=cfg.max_new_tokens, eval_prompts=16 if cfg.quick else 32,
        generation_backend=cfg.generation_backend, precision=cfg.precision, lora=cfg.lora,
        seed=cfg.seed, progress=cfg.progress, fresh_processes=cfg.fresh_processes,
        offload_frozen=cfg.offload_frozen, overwrite=True))
    last = out / algo / f"round-{rounds_of(cfg)}" / "rl"
    return last / "model", last


def rounds_section(run: Path) -> Section:
    """The iterative rounds of one algorithm as a table (``rounds.jsonl``)."""
    rows = read_rounds(run)
    keys = ["round", "labels_total", "rm/heldout_accuracy", "rm/accuracy_on_new_samples",
            "rm/labeler_ceiling",
            "gold/final", "reward/final", "gap/proxy_minus_gold", "gold/win_rate",
            "gold/lc_win_rate", "kl/final", "length/final", "distinct2/final"]
    table = [{k: r.get(k, "") for k in keys} for r in rows]
    return Section(f"Iterative rounds: {run.name}",
                   "Each round sampled the policy of the round before, had it ranked, refitted "
                   "the reward model on every ranking so far and ran RL again. "
                   "rm/accuracy_on_new_samples: the previous round's reward model on this "
                   "round's samples (what over-optimisation erodes); rm/labeler_ceiling: the "
                   "gold scorer's own accuracy against the noisy labeler on the same pairs, "
                   "the most any reward model can expect.", [table_html(table, keys)])


