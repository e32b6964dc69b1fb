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
    assert "data:image/png;base64," in page and "alt='curve'" in page
    assert "<td>&lt;learned&gt;</td><td>481.7</td>" in page
    assert page.count("<tr>") == 3


def test_table_html_of_no_rows_is_empty():
    assert table_html([]) == ""
