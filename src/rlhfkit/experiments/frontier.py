"""The reward-KL frontier: gold reward against KL to the SFT policy, per method and strength.

The DPO paper's Figure 2 (left; Rafailov et al. 2023) compares methods by the gold reward each
reaches for a given KL from the reference: a method whose points sit up and to the left gets
more reward for the same divergence. ``rlhfkit frontier`` trains, from one SFT policy and one
reward model (and the rankings it learned from, for DPO/IPO), every method at every strength:

- the RL algorithms of the registry (PPO, GRPO, ...): the KL coefficient beta (``--betas``);
- DPO, IPO: their beta (``--dpo-betas``);
- best-of-N: N (``--best-of``), whose KL is the analytic ``log N - (N - 1) / N``.

Each point is judged by :func:`rlhfkit.train.comparison.compare_with_sft` on the same held-out
prompts and written to ``points.jsonl``; ``report.html`` plots gold against KL and marks the
points on the Pareto front (no other point has both more gold and less KL). ``--resume`` keeps
the points already measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit import config as cfglib
from rlhfkit.config import only
from rlhfkit.evaluate.report import Section, figure_html, table_html, write_sections
from rlhfkit.options import (
    EvalOptions,
    GenerationOptions,
    RewardOptions,
    RoundsOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.train.algorithms import reward_algorithm, reward_algorithms
from rlhfkit.train.comparison import compare_with_sft
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.loop import claim_output_dir
from rlhfkit.train.trainer import rl_config, train_rl

DIRECT = ("dpo", "ipo")


@cfglib.stage_defaults(output_dir="runs/frontier", reward_model="runs/demo/rm/model",
                       sft_model="runs/demo/sft/model", max_new_tokens=24, eval_prompts=64)
@dataclass
class FrontierConfig(only(RunOptions, "output_dir", "precision", "seed", "resume", "overwrite",
                          "progress"),
                     only(GenerationOptions, "generation_backend"),
                     only(SamplingOptions, "max_new_tokens"), only(EvalOptions, "eval_prompts"),
                     only(RewardOptions, "reward_model"),
                     only(RoundsOptions, "task", "sft_model", "rl_steps", "rl_learning_rate")):
    """Gold reward against KL for each method and strength (``rlhfkit frontier``)."""

    preferences: str = "runs/demo/rankings.jsonl"
    """The rankings DPO and IPO learn from (those the reward model learned from)."""
    methods: str = "rl,dpo,ipo,best-of-n"
    """Methods to run: any RL algorithm (rlhfkit rl --help lists them; py:FILE.py:NAME for your
    own), rl (every registered RL algorithm that optimises a reward), dpo, ipo, best-of-n."""
    betas: str = "0.02,0.05,0.2"
    """KL coefficients of the RL methods."""
    dpo_betas: str = "0.05,0.1,0.5"
    """beta of DPO and IPO."""
    best_of: str = "1,2,4,8,16"
    """N of best-of-N."""
    dpo_steps: int = 48
    """Optimizer steps of each DPO/IPO point."""
    dpo_learning_rate: float = 5e-6
    """DPO/IPO learning rate."""


def grid(cfg: FrontierConfig) -> list[tuple[str, float]]:
    """Every (method, strength) point, with a clear error for an unknown method."""
    cfglib.validate(cfg)
    methods = []
    for m in (m.strip() for m in cfg.methods.split(",") if m.strip()):
        methods += reward_algorithms() if m == "rl" else [m]
    values = {"rl": cfglib.parse_floats(cfg.betas, "--betas"),
              "direct": cfglib.parse_floats(cfg.dpo_betas, "--dpo-betas"),
              "best-of-n": cfglib.parse_floats(cfg.best_of, "--best-of")}
    out = []
    for m in dict.fromkeys(methods):  # each once, in the order given
        if m not in (*DIRECT, "best-of-n"):
            reward_algorithm(m, "--methods")  # a clear error for an unknown method
        kind = "direct" if m in DIRECT else m if m == "best-of-n" else "rl"
        out += [(m, v) for v in values[kind]]
    return out


def train_point(cfg: FrontierConfig, method: str, value: float, folder: Path) -> Path | None:
    """The policy of one point (None for best-of-N, which trains nothing)."""
    common = dict(model=cfg.sft_model, output_dir=str(folder), precision=cfg.precision,
                  seed=cfg.seed, progress=cfg.progress, overwrite=True, report_to="none",
                  gradient_checkpointing=False)
    if method == "best-of-n":
        return None
    if method in DIRECT:
        return train_dpo(DPOConfig(data=cfg.preferences, loss=method, beta=value,
                                   max_steps=cfg.dpo_steps, batch_size=4, max_length=128,
                                   learning_rate=cfg.dpo_learning_rate, eval_fraction=0.15,
                                   **common))
    rl = dict(reward_model=cfg.reward_model, data=f"task:{cfg.task}", max_steps=cfg.rl_steps,
              max_new_tokens=cfg.max_new_tokens, kl_coef=value, eval_prompts=0,
              learning_rate=cfg.rl_learning_rate, generation_backend=cfg.generation_backend,
              **common)
    return train_rl(rl_config(method, **rl))  # the algorithm's batch, group, epochs


def pareto(points: list[dict[str, Any]]) -> list[bool]:
    """For each point: no other point has at least its gold at no more KL (and is better in one)."""
    out = []
    for p in points:
        dominated = any(q is not p and q["kl"] <= p["kl"] and q["gold"] >= p["gold"]
                        and (q["kl"] < p["kl"] or q["gold"] > p["gold"]) for q in points)
        out.append(not dominated)
    return out


def run_frontier(cfg: FrontierConfig) -> Path:
    """Measure every point of the grid; returns the report."""
    points_grid = grid(cfg)
    out = Path(cfg.output_dir)
    claim_output_dir(out, cfg.resume, cfg.overwrite, extra=("points.jsonl",))
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")
    done = _read_points(out)
    for method, value in points_grid:
        if any(p["method"] == method and p["value"] == value for p in done):
            continue
        folder = out / f"{method}-{value:g}"
        policy = train_point(cfg, method, value, folder)
        result = compare_with_sft(cfg.task, Path(cfg.sft_model), policy, Path(cfg.reward_model),
                                  cfg.eval_prompts, cfg.max_new_tokens, cfg.seed,
                                  cfg.generation_backend, best_of=max(1, int(value)),
                                  out_dir=folder)["summary"]
        point = {"method": method, "value": value, "gold": result["gold/final"],
                 "kl": result["kl/final"], "reward": result["reward/final"],
                 "gold_sft": result["gold/sft"], "win_rate": result["gold/win_rate"],
                 "length": result["length/final"], "distinct2": result["distinct2/final"]}
        done.append(point)
        with open(out / "points.jsonl", "a") as f:
            f.write(json.dumps(point) + "\n")
        print(f"[frontier] {method} {value:g}: gold {point['gold']:.3f} at KL "
              f"{point['kl']:.2f} nats", flush=True)
    report = write_sections(out / "report.html", "rlhfkit frontier: gold reward against KL",
                            [frontier_section(done)])
    print(f"[frontier] {len(done)} points; report: {report}")
    return report


def frontier_section(points: list[dict[str, Any]]) -> Section:
    """Gold against KL per method, the Pareto front marked, and the table."""
    import matplotlib  # heavy: only when the report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(p["method"] for p in points):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["kl"])
        ax.plot([p["kl"] for p in mine], [p["gold"] for p in mine], "o-", label=method)
    ax.scatter([p["kl"] for p, f in zip(points, front) if f],
               [p["gold"] for p, f in zip(points, front) if f], s=140, facecolors="none",
               edgecolors="black", label="Pareto front")
    if points:
        ax.axhline(points[0]["gold_sft"], color="grey", ls=":", label="SFT")
    ax.set_xlabel("KL to the SFT policy (nats per response)")
    ax.set_ylabel("gold reward (held-out mean)")
    ax.set_title("Reward-KL frontier (Rafailov et al. 2023, Fig. 2 left)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    by_method: dict[str, int] = {}
    for p, f in zip(points, front):
        by_method[p["method"]] = by_method.get(p["method"], 0) + int(f)
    text = ("Points on the Pareto front, by method: "
            + ", ".join(f"{m} {n}" for m, n in by_method.items()) + ".")
    rows = [{**p, "pareto": f} for p, f in zip(points, front)]
    return Section("Reward-KL frontier", text, [figure_html(fig, "gold reward against KL"),
                                               table_html(rows)])


def _read_points(out: Path) -> list[dict[str, Any]]:
    path = out / "points.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []
