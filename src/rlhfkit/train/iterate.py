"""Iterative RLHF: collect feedback on the current policy, refit the reward model, RL again.

A reward model trained once, on the SFT policy's samples, is exploited by RL in the region it
never saw: the proxy reward rises while the gold reward stalls or falls (Gao et al. 2023). The
loop of the lecture notes answers it by collecting feedback again on the new policy's outputs.
``rlhfkit iterate`` runs that loop; each round ``r``:

1. **sample** K responses to each of this round's prompts from the current policy (the SFT
   policy in round 1), through the run's generation backend;
2. **label** them: the task's simulated labeler (``--labeler task``), an AI judge
   (``judge:MODEL``), or people in the feedback app (``app``: a project per round in
   ``--feedback-db``, the stage waits for the labels);
3. **reward model**: before refitting, the previous round's reward model is scored on these
   new rankings (how well it judges the new policy's samples: the over-optimisation
   diagnostic); then it is refitted on every ranking so far (``--rm-refit continue`` starts from
   the previous model, ``scratch`` from the policy's backbone);
4. **RL** from the current policy against the new reward model, with the KL to the SFT
   reference (``--algo``: any RL algorithm of the registry that optimises a reward);
5. **evaluate** the new policy on held-out prompts: gold and proxy reward, KL to SFT, response
   length, distinct-2.

``rounds.jsonl`` gets one line per round, ``round-N/rankings.jsonl`` the round's labels (each
with ``meta.round`` and ``meta.policy``: which policy wrote the responses), and ``round-N/rm``,
``round-N/rl`` the stages' run folders. With ``--resume`` a stopped run goes on where it
stopped: finished phases are kept, the stage that was running resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as cfglib
from rlhfkit import memory
from rlhfkit.config import only
from rlhfkit.data.chat import encode_pair, pad, to_messages
from rlhfkit.data.io import read_records, write_records
from rlhfkit.data.records import Ranking
from rlhfkit.evaluate.metrics import rm_accuracy
from rlhfkit.feedback.store import Store
from rlhfkit.feedback.transfer import read_project_records
from rlhfkit.memory import StageMeter
from rlhfkit.models.judge import AIJudge
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward import RewardModel
from rlhfkit.options import (
    EvalOptions,
    FeedbackOptions,
    GenerationOptions,
    KLOptions,
    ModelOptions,
    RewardOptions,
    RoundsOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.rollout import generate_responses
from rlhfkit.tasks import get_task
from rlhfkit.train.algorithms import reward_algorithm
from rlhfkit.train.comparison import compare_with_sft
from rlhfkit.train.loop import TrainingError, claim_output_dir
from rlhfkit.train.rl import RLConfig
from rlhfkit.train.rm import RMConfig, train_rm
from rlhfkit.train.trainer import AlgorithmOptions, rl_config, train_rl

LABELERS = ("task", "app")
"""Besides ``judge:MODEL``."""


@cfglib.stage_defaults(output_dir="runs/iterate", model="runs/sft/model", reward_model="",
                       max_new_tokens=24, eval_prompts=64, prompts_per_round=96, rl_steps=8,
                       offload_frozen=True)
@dataclass
class IterateConfig(only(RunOptions, "output_dir", "precision", "seed", "resume", "overwrite",
                         "progress"),
                    only(GenerationOptions, "generation_backend"), only(EvalOptions, "eval_prompts"),
                    only(SamplingOptions, "max_new_tokens"), only(ModelOptions, "model", "lora"),
                    only(KLOptions, "kl_coef", "kl_target", "entropy_coef"),
                    only(RewardOptions, "reward_model", "length_debias", "length_floor_penalty"),
                    only(AlgorithmOptions, "algo"), FeedbackOptions,
                    only(RoundsOptions, "task", "rounds", "prompts_per_round", "rank_k", "rm_steps",
                         "rm_learning_rate", "rl_steps", "rl_learning_rate", "length_floor",
                         "fresh_processes"),
                    only(RLConfig, "offload_frozen")):
    """Iterative RLHF rounds: sample from the policy, label, refit the RM, RL (``rlhfkit iterate``)."""

    rankings: str = ""
    """Rankings of the SFT policy's samples already made (round 1 then skips sampling and
    labeling them); with --reward-model too, round 1 keeps that reward model as it is."""
    labeler: str = "task"
    """Who ranks: task (the task's simulated labeler), judge:MODEL (an AI judge), or app (people
    in the feedback app, --feedback-db)."""
    feedback_project: str = "iterate"
    """--labeler app: the prefix of the projects' names."""
    feedback_timeout: float = 86400.0
    """--labeler app: seconds to wait for a round's labels."""
    rm_refit: Literal["continue", "scratch"] = "continue"
    """continue (start each round from the last reward model) or scratch (from the backbone)."""


