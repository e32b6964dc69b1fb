"""The control run's part of a report: learning curves, reward-model accuracy and a summary.

:func:`control_section` turns a run folder (or its ``metrics.jsonl`` rows) into a
:class:`~rlhfkit.evaluate.report.Section`; ``rlhfkit control`` writes it alone as the run's
``report.html``, and other reports can append it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhfkit.evaluate.report import Section, figure_html, table_html
from rlhfkit.evaluate.runs import read_metrics

SOLVED: dict[str, float] = {"CartPole-v1": 475.0, "Pendulum-v1": -250.0}
"""A 10-episode mean true return that counts as solved: CartPole-v1's own ``reward_threshold``;
for Pendulum-v1 (no threshold in Gymnasium) a swing-up held upright for most of the episode,
where a random policy scores about -1,200."""

AGENTS = (("learned", "PPO on r̂ (preferences)"), ("true", "PPO on the true reward"))


def _curve(rows: Sequence[dict[str, Any]], source: str, x: str) -> list[tuple[float, float]]:
    return [(r[x], r["true_return"]) for r in rows
            if r["reward_source"] == source and r.get("true_return") is not None]


def _steps_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))


def curves_figure(rows: Sequence[dict[str, Any]], title: str = ""):
    """True return against env steps (both agents) and against labels used (a figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for source, label in AGENTS:
        pts = _curve(rows, source, "step")
        if pts:
            ax1.plot(*zip(*pts), label=label)
    ax1.set(xlabel="environment steps", ylabel="true return (last 10 episodes)", title=title)
    _steps_axis(ax1)
    ax1.legend()
    pts = _curve(rows, "learned", "labels")
    if pts:
        ax2.plot(*zip(*pts), marker=".", linestyle="none", alpha=0.5)
    ax2.set(xlabel="labels used", ylabel="true return", title="preference agent")
    fig.tight_layout()
    return fig


def accuracy_figure(rows: Sequence[dict[str, Any]]):
    """Reward-model accuracy (all labels, and new labels before fitting) and labels vs steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learned = [r for r in rows if r["reward_source"] == "learned"]
    # one point per refit: the first row after each fit (later rows repeat its numbers)
    fitted = [r for i, r in enumerate(learned)
              if r.get("reward/fits") and (i == 0 or learned[i - 1].get("reward/fits") != r["reward/fits"])]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("rewards/accuracy", "on all labels so far (fitted on them)", "o-"),
                              ("rewards/accuracy_new", "on each new batch, before fitting on it",
                               "s--")):
        pts = [(r["step"], r[key]) for r in fitted if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, markersize=3, label=label)
    ax.set(xlabel="environment steps", ylabel="share of strict labels predicted",
           ylim=(0, 1.02), title="reward-model accuracy at each refit")
    _steps_axis(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    twin = ax.twinx()
    twin.plot([r["step"] for r in learned], [r["labels"] for r in learned], color="grey",
              linestyle=":")
    twin.set_ylabel("labels used (dotted)")
    fig.tight_layout()
    return fig


def summary_rows(rows: Sequence[dict[str, Any]], env: str | None = None,
                 tail: float = 0.2) -> list[dict[str, Any]]:
    """One row per agent: labels, final and best true return, when it first reached ``SOLVED``.

    ``final`` is the mean of the logged 10-episode returns over the last ``tail`` of the steps.
    """
    threshold = SOLVED.get(env or "")
    out = []
    for source, name in AGENTS:
        pts = _curve(rows, source, "step")
        mine = [r for r in rows if r["reward_source"] == source]
        if not pts:
            continue
        last_step = pts[-1][0]
        final = [v for s, v in pts if s >= (1 - tail) * last_step]
        row: dict[str, Any] = {
            "agent": name, "env steps": last_step,
            "labels": mine[-1]["labels"] if source == "learned" else "—",
            f"mean true return, last {int(tail * 100)}% of steps": sum(final) / len(final),
            "best 10-episode return": max(v for _, v in pts),
        }
        if threshold is not None:
            hit = next((s for s, v in pts if v >= threshold), None)
            row[f"first step with return ≥ {threshold:g}"] = hit if hit is not None else "never"
        if source == "learned":
            acc = [r["rewards/accuracy"] for r in mine if r.get("rewards/accuracy") is not None]
            row["final reward accuracy"] = acc[-1] if acc else "—"
        else:
            row["final reward accuracy"] = "—"
        out.append(row)
    return out


def control_section(run: str | Path | Sequence[dict[str, Any]],
                    env: str | None = None) -> Section:
    """The report section of a control run.

    Args:
        run: A run folder of ``rlhfkit control`` (``metrics.jsonl``, ``config.yaml``), or
            metrics rows.
        env: Environment id (read from ``config.yaml`` when ``run`` is a folder).

    Returns:
        A section with the learning curves, the reward-model accuracy, a summary table per agent
        and, for a folder, the run's settings.
    """
    settings: dict[str, Any] = {}
    if isinstance(run, str | Path):
        rows = read_metrics(run, required=True)
        cfg_path = Path(run) / "config.yaml"
        if cfg_path.exists():
            import yaml

            settings = yaml.safe_load(cfg_path.read_text()) or {}
            env = env or settings.get("env")
    else:
        rows = list(run)
    labels = max((r["labels"] for r in rows if r["reward_source"] == "learned"), default=0)
    text = (f"{env or 'the environment'}: PPO trained on a reward model learned from {labels} "
            "segment comparisons (never seeing the environment's reward), next to the same "
            "agent trained on the true reward, when that was run. Returns are the true "
            "environment return, mean of the last 10 finished episodes at each update.")
    parts = [figure_html(curves_figure(rows, env or ""), "true return against environment "
                         "steps and against labels used"),
             table_html(summary_rows(rows, env))]
    if any(r.get("rewards/accuracy") is not None for r in rows):
        parts.insert(1, figure_html(accuracy_figure(rows), "reward-model accuracy"))
    if settings:
        keep = ("env", "labels", "total_steps", "labeler", "async_reward", "seed", "num_envs",
                "rollout_steps", "learning_rate", "gamma", "segment_length",
                "candidates_per_query", "ensemble_members", "oracle_noise")
        parts.append("<h3>Settings</h3>" + table_html(
            [{"setting": k, "value": settings[k]} for k in keep if k in settings]))
    return Section(title="Preference-based RL for control", text=text, parts=parts)
