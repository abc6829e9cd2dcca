"""Report folders write every artifact as it is added, and a Markdown report that links them."""

from __future__ import annotations

import csv
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from vitmech.report import Report, markdown_table  # noqa: E402


def test_report_folder_holds_tables_json_figures_and_markdown(tmp_path):
    report = Report(tmp_path / "r", title="Demo")
    rows = [{"layer": 0, "entropy": 4.8123456}, {"layer": 1, "entropy": float("nan")}]
    report.add_table("entropy", rows, caption="Entropy by layer")
    assert not (tmp_path / "r" / "entropy.csv").exists()  # staged until write()
    report.add_json("settings", {"renormalise": True})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    report.add_figure("curve", fig, caption="A curve")
    md = report.write().read_text()
    assert "# Demo" in md and "| 0 | 4.812 |" in md and "![A curve](curve.png)" in md and "nan" in md
    with (tmp_path / "r" / "entropy.csv").open() as f:
        assert list(csv.DictReader(f))[0] == {"layer": "0", "entropy": "4.8123456"}
    index = json.loads((tmp_path / "r" / "index.json").read_text())
    assert index["files"] == ["entropy.csv", "settings.json", "curve.png"]


def test_markdown_table_and_bad_input():
    assert markdown_table([]) == "_(empty table)_"
    assert markdown_table([{"a": 1.23456}], float_format=".2f").splitlines()[-1] == "| 1.23 |"
    with pytest.raises(TypeError, match="add_json"):
        Report("/tmp/vitmech_test_report", "x").add_table("t", {"a": 1})