def check_options(cfg: IterateConfig) -> None:
    """Clear errors for bad options, before any model loads."""
    cfglib.validate(cfg)
    if cfg.rounds < 1:
        raise cfglib.ConfigError(f"--rounds must be at least 1, got {cfg.rounds}")
    reward_algorithm(cfg.algo)
    if cfg.labeler not in LABELERS and not cfg.labeler.startswith("judge:"):
        raise cfglib.ConfigError(f"--labeler must be task, app or judge:MODEL, got {cfg.labeler!r}")
    if not (Path(cfg.model) / "config.json").exists():
        raise cfglib.ConfigError(f"--model {cfg.model}: not a model folder (no config.json)")


# ---------------------------------------------------------------------------------------------
# Labelers
# ---------------------------------------------------------------------------------------------


class StoreRanker:
    """People rank the responses in the feedback app: a ``rank`` project per round.

    The stage adds the round's items (``round`` is set by the caller; a project that exists
    already, from a run that stopped while people were labeling, is waited on again) and waits
    until every item has its labels, then reads them back as ranking records.
    """

    def __init__(self, db: str, prefix: str, timeout: float = 86400.0,
                 poll_interval: float = 2.0) -> None:
        self.db, self.prefix, self.timeout, self.poll = db, prefix, timeout, poll_interval
        self.round = 1

    def rank_batch(self, prompts: list[Any], responses: list[list[str]]) -> list[Ranking]:
        """Put the round in the app, wait for every item's labels, return the rankings."""
        name = f"{self.prefix}-r{self.round}"
        store = Store(self.db)
        try:
            if name not in {p.name for p in store.list_projects()}:
                store.create_project(name, ["rank"], items=[
                    {"prompt": p, "responses": list(rs), "meta": {"iterate_round": self.round}}
                    for p, rs in zip(prompts, responses)])
            print(f"[iterate] waiting for the labels of project {name} in {self.db} "
                  f"({len(prompts)} items)", flush=True)
            deadline = time.monotonic() + self.timeout
            while (done := store.progress(name))["complete_items"] < done["items"]:
                if time.monotonic() > deadline:
                    raise TrainingError(f"project {name}: not every item was labeled within "
                                        f"{self.timeout:.0f} s; run again with --resume")
                time.sleep(self.poll)
        finally:
            store.close()
        records = read_project_records(f"{self.db}?project={name}")
        return [r for r in records if isinstance(r, Ranking)]


def make_labeler(cfg: IterateConfig, task: Any) -> Any:
    """The ranker of ``--labeler``."""
    if cfg.labeler == "task":
        return task.labeler(seed=cfg.seed, temperature=getattr(task, "labeler_temperature", 0.1))
    if cfg.labeler == "app":
        return StoreRanker(cfg.feedback_db, cfg.feedback_project, cfg.feedback_timeout)
    return AIJudge(cfg.labeler[len("judge:"):], criteria=task.description)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def round_prompts(task: Any, cfg: IterateConfig, r: int) -> list[Any]:
    """Round ``r``'s prompts: the next ``prompts_per_round`` train prompts without a demonstration."""
    demo_prompts = {str(d.prompt) for d in task.demonstrations()}
    pool = [p for p in task.prompts("train") if str(p) not in demo_prompts]
    start = (r - 1) * cfg.prompts_per_round
    return [pool[(start + i) % len(pool)] for i in range(min(cfg.prompts_per_round, len(pool)))]


