"""Report building blocks: sections, tables and figures render into one self-contained page."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlhfkit.evaluate.report import Section, figure_html, table_html, write_sections  # noqa: E402


def test_sections_report_has_table_figure_and_escaped_text(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    rows = [{"agent": "true reward", "return": 500.0}, {"agent": "<learned>", "return": 481.73}]
    section = Section("Control", text="a < b", parts=[figure_html(fig, "curve"), table_html(rows)])
    page = write_sections(tmp_path / "report.html", "Run", [section]).read_text()
    assert "<h2>Control</h2>" in page and "<p>a &lt; b</p>" in page
    assert "data:image/png;base64," in page and 'alt="curve"' in page
    assert "<td>&lt;learned&gt;</td><td>481.7</td>" in page
    assert page.count("<tr>") == 3


def test_table_html_of_no_rows_is_empty():
    assert table_html([]) == ""


def test_report_html_comes_from_packaged_templates():
    """The templates ship as package data (pyproject's package-data names only real folders)."""
    import tomllib
    from importlib.resources import files
    from pathlib import Path

    from rlhfkit.evaluate.report import _env

    names = set(_env().list_templates())
    assert {"report.html", "section.html", "table.html", "figure.html", "report.css"} <= names
    assert files("rlhfkit.evaluate").joinpath("templates", "report.html").is_file()
    root = Path(__file__).parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["rlhfkit"]
    for pattern in patterns:
        assert list((root / "src" / "rlhfkit").glob(pattern)), f"package-data {pattern} is empty"


def test_write_report_escapes_and_shows_invisible_characters(tmp_path):
    from rlhfkit.evaluate.report import write_report

    rows = [{"step": i, "kl/seq": 0.0004 * i - 0.0008, "reward/score": 0.1 * i,
             "gold/mean": 0.05 * i, "response/length": 20} for i in range(1, 7)]
    samples = [{"prompt": "<b>bold?</b>", "before": "a\x85b\ue000c 新 👍", "after": "fine\nok",
                "gold_before": 0.25, "gold_after": 0.5}]
    comparison = [{"algorithm": "ppo", "gold/final": 0.123456}]
    page = write_report(tmp_path / "r.html", "Demo & co", {"kl/final": 0.00051111, "n": 16},
                        rows, samples, comparison, [Section("Extra", "x > y")]).read_text()
    assert "<title>Demo &amp; co</title>" in page
    assert "<tr><th>kl/final</th><td>0.0005111</td></tr>" in page
    assert "<td>ppo</td><td>0.123</td>" in page  # the comparison table: 3 digits
    assert "<td>&lt;b&gt;bold?&lt;/b&gt;</td>" in page
    assert ">U+0085</span>" in page
    assert ">U+E000</span>" in page and "新 👍" in page  # real characters stay themselves
    assert "<td>0.25</td>" in page and "<h2>Extra</h2>" in page and "<p>x &gt; y</p>" in page
    assert page.count("data:image/png;base64,") == 3
    assert "Noto Color Emoji" in page  # the font stack that lets emoji and CJK render


def test_missing_glyphs_are_spelt_not_drawn_as_boxes():
    """An emoji in a label: matplotlib would draw a box (and warn); the report spells it."""
    import warnings

    from rlhfkit.evaluate.report import _png

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="👍 rate ≥ ½")
    ax.set_title("reward: 新")
    ax.legend()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would raise
        _png(fig)
    assert ax.get_title() == "reward: U+65B0"
    assert ax.get_legend().get_texts()[0].get_text() == "U+1F44D rate ≥ ½"  # DejaVu has ≥ ½


def test_reward_vs_kl_tick_labels_do_not_overlap():
    """KL values of order 1e-4 (a short run) made 9 labels like -0.00075 run into each other."""
    from rlhfkit.evaluate.report import _compact_ticks

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([-0.00082, -0.00024, 0.0, 0.00035, 0.0012], [0.07, -0.06, 0.0, -0.08, 0.05], "o-")
    _compact_ticks(ax, "x")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert 3 <= len(boxes) <= 6
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 + 4 <= right.x0, [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
