"""The fine-grained RLHF part of a report: each reward source's curve, KL and length.

An RL run with several reward sources (``--reward-model rel=...,fact=...,comp=...``) logs
``reward/<name>`` per source: the mean over the batch of that source's rewards summed over a
response's segments, before weighting. :func:`fine_grained_section` plots them with the KL to
the reference and the response length, and tabulates first and last values; the RL stages
write it to ``report.html`` at the end of such a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import parse_weights, split_named
from rlhfkit.evaluate.report import Section, figure_html, table_html
from rlhfkit.evaluate.runs import read_metrics

SHARED = ("score", "score_std", "normalized", "total")
"""``reward/...`` metrics that are not a source of their own."""


def source_names(rows: list[dict[str, float]]) -> list[str]:
    """Names of the sources that have a ``reward/<name>`` curve, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith("reward/") and key[len("reward/"):] not in SHARED:
                names.setdefault(key[len("reward/"):], None)
    return list(names)


def _weights(run_dir: Path) -> dict[str, tuple[float, str]]:
    """``name -> (weight, spec)`` from the run's config.yaml (empty when unknown)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    cfg: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    try:
        named = split_named(str(cfg.get("reward_model", "")))
        names = [n or "reward" for n, _ in named]
        weights = parse_weights(str(cfg.get("rewards") or ""), names)
    except ValueError:
        return {}
    return {n: (weights[n], spec) for n, (_, spec) in zip(names, named)}


def fine_grained_section(run_dir: str | Path) -> Section:
    """Per-source reward curves, KL and response length of an RL run with several sources."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    train = [r for r in rows if "kl/seq" in r]
    names = source_names(train)
    weights = _weights(run_dir)
    section = Section(
        "Fine-grained rewards",
        "Each reward source's mean reward per response (summed over its segments, before the "
        "weight w_k), the KL to the reference per response, and the response length, per "
        "rollout batch. r_t = sum_k w_k sum_j 1(t = T_j^k) R_k(x, y, j) - beta KL_t "
        "(Wu et al. 2023, eq. 1).")
    if not train:
        section.text += " No training rows in metrics.jsonl."
        return section
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for name in names:
        pts = [(r["step"], r[f"reward/{name}"]) for r in train if f"reward/{name}" in r]
        w = weights.get(name, (None, ""))[0]
        label = name if w is None else f"{name} (w={w:g})"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=label)
    axes[0].set_title("Reward per source")
    axes[0].set_xlabel("rollout batch")
    axes[0].set_ylabel("mean reward per response")
    if names:
        axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["kl/seq"] for r in train], "o-", ms=3, color="C3")
    axes[1].set_title("KL to the reference")
    axes[1].set_xlabel("rollout batch")
    axes[1].set_ylabel("nats per response")
    axes[2].plot(steps, [r.get("response/length", float("nan")) for r in train], "o-", ms=3,
                 color="C4")
    axes[2].set_title("Response length")
    axes[2].set_xlabel("rollout batch")
    axes[2].set_ylabel("tokens")
    fig.tight_layout()
    section.parts.append(figure_html(fig, "reward per source, KL and length over training"))
    table = []
    for name in [*names, "score"]:
        key = f"reward/{name}"
        vals = [r[key] for r in train if key in r]
        if not vals:
            continue
        w, spec = weights.get(name, (None, ""))
        table.append({"source": name if name != "score" else "weighted sum",
                      "spec": spec, "weight": "" if w is None else w,
                      "first batch": vals[0], "last batch": vals[-1]})
    for key in ("kl/seq", "response/length"):
        table.append({"source": key, "spec": "", "weight": "", "first batch": train[0][key],
                      "last batch": train[-1][key]})
    section.parts.append(table_html(table))
    evals = [r for r in rows if "eval/reward" in r]
    if evals:
        cols = [k for k in ("eval/reward", "eval/gold", "eval/kl", "eval/length")
                if k in evals[-1]]
        section.parts.append("<p>Held-out prompts, first and last evaluation:</p>" + table_html(
            [{"": "first", **{k: evals[0].get(k, "") for k in cols}},
             {"": "last", **{k: evals[-1].get(k, "") for k in cols}}], ["", *cols]))
    return section