def label_round(cfg: IterateConfig, task: Any, labeler: Any, policy: Path, r: int,
                path: Path) -> list[Ranking]:
    """Phases 1-2: K samples per prompt from ``policy``, ranked; written to ``path``."""
    if cfg.resume and path.exists():
        return read_records(path)
    prompts = round_prompts(task, cfg, r)
    if hasattr(labeler, "round"):  # people in the app: one project per round
        labeler.round = r
    responses = memory.call(generate_responses, str(policy), prompts, cfg.rank_k,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + r,
                            system_prompt=task.system_prompt, progress=cfg.progress,
                            generation_backend=cfg.generation_backend,
                            fresh_process=cfg.fresh_processes)
    rankings = labeler.rank_batch(prompts, responses)
    # The conversation the policy saw (system message included), which the RM then reads as
    # the RL stage gives it; and which policy wrote the responses.
    rankings = [dataclasses.replace(x, prompt=to_messages(x.prompt, task.system_prompt),
                                    meta={**x.meta, "round": r, "policy": str(policy)})
                for x in rankings]
    write_records(rankings, path)
    return rankings


@torch.no_grad()
def rm_accuracy_on(rm_path: Path, rankings: list[Ranking], batch_size: int = 16) -> float:
    """Share of the rankings' pairs (ties left out) the reward model orders as the labeler did.

    Each distinct (prompt, response) is scored once, however many pairs it sits in (a ranking
    of K gives C(K, 2) pairs over K responses).
    """
    tok = load_tokenizer(str(rm_path))
    rm = RewardModel.from_pretrained(str(rm_path), pad_token_id=tok.pad_token_id).eval()
    pairs = [(c.prompt, c.chosen, c.rejected)
             for r in rankings for c in r.to_comparisons() if not c.tie]
    if not pairs:
        return float("nan")
    keys: dict[tuple[str, str], int] = {}
    texts: list[tuple[Any, str]] = []

    def index(prompt: Any, response: str) -> int:
        key = (json.dumps(prompt, sort_keys=True, default=str), response)
        if key not in keys:
            keys[key] = len(texts)
            texts.append((prompt, response))
        return keys[key]

    chosen = [index(p, c) for p, c, _ in pairs]
    rejected = [index(p, r) for p, _, r in pairs]
    cache: dict[str, list[int]] = {}
    ids = [encode_pair(tok, p, r, 256, None, cache).input_ids for p, r in texts]
    scores: list[float] = []
    for i in range(0, len(ids), batch_size):
        input_ids, mask = pad(ids[i:i + batch_size], tok.pad_token_id)
        scores += rm(input_ids, mask).float().tolist()
    return rm_accuracy([scores[i] for i in chosen], [scores[i] for i in rejected])


def labeler_ceiling(rankings: list[Ranking]) -> float | None:
    """The gold scorer's accuracy against the labeler on the rankings' pairs (ties left out).

    The simulated labeler ranks by the gold score with Plackett-Luce noise, so where the
    responses' gold scores are close it often disagrees with them; no reward model can expect
    more than this on the same pairs. Pairs with equal gold scores count one half (a perfect
    reward model ties there and breaks the tie by chance). None when the rankings carry no
    ``meta.gold_scores`` (people or a judge ranked them).
    """
    right = n = 0.0
    for r in rankings:
        gold = (r.meta or {}).get("gold_scores")
        if not gold or len(gold) != len(r.responses):
            return None
        by_text = dict(zip(r.responses, gold))
        for c in r.to_comparisons():
            if c.tie:
                continue
            a, b = by_text[c.chosen], by_text[c.rejected]
            right += 1.0 if a > b else 0.5 if a == b else 0.0
            n += 1
    return right / n if n else None


