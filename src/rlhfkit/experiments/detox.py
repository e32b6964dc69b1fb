"""Detoxification with holistic vs fine-grained rewards (Wu et al. 2023, Sec. 3, Table 1).

The experiment, on the built-in ``detox`` task (:mod:`rlhfkit.tasks.detox`)::

    sft/                    Step 1 on the task's demonstrations (about a third of sentences swear)
    holistic-s0/            PPO from SFT, reward scorer:non-toxic: 1 - toxicity of the whole
                            response, on its last token
    fine-grained-s0/        PPO from SFT, reward segment-gain:non-toxic: after each sentence, the
                            drop in toxicity of the response so far (they sum to the holistic one)
    results.json, table.md  the three policies on the same held-out prompts, k samples each
    detox_curves.png, detox_kl.png, report.html

Both PPO runs share everything but the reward: the SFT start and reference, the prompts and
their order, batch size, learning rate, epochs, the number of samples, and the KL penalty (a
fixed beta, or the same adaptive controller with ``--kl-target``). They are compared twice:

* the final policies in one table (average max toxicity over k samples per prompt, toxicity
  probability, perplexity of the samples under the SFT model, distinct-2/3, KL to SFT);
* along training: held-out toxicity against samples seen (does fine-grained learn faster per
  sample, the paper's Fig. 2 claim?) and against KL, and each method's evaluation closest to a
  common KL budget (the smaller of the methods' final KLs), so a method cannot look better only
  by moving further from the reference.

Run it with ``rlhfkit detox`` or ``python -m rlhfkit.experiments.detox`` (same flags);
``docs/detox.md`` has the sizes and numbers measured on the default model.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit import config as cfglib
from rlhfkit.config import only
from rlhfkit.evaluate.metrics import (
    avg_max_toxicity,
    distinct_n_per_prompt,
    perplexity_from_logprobs,
    toxicity_probability,
)
from rlhfkit.evaluate.report import Section, figure_html, table_html, write_sections
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, resolve_precision
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.options import (
    EvalOptions,
    KLOptions,
    ModelOptions,
    OptimOptions,
    RewardOptions,
    RoundsOptions,
    RunOptions,
    SamplingOptions,
)
from rlhfkit.rewards.gold import ToxicityScorer
from rlhfkit.rollout import HFBackend, ReferencePolicy, SamplingConfig, sample
from rlhfkit.segments import split_segments
from rlhfkit.tasks import get_task
from rlhfkit.train.rl import UpdateOptions
from rlhfkit.train.sft import SFTConfig, train_sft
from rlhfkit.train.trainer import rl_config, train_rl

METHODS = {"holistic": "scorer:non-toxic", "fine-grained": "segment-gain:non-toxic",
           "fine-grained-wu": "segment-gain:toxicity:-1"}
"""Method name -> the PPO ``--reward-model`` spec (see :mod:`rlhfkit.rewards.sources`).

``fine-grained`` and ``fine-grained-wu`` give the same reward after every sentence but the
first: the drop in toxicity. After the first, ``fine-grained`` gives ``1 - tox(y_1)`` (so a
response's rewards sum to the holistic reward) and ``fine-grained-wu`` gives ``-tox(y_1)``, as
in Wu et al.'s example ("Sent1 reward = 0.00 - 0.72"). The constant 1 changes no optimum, but
with GAE (lambda < 1) and a critic that starts knowing nothing it is a step in the return
that the critic has to learn, so the two can learn at different speeds.
"""

TABLE_KEYS = ("avg_max_toxicity", "toxicity_probability", "mean_toxicity", "perplexity",
              "dist2", "dist3", "kl", "length", "sentences")
"""Final-evaluation metrics, in table order (see :func:`evaluate_policy`)."""


@cfglib.stage_defaults(output_dir="runs/detox", eval_every=3, learning_rate=2e-5, mini_batch_size=8,
                       update_epochs=2, max_new_tokens=48)
@dataclass
class DetoxConfig(only(RunOptions, "output_dir", "precision", "eval_every", "progress"),
                  only(EvalOptions, "eval_prompts"),
                  only(SamplingOptions, "max_new_tokens", "samples_per_prompt"),
                  only(RewardOptions, "segment_unit"),
                  only(KLOptions, "kl_coef", "kl_target", "kl_horizon"),
                  only(UpdateOptions, "batch_size", "mini_batch_size", "update_epochs"),
                  only(OptimOptions, "learning_rate"), only(RoundsOptions, "sft_model", "sft_steps"),
                  only(ModelOptions, "model")):
    """Holistic vs fine-grained RLHF for detoxification (``rlhfkit detox``)."""

    sft_batch_size: int = 8
    """SFT batch size."""
    sft_learning_rate: float = 5e-5
    """SFT learning rate."""
    methods: str = "holistic,fine-grained,fine-grained-wu"
    """PPO rewards to run: holistic (scorer:non-toxic), fine-grained (segment-gain:non-toxic),
    fine-grained-wu (segment-gain:toxicity:-1: the first sentence gets -toxicity, no +1)."""
    seeds: str = "0"
    """PPO seeds, comma-separated (each method runs once per seed)."""
    ppo_steps: int = 12
    """PPO rollout batches per run."""
    curve_prompts: int = 24
    """Held-out prompts (one sample each) at each learning-curve evaluation."""
    reuse: bool = True
    """Reuse stages already finished in --output-dir (a model folder or evaluation file), so an
    interrupted experiment continues where it stopped."""
    report_only: bool = False
    """Rebuild table.md, the plots and report.html from results.json; train nothing."""


def method_names(cfg: DetoxConfig) -> list[str]:
    """The methods of ``cfg.methods``, checked."""
    names = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    for m in names:
        if m not in METHODS:
            raise cfglib.ConfigError(
                f"--methods: unknown method {m!r}; use {', '.join(METHODS)}")
    if not names:
        raise cfglib.ConfigError("--methods: give at least one of " + ", ".join(METHODS))
    return names


def seed_list(cfg: DetoxConfig) -> list[int]:
    """The seeds of ``cfg.seeds``."""
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise cfglib.ConfigError(
            f"--seeds: expected integers like 0,1,2, got {cfg.seeds!r}") from None
    if not seeds:
        raise cfglib.ConfigError("--seeds: give at least one seed")
    return seeds


# ---------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------

def _done(model_dir: Path, cfg: DetoxConfig) -> bool:
    return cfg.reuse and (model_dir / "config.json").exists()


def train_sft_stage(cfg: DetoxConfig, out: Path) -> Path:
    """Step 1 on the detox demonstrations (or ``--sft-model``); returns the policy folder."""
    if cfg.sft_model:
        return Path(cfg.sft_model)
    model_dir = out / "sft" / "model"
    if _done(model_dir, cfg):
        print(f"[detox] reusing the SFT policy in {model_dir}")
        return model_dir

    return train_sft(SFTConfig(model=cfg.model, data="task:detox", output_dir=str(out / "sft"),
                               max_steps=cfg.sft_steps, batch_size=cfg.sft_batch_size,
                               learning_rate=cfg.sft_learning_rate, max_length=128,
                               gradient_checkpointing=False, report_to="none",
                               precision=cfg.precision, progress=cfg.progress))


def ppo_config(cfg: DetoxConfig, sft: Path, method: str, seed: int, run_dir: Path) -> Any:
    """The PPO config of one run: everything but the reward spec is shared by the methods."""
    return rl_config(
        "ppo", model=str(sft), reward_model=METHODS[method], segment_unit=cfg.segment_unit,
        data="task:detox", gold="task", output_dir=str(run_dir), seed=seed,
        max_steps=cfg.ppo_steps, batch_size=cfg.batch_size,
        mini_batch_size=cfg.mini_batch_size, update_epochs=cfg.update_epochs,
        learning_rate=cfg.learning_rate, max_new_tokens=cfg.max_new_tokens,
        kl_coef=cfg.kl_coef, kl_target=cfg.kl_target, kl_horizon=cfg.kl_horizon,
        # scores are probabilities: no RM statistics to standardise with, nothing to clip
        normalize_reward=False, reward_clip=0.0,
        eval_every=cfg.eval_every, eval_prompts=cfg.curve_prompts,
        gradient_checkpointing=False, report_to="none", precision=cfg.precision,
        progress=cfg.progress)


def train_ppo_stage(cfg: DetoxConfig, sft: Path, method: str, seed: int, out: Path) -> Path:
    """One PPO run; returns its folder (with ``model/`` and ``metrics.jsonl``)."""
    run_dir = out / f"{method}-s{seed}"
    if _done(run_dir / "model", cfg):
        print(f"[detox] reusing {run_dir}")
        return run_dir

    if (run_dir / "metrics.jsonl").exists():  # an unfinished run: start it again, cleanly
        (run_dir / "metrics.jsonl").unlink()
        (run_dir / "samples.jsonl").unlink(missing_ok=True)
    train_rl(ppo_config(cfg, sft, method, seed, run_dir))
    return run_dir


def evaluate_policy(policy: Path, reference: Path, prompts: list[str], k: int,
                    max_new_tokens: int, seed: int = 0, precision: str = "auto",
                    system_prompt: str | None = None, prompts_per_batch: int = 16
                    ) -> dict[str, Any]:
    """Sample k responses per held-out prompt and measure them (Table 1 of Wu et al.).

    Returns:
        ``metrics``: ``avg_max_toxicity`` (mean over prompts of the max toxicity of its k
        samples, Gehman et al. 2020) and its standard error over prompts,
        ``toxicity_probability`` (share of prompts with a sample >= 0.5), ``mean_toxicity``,
        ``perplexity`` of the samples under ``reference`` (token level, EOS included),
        ``dist2``/``dist3`` (distinct n-grams among each prompt's k samples, averaged over
        prompts), ``kl`` (mean over samples of ``sum_t log pi/pi_ref``, nats), ``length``
        (tokens), ``sentences`` and ``ended``; and ``samples``: per prompt, its k texts with
        their toxicity.
    """
    import torch


    torch.manual_seed(seed)
    autocast = torch.bfloat16 if resolve_precision(precision) == "bf16" else None
    tok = load_tokenizer(str(policy))
    lm = load_causal_lm(str(policy)).eval()
    same = Path(policy).resolve() == Path(reference).resolve()
    ref = ReferencePolicy(lm, frozen=lm if same else load_causal_lm(str(reference)).eval())
    scorer = SelectiveLM(lm)
    backend = HFBackend(autocast)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    texts: list[str] = []
    kl_sum = nll_sum = 0.0
    n_tokens = n_ended = n_samples = 0
    for start in range(0, len(prompts), prompts_per_batch):
        chunk = [p for p in prompts[start:start + prompts_per_batch] for _ in range(k)]
        rollout = sample(lm, tok, chunk, sampling, system_prompt, backend=backend,
                         scorer=scorer, autocast=autocast)
        with (torch.autocast(lm.device.type, dtype=autocast) if autocast
              else contextlib.nullcontext()):
            ref_lp = rollout.logprobs if same else ref.logprobs(rollout)  # (B, R)
        mask = rollout.response_mask.float()  # (B, R)
        kl_sum += float(((rollout.logprobs - ref_lp) * mask).sum())
        m = int(mask.sum())
        nll_sum += math.log(perplexity_from_logprobs(ref_lp.float(), mask)) * m
        n_tokens += m
        n_ended += int(rollout.ended.sum())
        n_samples += len(rollout)
        texts += rollout.texts
    tox = ToxicityScorer()(texts, texts)
    groups = [texts[i * k:(i + 1) * k] for i in range(len(prompts))]
    tox_groups = [tox[i * k:(i + 1) * k] for i in range(len(prompts))]
    maxima = [max(t) for t in tox_groups]
    metrics = {
        "prompts": len(prompts), "samples_per_prompt": k,
        "avg_max_toxicity": avg_max_toxicity(tox_groups),
        "avg_max_toxicity_se": (statistics.stdev(maxima) / math.sqrt(len(maxima))
                                if len(maxima) > 1 else 0.0),
        "toxicity_probability": toxicity_probability(tox_groups),
        "mean_toxicity": sum(tox) / len(tox),
        "perplexity": math.exp(nll_sum / max(n_tokens, 1)),
        "dist2": distinct_n_per_prompt(groups, 2),
        "dist3": distinct_n_per_prompt(groups, 3),
        "kl": kl_sum / n_samples,
        "length": n_tokens / n_samples,
        "sentences": sum(len(split_segments(t)) for t in texts) / len(texts),
        "ended": n_ended / n_samples,
    }
    samples = [{"prompt": p, "responses": g, "toxicity": t}
               for p, g, t in zip(prompts, groups, tox_groups)]
    return {"metrics": metrics, "samples": samples}


def read_curve(run_dir: Path, batch_size: int) -> dict[str, list[float]]:
    """Learning curves of one PPO run from its ``metrics.jsonl``.

    Returns:
        ``eval_samples``/``eval_toxicity``/``eval_kl``: held-out evaluations (toxicity =
        1 - ``eval/gold``) against samples seen; ``train_samples``/``train_toxicity``/
        ``train_kl``: the same read off each rollout batch (before its update).
    """
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    curve: dict[str, list[float]] = {k: [] for k in ("eval_samples", "eval_toxicity", "eval_kl",
                                                     "train_samples", "train_toxicity",
                                                     "train_kl")}
    for r in rows:
        if "eval/gold" in r:
            curve["eval_samples"].append(r["step"] * batch_size)
            curve["eval_toxicity"].append(1.0 - r["eval/gold"])
            curve["eval_kl"].append(r["eval/kl"])
        if "gold/mean" in r:
            curve["train_samples"].append(r["step"] * batch_size)  # seen after this batch
            curve["train_toxicity"].append(1.0 - r["gold/mean"])
            curve["train_kl"].append(r["kl/seq"])
    return curve


# ---------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------

def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for missing values)."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(evals: dict[str, dict[str, Any]], curves: dict[str, dict[str, Any]],
              methods: list[str], seeds: list[int]) -> dict[str, Any]:
    """Table rows (mean and sd over seeds), per-sample learning speed and the matched-KL view.

    Args:
        evals: ``"sft"`` and ``"<method>-s<seed>"`` -> :func:`evaluate_policy` metrics.
        curves: ``"<method>-s<seed>"`` -> :func:`read_curve`.
        methods: Method names.
        seeds: Seeds.
    """
    rows = [{"policy": "SFT", "seeds": 1, **{k: evals["sft"][k] for k in TABLE_KEYS}}]
    for m in methods:
        row: dict[str, Any] = {"policy": f"{m} RLHF", "seeds": len(seeds)}
        for k in TABLE_KEYS:
            mu, sd = mean_sd([evals[f"{m}-s{s}"][k] for s in seeds])
            row[k], row[k + "_sd"] = mu, sd
        rows.append(row)
    # Learning speed: the mean held-out toxicity over the evaluations after step 0 (an area
    # under the curve: lower = learned faster per sample), and the last evaluation.
    speed = {}
    for m in methods:
        aucs = [statistics.fmean(curves[f"{m}-s{s}"]["eval_toxicity"][1:] or [math.nan])
                for s in seeds]
        last = [curves[f"{m}-s{s}"]["eval_toxicity"][-1] for s in seeds]
        start = [curves[f"{m}-s{s}"]["eval_toxicity"][0] for s in seeds]
        # the same over every training batch (the policy's own samples, no extra sampling)
        train = [statistics.fmean(curves[f"{m}-s{s}"].get("train_toxicity") or [math.nan])
                 for s in seeds]
        speed[m] = {"start": mean_sd(start), "auc": mean_sd(aucs), "last": mean_sd(last),
                    "train_mean": mean_sd(train), "auc_by_seed": aucs}
    # Matched KL: the budget is the smallest final held-out KL among the methods; each run is
    # read at its evaluation whose KL is closest to it.
    budget = min(statistics.fmean(curves[f"{m}-s{s}"]["eval_kl"][-1] for s in seeds)
                 for m in methods)
    at_budget = {}
    for m in methods:
        picks = []
        for s in seeds:
            c = curves[f"{m}-s{s}"]
            i = min(range(len(c["eval_kl"])), key=lambda j: abs(c["eval_kl"][j] - budget))
            picks.append({"seed": s, "samples": c["eval_samples"][i], "kl": c["eval_kl"][i],
                          "toxicity": c["eval_toxicity"][i]})
        at_budget[m] = {"picks": picks,
                        "toxicity": mean_sd([p["toxicity"] for p in picks]),
                        "kl": mean_sd([p["kl"] for p in picks])}
    return {"rows": rows, "speed": speed, "kl_budget": budget, "at_budget": at_budget}


def _fmt(row: dict[str, Any], key: str, digits: int) -> str:
    v = row[key]
    sd = row.get(key + "_sd")
    text = f"{v:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if sd and row.get("seeds", 1) > 1 else "")


def markdown_table(summary: dict[str, Any]) -> str:
    """The Table-1 style comparison as markdown (± = sd over seeds)."""
    lines = ["| policy | avg max toxicity ↓ | toxicity prob. ↓ | mean toxicity ↓ | "
             "perplexity under SFT ↓ | dist-2 ↑ | dist-3 ↑ | KL to SFT (nats) | tokens | "
             "sentences |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['policy']} | {_fmt(r, 'avg_max_toxicity', 3)} | "
                     f"{_fmt(r, 'toxicity_probability', 3)} | {_fmt(r, 'mean_toxicity', 3)} | "
                     f"{_fmt(r, 'perplexity', 2)} | {_fmt(r, 'dist2', 3)} | "
                     f"{_fmt(r, 'dist3', 3)} | {_fmt(r, 'kl', 2)} | {_fmt(r, 'length', 1)} | "
                     f"{_fmt(r, 'sentences', 1)} |")
    return "\n".join(lines) + "\n"


def speed_table(summary: dict[str, Any]) -> str:
    """Per-sample learning speed and the matched-KL reading, as markdown."""
    lines = ["| method | held-out toxicity at start | mean over later evaluations (AUC) ↓ | "
             "last evaluation ↓ | mean over training batches ↓ | "
             "at KL budget {:.2f}: toxicity (KL) |".format(summary["kl_budget"]),
             "|---|---|---|---|---|---|"]
    for m, s in summary["speed"].items():
        b = summary["at_budget"][m]

        def f(p: tuple[float, float]) -> str:
            return f"{p[0]:.3f}" + (f" ± {p[1]:.3f}" if p[1] else "")

        lines.append(f"| {m} | {f(s['start'])} | {f(s['auc'])} | {f(s['last'])} | "
                     f"{f(s['train_mean'])} | {f(b['toxicity'])} ({b['kl'][0]:.2f}) |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Plots and the report section
# ---------------------------------------------------------------------------------------

COLORS = {"holistic": "tab:blue", "fine-grained": "tab:red", "fine-grained-wu": "tab:orange"}


def curve_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Matplotlib figures: toxicity against samples seen, and against KL, for each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, seeds, curves = results["methods"], results["seeds"], results["curves"]
    sft_tox = results["evals"]["sft"]["mean_toxicity"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for m in methods:
        c = COLORS.get(m)
        for s in seeds:
            cur = curves[f"{m}-s{s}"]
            axes[0].plot(cur["eval_samples"], cur["eval_toxicity"], "o-", color=c,
                         alpha=1.0 if len(seeds) == 1 else 0.35, lw=1.5 if len(seeds) == 1
                         else 1.0, label=m if s == seeds[0] else None)
            axes[1].plot(cur["train_samples"], cur["train_toxicity"], ".-", color=c,
                         alpha=1.0 if len(seeds) == 1 else 0.35,
                         label=m if s == seeds[0] else None)
        if len(seeds) > 1:  # mean over seeds, where every seed has the same x
            xs = curves[f"{m}-s{seeds[0]}"]["eval_samples"]
            ys = [statistics.fmean(curves[f"{m}-s{s}"]["eval_toxicity"][i] for s in seeds)
                  for i in range(len(xs))]
            axes[0].plot(xs, ys, "o-", color=c, lw=2.5, label=f"{m} (mean of {len(seeds)})")
    axes[0].axhline(sft_tox, color="gray", ls="--", lw=1, label="SFT (final eval.)")
    axes[0].set_title(f"Held-out toxicity ({results['config']['curve_prompts']} prompts)")
    axes[1].set_title("Toxicity of each training batch")
    for ax in axes:
        ax.set_xlabel("samples seen")
        ax.set_ylabel("mean toxicity")
        ax.legend(fontsize=8)
    fig.tight_layout()
    figs = {"curves": fig}
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m in methods:
        for s in seeds:
            cur = curves[f"{m}-s{s}"]
            ax.plot(cur["eval_kl"], cur["eval_toxicity"], "o-", color=COLORS.get(m),
                    alpha=1.0 if len(seeds) == 1 else 0.5, label=m if s == seeds[0] else None)
    ax.axvline(results["summary"]["kl_budget"], color="gray", ls=":", lw=1, label="KL budget")
    ax.set_xlabel("KL(policy || SFT) per response, nats")
    ax.set_ylabel("held-out mean toxicity")
    ax.set_title("Toxicity against KL")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["kl"] = fig
    return figs


def detox_section(results: dict[str, Any], figures: dict[str, Any] | None = None) -> Section:
    """The report section of a detox run: the table, the curves, samples.

    Args:
        results: The contents of ``results.json`` (:func:`run_detox`).
        figures: Figures from :func:`curve_figures` (built here when None); they are closed.
    """
    figures = figures if figures is not None else curve_figures(results)
    summary = results["summary"]
    c = results["config"]
    k = c["samples_per_prompt"]
    rows = [{("policy" if key == "policy" else key): (
        r[key] if key == "policy" else
        f"{r[key]:.4g}" + (f" ± {r[key + '_sd']:.2g}" if r.get(key + "_sd") else ""))
        for key in ("policy", *TABLE_KEYS)} for r in summary["rows"]]
    speed = [{"method": m, "toxicity at start": s["start"][0],
              "mean later (AUC)": s["auc"][0], "last": s["last"][0],
              "mean over training batches": s["train_mean"][0],
              f"at KL {summary['kl_budget']:.2f}": summary["at_budget"][m]["toxicity"][0]}
             for m, s in summary["speed"].items()]
    text = ("SFT, then PPO from the same SFT policy with the same settings and these rewards: "
            + "; ".join(f"{m} = {METHODS[m]}" for m in results["methods"])
            + f" (holistic: 1 - toxicity of the whole response on its last token; segment-gain: "
            f"the change in the score after each {c['segment_unit']}); "
            f"{len(results['seeds'])} seed(s). "
            f"Final evaluation: {c['eval_prompts']} held-out prompts x {k} samples; average max "
            f"toxicity is the mean over prompts of the worst of the {k} samples; perplexity is "
            f"that of the samples under the SFT policy; dist-n is per prompt.")
    samples = []
    for i, item in enumerate(results["evals_samples"]["sft"][:6]):
        row = {"prompt": item["prompt"], "SFT": item["responses"][0]}
        for m in results["methods"]:
            other = results["evals_samples"][f"{m}-s{results['seeds'][0]}"][i]
            row[m] = other["responses"][0]
        samples.append(row)
    parts = [table_html(rows), "<h3>Learning speed</h3>", table_html(speed),
             figure_html(figures["curves"], "toxicity against samples seen"),
             figure_html(figures["kl"], "toxicity against KL"),
             "<h3>First sample of each policy on held-out prompts</h3>", table_html(samples)]
    return Section("Detoxification: holistic vs fine-grained rewards", text, parts)


def write_outputs(results: dict[str, Any], out: Path) -> Path:
    """results.json, table.md, detox_curves.png, detox_kl.png and report.html in ``out``."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown_table(results["summary"]) + "\n"
                                  + speed_table(results["summary"]))
    figures = curve_figures(results)
    figures["curves"].savefig(out / "detox_curves.png", dpi=90, bbox_inches="tight")
    figures["kl"].savefig(out / "detox_kl.png", dpi=90, bbox_inches="tight")
    section = detox_section(results, figures)
    return write_sections(out / "report.html", "rlhfkit: detoxification experiment", [section])


# ---------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------

def run_detox(cfg: DetoxConfig) -> Path:
    """Run (or continue) the experiment; returns the output folder."""
    out = Path(cfg.output_dir)
    if cfg.report_only:
        results = json.loads((out / "results.json").read_text())
        write_outputs(results, out)
        print(f"[detox] rebuilt the table, plots and report in {out}")
        return out
    methods, seeds = method_names(cfg), seed_list(cfg)
    if cfg.segment_unit not in ("sentence", "subsentence"):
        raise cfglib.ConfigError(
            f"--segment-unit must be sentence or subsentence, got {cfg.segment_unit!r}")
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save_yaml(cfg, out / "config.yaml")

    task = get_task("detox")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sft = train_sft_stage(cfg, out)
    timings["sft_s"] = time.perf_counter() - t
    runs: dict[str, Path] = {}
    for seed in seeds:
        for m in methods:
            t = time.perf_counter()
            runs[f"{m}-s{seed}"] = train_ppo_stage(cfg, sft, m, seed, out)
            timings[f"ppo_{m}_s{seed}_s"] = time.perf_counter() - t
    prompts = task.prompts("eval")[: cfg.eval_prompts]
    (out / "eval").mkdir(exist_ok=True)
    evals: dict[str, dict[str, Any]] = {}
    for name, policy in [("sft", sft)] + [(n, d / "model") for n, d in runs.items()]:
        path = out / "eval" / f"{name}.json"
        if cfg.reuse and path.exists():
            evals[name] = json.loads(path.read_text())
            continue
        t = time.perf_counter()
        evals[name] = evaluate_policy(policy, sft, prompts, cfg.samples_per_prompt,
                                      cfg.max_new_tokens, seed=1234, precision=cfg.precision,
                                      system_prompt=task.system_prompt)
        timings[f"eval_{name}_s"] = time.perf_counter() - t
        path.write_text(json.dumps(evals[name]))
        print(f"[detox] {name}: avg max toxicity {evals[name]['metrics']['avg_max_toxicity']:.3f}"
              f", KL {evals[name]['metrics']['kl']:.2f}")
    curves = {n: read_curve(d, cfg.batch_size) for n, d in runs.items()}
    metrics = {n: e["metrics"] for n, e in evals.items()}
    results = {"config": cfglib.to_dict(cfg), "methods": methods, "seeds": seeds,
               "sft_model": str(sft), "evals": metrics,
               "evals_samples": {n: e["samples"] for n, e in evals.items()},
               "curves": curves, "summary": summarise(metrics, curves, methods, seeds),
               "timings": timings}
    write_outputs(results, out)
    print("\n" + markdown_table(results["summary"]) + "\n" + speed_table(results["summary"]))
    print(f"[detox] results: {out / 'results.json'}; report: {out / 'report.html'}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhfkit.experiments.detox [--flags]`` (the same as ``rlhfkit detox``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rlhfkit.experiments.detox",
                                     description=DetoxConfig.__doc__)
    cfglib.add_arguments(parser, DetoxConfig)
    cfg = cfglib.from_args(DetoxConfig, parser.parse_args(argv))
    run_detox(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
