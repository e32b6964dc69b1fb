"""A self-contained ``report.html``: plots (PNG, base64), tables and samples.

:func:`write_report` writes the demo's report (an RL run against SFT). Other systems (Nash
learning, preference RL for control, fine-grained RLHF) add their own parts as
:class:`Section` objects, built with :func:`figure_html` and :func:`table_html`; the same
sections can be written alone with :func:`write_sections`.

The HTML comes from Jinja2 templates in ``rlhfkit/evaluate/templates`` (package data), with
autoescaping on: ``report.html`` (the page), ``section.html``, ``table.html``, ``figure.html``
and ``report.css``. Text the models wrote goes through the ``visible`` filter, which shows
characters that print nothing in any font (control and format characters, private-use and
unassigned code points) as their code point.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

_INVISIBLE = ("Cc", "Cf", "Co", "Cn", "Cs")
"""Unicode categories with no glyph of their own (newlines and tabs are kept as they are)."""


@functools.cache
def _env() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("rlhfkit.evaluate", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(cell=format_cell, visible=visible, score=_score)
    return env


def _render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


def format_cell(value: Any, digits: int = 4) -> str:
    """A table cell as text: floats with ``digits`` significant digits, lists/dicts as JSON."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _score(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "nan"


def visible(text: Any) -> Markup:
    """Escaped ``text`` with every character that has no glyph shown as ``U+XXXX``.

    Such characters (control and format characters, private-use, unassigned and surrogate code
    points) would otherwise show as an empty box or nothing at all; newlines and tabs stay.
    """
    out = []
    for char in str(text):
        if char not in "\n\t" and unicodedata.category(char) in _INVISIBLE:
            out.append(Markup('<span class="cp" title="{}">U+{:04X}</span>').format(
                unicodedata.name(char, "no name"), ord(char)))
        else:
            out.append(escape(char))
    return Markup("").join(out)


@dataclass
class Section:
    """One part of a report: a heading, optional intro text, figures and tables (HTML)."""

    title: str
    text: str = ""
    """Plain text shown under the heading (escaped)."""
    parts: list[str] = field(default_factory=list)
    """HTML fragments, e.g. from :func:`figure_html` and :func:`table_html`."""

    def html(self) -> str:
        """The section as HTML (``section.html``)."""
        return _render("section.html", section=self)


def figure_html(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline ``<img>`` (the figure is closed)."""
    return _render("figure.html", alt=alt, png=_png(fig)).strip()


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
               digits: int = 4) -> str:
    """Rows of dicts as an HTML table (floats shown with ``digits`` significant digits)."""
    if not rows:
        return ""
    return _render("table.html", rows=rows, columns=list(columns or rows[0]),
                   digits=digits).strip()


def write_sections(path: str | Path, title: str, sections: Sequence[Section]) -> Path:
    """Write a report made only of sections (for runs that are not the demo)."""
    path = Path(path)
    path.write_text(_render("report.html", title=title, summary={}, comparison=[], plots={},
                            samples=[], sections=sections), encoding="utf-8")
    return path


def _png(fig: Any) -> str:
    """The figure as base64 PNG, with glyphs its fonts lack spelt as ``U+XXXX`` (no boxes)."""
    _spell_missing_glyphs(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _spell_missing_glyphs(fig: Any) -> None:
    """Replace, in every text of ``fig``, the characters its font cannot draw by ``U+XXXX``.

    matplotlib draws a missing glyph as an empty box (and warns); an emoji or CJK label (a
    reward source, a category, a sample) would otherwise show as boxes in the PNG.
    """
    from matplotlib.font_manager import findfont, get_font
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        value = text.get_text()
        if not value or value.isascii():
            continue
        font = get_font(findfont(text.get_fontproperties()))
        spelt = "".join(c if c.isspace() or font.get_char_index(ord(c)) else f"U+{ord(c):04X}"
                        for c in value)
        if spelt != value:
            text.set_text(spelt)


def _compact_ticks(ax: Any, axis: str = "x", bins: int = 5) -> None:
    """At most ``bins`` ticks, labelled with 2 significant digits (no long labels that touch)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(nbins=bins))
    target.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.2g}"))


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
    _compact_ticks(ax, "x")
    ax.legend()
    ax.set_title("Reward against KL over training")
    plots["Reward and gold reward against KL"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, kl, "o-")
    ax.set_xlabel("rollout batch")
    ax.set_ylabel("KL per response, nats")
    _compact_ticks(ax, "y")
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
    path = Path(path)
    path.write_text(_render("report.html", title=title, summary=summary,
                            comparison=list(comparison), plots=training_plots(metrics_rows),
                            samples=list(samples), sections=sections), encoding="utf-8")
    return path


def training_section(run_dir: str | Path, stage: str) -> Section:
    """A supervised run's curves: its loss and every other logged metric, against the step."""
    from rlhfkit.evaluate.runs import read_metrics

    rows = read_metrics(run_dir)
    names = [k for k in dict.fromkeys(k for r in rows for k in r)
             if k != "step" and not k.startswith(("lr", "epoch", "perf/"))]
    return curves_section(f"{stage}: training", rows, names,
                          "Every metric in metrics.jsonl against the optimizer step (eval/ "
                          "rows: the held-out evaluations).")


def curves_section(title: str, rows: Sequence[dict[str, Any]], names: Sequence[str],
                   text: str, x: str = "step") -> Section:
    """One small plot per metric in ``names`` against ``x``, and a table of the last values."""
    import matplotlib  # heavy: only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in names if any(n in r for r in rows)]
    if not names:
        return Section(title, "No metrics were logged.")
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(r[x], r[name]) for r in rows if name in r and x in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x)
        _compact_ticks(ax, "y")
    fig.tight_layout()
    last = {name: next((r[name] for r in reversed(rows) if name in r), "") for name in names}
    return Section(title, text, [figure_html(fig, title), table_html([last], names)])