def fit_reward_model(cfg: IterateConfig, data: Path, start: str, out: Path) -> Path:
    """Phase 3: the reward model on every ranking so far, from ``start``."""
    if cfg.resume and (out / "eval.json").exists():
        return out / "model"
    return train_rm(RMConfig(
        model=start, data=str(data), output_dir=str(out), max_steps=cfg.rm_steps, batch_size=4,
        learning_rate=cfg.rm_learning_rate, max_length=128, eval_fraction=0.15,
        precision=cfg.precision, lora=cfg.lora, seed=cfg.seed, progress=cfg.progress,
        resume=cfg.resume, overwrite=not cfg.resume, gradient_checkpointing=False))


def sft_mean_length(tokenizer_path: str, rankings: list[Ranking]) -> float:
    """Mean length in tokens, EOS included, of the responses of (round 1's) rankings."""
    tok = load_tokenizer(tokenizer_path)
    lengths = [len(tok(x, add_special_tokens=False)["input_ids"]) + 1
               for r in rankings for x in r.responses]
    return sum(lengths) / max(len(lengths), 1)


def run_rl_round(cfg: IterateConfig, policy: Path, rm: Path, out: Path,
                 length_floor: float = 0.0) -> Path:
    """Phase 4: RL from ``policy`` against ``rm``, KL to the SFT policy.

    ``length_floor``: the floor in tokens (``cfg.length_floor`` times SFT's mean length).
    """
    if cfg.resume and (out / "model" / "config.json").exists():
        return out / "model"
    common = dict(model=str(policy), reference=cfg.model, reward_model=str(rm),
                  data=f"task:{cfg.task}", output_dir=str(out), max_steps=cfg.rl_steps,
                  max_new_tokens=cfg.max_new_tokens, kl_coef=cfg.kl_coef,
                  kl_target=cfg.kl_target, entropy_coef=cfg.entropy_coef,
                  length_debias=cfg.length_debias, length_floor=length_floor,
                  length_floor_penalty=cfg.length_floor_penalty,
                  learning_rate=cfg.rl_learning_rate,
                  eval_prompts=16, precision=cfg.precision, lora=cfg.lora, seed=cfg.seed,
                  progress=cfg.progress, generation_backend=cfg.generation_backend,
                  resume=cfg.resume, overwrite=not cfg.resume, gradient_checkpointing=False,
                  offload_frozen=cfg.offload_frozen)
    return train_rl(rl_config(cfg.algo, **common))  # the algorithm's batch, group, epochs


