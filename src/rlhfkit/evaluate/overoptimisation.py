"""Over-optimisation of an RL run: gold and proxy reward against the square root of the KL.

Gao et al. (2023, "Scaling laws for reward model overoptimization", Fig. 1) plot both rewards
against ``d = sqrt(KL(pi || pi_ref))``: the proxy (the reward model being optimised) keeps
rising, while the gold reward rises, peaks and falls once the policy exploits the proxy's
errors. Every RL stage logs both per rollout batch (``reward/score`` and ``gold/mean``, with
``kl/seq``) and at each evaluation (``eval/reward``, ``eval/gold``, ``eval/kl``), so every run's
report can show the curve.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhfkit.evaluate.report import Section, figure_html, table_html
from rlhfkit.evaluate.runs import read_metrics


def curve(rows: list[dict[str, Any]], proxy: str, gold: str, kl: str
          ) -> list[tuple[float, float, float | None]]:
    """``(sqrt(KL), proxy, gold or None)`` of every row that logged the proxy and the KL."""
    return [(math.sqrt(max(r[kl], 0.0)), r[proxy], r.get(gold)) for r in rows
            if proxy in r and kl in r]


def peak_gold(points: list[tuple[float, float, float | None]]) -> tuple[float, float] | None:
    """``(sqrt(KL), gold)`` where the gold reward was highest (None without gold)."""
    golds = [(d, g) for d, _, g in points if g is not None]
    return max(golds, key=lambda p: p[1]) if golds else None


def overoptimisation_section(run_dir: str | Path) -> Section | None:
    """Gold and proxy reward against sqrt(KL) along training (None for a run with no RL rows)."""
    rows = read_metrics(run_dir)
    train = curve(rows, "reward/score", "gold/mean", "kl/seq")
    evals = curve(rows, "eval/reward", "eval/gold", "eval/kl")
    if not train:
        return None
    import matplotlib  # heavy: only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot([d for d, _, _ in train], [p for _, p, _ in train], ".-", color="tab:blue",
            label="proxy (reward/score)")
    ax.set_xlabel("sqrt(KL to the reference), nats^0.5")
    ax.set_ylabel("proxy reward", color="tab:blue")
    lines, labels = ax.get_legend_handles_labels()
    if any(g is not None for _, _, g in train):
        gold_ax = ax.twinx()
        gold_ax.plot([d for d, _, g in train if g is not None],
                     [g for _, _, g in train if g is not None], ".-", color="tab:red",
                     label="gold (gold/mean)")
        if evals and any(g is not None for _, _, g in evals):
            gold_ax.plot([d for d, _, g in evals if g is not None],
                         [g for _, _, g in evals if g is not None], "s", color="tab:red",
                         fillstyle="none", label="gold, held-out (eval/gold)")
        gold_ax.set_ylabel("gold reward", color="tab:red")
        more, more_labels = gold_ax.get_legend_handles_labels()
        lines, labels = lines + more, labels + more_labels
    ax.legend(lines, labels, loc="best", fontsize="small")
    ax.set_title("Over-optimisation: rewards against sqrt(KL) (Gao et al. 2023, Fig. 1)")
    fig.tight_layout()
    rows_out = [{"sqrt_kl": d, "proxy": p, "gold": g} for d, p, g in (train[0], train[-1])]
    peak = peak_gold(train)
    text = ("Each point is one rollout batch (hollow squares: held-out evaluations). A gold "
            "curve that peaks and falls while the proxy keeps rising is the reward model being "
            "exploited.")
    if peak is not None:
        text += f" Gold peaked at {peak[1]:.3f} at sqrt(KL) = {peak[0]:.2f}."
    return Section("Over-optimisation", text,
                   [figure_html(fig, "gold and proxy reward against sqrt(KL)"),
                    table_html(rows_out, ["sqrt_kl", "proxy", "gold"])])
