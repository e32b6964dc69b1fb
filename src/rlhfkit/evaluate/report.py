"""A self-contained ``report.html``: plots (PNG, base64), tables and samples.

:func:`write_report` writes the demo's report (an RL run against SFT). Other systems (Nash
learning, preference RL for control, fine-grained RLHF) add their own parts as
:class:`Section` objects, built with :func:`figure_html` and :func:`table_html`; the same
sections can be written alone with :func:`write_sections`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
          "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
          "table{border-collapse:collapse}img{margin:6px}</style>")


@dataclass
class Section:
    """One part of a report: a heading, optional intro text, figures and tables (HTML)."""

    title: str
    text: str = ""
    """Plain text shown under the heading (escaped)."""
    parts: list[str] = field(default_factory=list)
    """HTML fragments, e.g. from :func:`figure_html` and :func:`table_html`."""

    def html(self) -> str:
        """The section as HTML."""
        head = f"<h2>{html.escape(self.title)}</h2>"
        text = f"<p>{html.escape(self.text)}</p>" if self.text else ""
        return head + text + "\n".join(self.parts)


def figure_html(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline ``<img>`` (the figure is closed)."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{_png(fig)}'>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an HTML table (floats shown with 4 significant digits)."""
    if not rows:
        return ""
    e = html.escape
    cols = list(columns or rows[0])
    out = ["<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{e(_cell(row.get(c, '')))}</td>" for c in cols)
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_sections(path: str | Path, title: str, sections: Sequence[Section]) -> Path:
    """Write a report made only of sections (for runs that are not the demo)."""
    e = html.escape
    body = "\n".join(s.html() for s in sections)
    path = Path(path)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}"
                    f"</title>{_STYLE}</head><body><h1>{e(title)}</h1>\n{body}</body></html>")
    return path


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def training_plots(rows: Sequence[dict[str, float]]) -> dict[str, str]:
    """Base64 PNGs from metrics.jsonl rows: reward and gold vs KL, KL and length over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "kl/seq" in r]
    if not train:
        return {}
    steps = [r["step"] for r in train]
    kl = [r["kl/seq"] for r in train]
    plots = {}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(kl, [r["reward/score"] for r in train], "o-", label="RM reward (proxy)")
    if all("gold/mean" in r for r in train):
        ax.plot(kl, [r["gold/mean"] for r in train], "s-", label="gold reward")
    ax.set_xlabel("KL(policy || SFT) per response, nats")
    ax.set_ylabel("reward")
    ax.legend()
    ax.set_title("Reward against KL over training")
    plots["Reward and gold reward against KL"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, kl, "o-")
    ax.set_xlabel("rollout batch")
    ax.set_ylabel("KL per response, nats")
    ax.set_title("KL to the reference")
    plots["KL"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, [r["response/length"] for r in train], "o-")
    ax.set_xlabel("rollout batch")
    ax.set_ylabel("tokens")
    ax.set_title("Response length")
    plots["Response length"] = _png(fig)
    return plots


def write_report(
    path: str | Path,
    title: str,
    summary: dict[str, Any],
    metrics_rows: Sequence[dict[str, float]],
    samples: Sequence[dict[str, Any]],
    comparison: Sequence[dict[str, Any]] = (),
    sections: Sequence[Section] = (),
) -> Path:
    """Write the HTML report.

    Args:
        path: Output file (``report.html``).
        title: Page title.
        summary: Headline numbers (a flat dict; nested dicts are shown as JSON).
        metrics_rows: Rows of the RL stage's metrics.jsonl.
        samples: Dicts with ``prompt``, ``before``, ``after`` and optional scores.
        comparison: Optional rows, one per algorithm (flat dicts with the same keys), shown as
            a table that compares the algorithms on the same held-out prompts.
        sections: More sections, appended after the samples.
    """
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             _STYLE + "</head><body>",
             f"<h1>{e(title)}</h1><h2>Summary</h2><table>"]
    for k, v in summary.items():
        shown = json.dumps(v) if isinstance(v, dict | list) else (
            f"{v:.4g}" if isinstance(v, float) else str(v))
        parts.append(f"<tr><th>{e(str(k))}</th><td>{e(shown)}</td></tr>")
    parts.append("</table>")
    if comparison:
        keys = list(comparison[0])
        parts.append("<h2>Algorithms compared (same held-out prompts, gold labeler)</h2><table><tr>"
                     + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
        for row in comparison:
            cells = (f"{row.get(k):.3g}" if isinstance(row.get(k), float) else str(row.get(k))
                     for k in keys)
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Training</h2>")
    for name, png in training_plots(metrics_rows).items():
        parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Samples on held-out prompts</h2><table><tr><th>prompt</th>"
                 "<th>SFT</th><th>gold</th><th>final policy</th><th>gold</th></tr>")
    for s in samples:
        parts.append(
            f"<tr><td>{e(str(s['prompt']))}</td><td>{e(s['before'])}</td>"
            f"<td>{s.get('gold_before', float('nan')):.2f}</td><td>{e(s['after'])}</td>"
            f"<td>{s.get('gold_after', float('nan')):.2f}</td></tr>")
    parts.append("</table>")
    parts.extend(s.html() for s in sections)
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts))
    return path