def run_iterate(cfg: IterateConfig) -> Path:
    """Run the rounds; returns the final policy's folder."""
    check_options(cfg)
    out = Path(cfg.output_dir)
    claim_output_dir(out, cfg.resume, cfg.overwrite, extra=("rounds.jsonl",))
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    task = get_task(cfg.task)
    labeler = make_labeler(cfg, task)
    done = _read_rounds(out) if cfg.resume else []
    sft, policy = Path(cfg.model), Path(cfg.model)
    rm_start = cfg.model
    rm: Path | None = Path(cfg.reward_model) if cfg.reward_model else None
    every: list[Ranking] = []
    floor = 0.0  # --length-floor in tokens, set from round 1's (the SFT policy's) samples
    meter = StageMeter()  # seconds and peak RSS of each round's phases: timings.json
    fresh = cfg.fresh_processes  # each heavy phase in a new process: no memory carried over
    for r in range(1, cfg.rounds + 1):
        folder = out / f"round-{r}"
        folder.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        given = r == 1 and bool(cfg.rankings)
        with meter.stage(f"round-{r}/label"):
            rankings = read_records(cfg.rankings) if given else \
                label_round(cfg, task, labeler, policy, r, folder / "rankings.jsonl")
        every += rankings
        line: dict[str, Any] = {"round": r, "policy": str(policy), "labels": len(rankings),
                                "labels_total": len(every)}
        if rm is not None and not given:  # the last reward model on the new policy's samples
            line["rm/accuracy_on_new_samples"] = memory.call(rm_accuracy_on, rm, rankings,
                                                             fresh_process=fresh)
        ceiling = labeler_ceiling(rankings)
        if ceiling is not None:
            line["rm/labeler_ceiling"] = ceiling
        write_records(every, folder / "rm-data.jsonl")
        if given and rm is not None:  # round 1's reward model was trained on these already
            line["rm/heldout_accuracy"] = _heldout_accuracy(rm.parent)
        else:
            start = str(rm) if (rm is not None and cfg.rm_refit == "continue") else rm_start
            rm = meter.run(f"round-{r}/rm", fit_reward_model, cfg, folder / "rm-data.jsonl",
                           start, folder / "rm", fresh_process=fresh)
            line["rm/heldout_accuracy"] = _heldout_accuracy(folder / "rm")
        if r == 1 and cfg.length_floor:
            floor = cfg.length_floor * sft_mean_length(cfg.model, rankings)
            print(f"[iterate] length floor: {floor:.1f} tokens ({cfg.length_floor:g} x the SFT "
                  f"samples' mean)", flush=True)
        policy = meter.run(f"round-{r}/rl", run_rl_round, cfg, policy, rm, folder / "rl", floor,
                           fresh_process=fresh)
        line.update(meter.run(f"round-{r}/eval", compare_with_sft, cfg.task, sft, policy, rm,
                              cfg.eval_prompts, cfg.max_new_tokens, cfg.seed,
                              cfg.generation_backend, fresh_process=fresh)["summary"])
        line["gap/proxy_minus_gold"] = line["reward/final"] - line["gold/final"]
        line["round_s"] = time.perf_counter() - t0
        if not any(d["round"] == r for d in done):
            with open(out / "rounds.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        print(f"[iterate] round {r}: gold {line['gold/sft']:.3f} -> {line['gold/final']:.3f} "
              f"(win rate {line['gold/win_rate']:.2f}, length-controlled "
              f"{line['gold/lc_win_rate']:.2f}), KL {line['kl/final']:.2f}, length "
              f"{line['length/final']:.1f} (SFT {line['length/sft']:.1f}), distinct-2 "
              f"{line['distinct2/final']:.2f} (SFT {line['distinct2/sft']:.2f}), RM held-out "
              f"{line['rm/heldout_accuracy']}", flush=True)
    with meter.stage("final/label"):
        final_rankings = label_round(cfg, task, labeler, policy, cfg.rounds + 1,
                                     out / "final-rankings.jsonl")
    meter.write(out / "timings.json")
    summary = {"final_policy": str(policy), "final_reward_model": str(rm),
               "rm/accuracy_on_final_policy": memory.call(rm_accuracy_on, rm, final_rankings,
                                                          fresh_process=fresh),
               "rm/labeler_ceiling_on_final_policy": labeler_ceiling(final_rankings)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[iterate] final policy {policy}; its reward model's accuracy on the final policy's "
          f"samples: {summary['rm/accuracy_on_final_policy']:.3f}"
          + ("" if summary["rm/labeler_ceiling_on_final_policy"] is None else
             f" (the gold scorer itself: {summary['rm/labeler_ceiling_on_final_policy']:.3f})"))
    return policy


def _heldout_accuracy(rm_run: Path) -> float | None:
    """The held-out accuracy a reward-model run wrote to its eval.json (None if none)."""
    path = rm_run / "eval.json"
    return json.loads(path.read_text()).get("eval/rm_accuracy") if path.exists() else None


def _read_rounds(out: Path) -> list[dict[str, Any]]:
    path = out / "rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []
