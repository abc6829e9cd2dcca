"""Experiment 15 in quick mode on the shipped galaxy model (offline), and docs/patching.md's tutorial code."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from tests.helpers.scripts import load_experiment

ROOT = Path(__file__).resolve().parents[2]


def test_quick_experiment_writes_its_report(tmp_path, small_figures):
    exp = load_experiment("15_patching_circuits.py")
    out = tmp_path / "report"
    assert exp.main(["--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("report.md", "layers.csv", "heads.csv", "heads_all.png", "positions_resid.png", "circuit.png"):
        assert (out / name).exists(), name
    assert summary["config"]["n_pairs"] == 2 and summary["config"]["model"] == "vitmech/mini-galaxy"
    circuit = summary["circuit"]
    assert circuit["faithfulness"] >= circuit["target"] and 0 < circuit["fraction_of_edges"] <= 1
    lo, hi = circuit["search_bracket"]  # --quick: 8 halvings of the circuit-size search
    n_edges = round(circuit["n_edges"] / circuit["fraction_of_edges"])
    assert summary["config"]["search_steps"] == 8 and 1 < hi - lo <= -(-n_edges // 256)
    assert summary["gap"] == pytest.approx(summary["clean"] - summary["corrupted"])
    assert len(summary["top_heads"]) == 2 and len(summary["direct_to_logits"]) == 2
    report = (out / "report.md").read_text()
    assert "faithfulness" in report and "SE" in report and f"within {hi - lo - 1} top edges of the smallest" in report


def test_the_tutorial_runs():
    text = (ROOT / "docs" / "patching.md").read_text()
    code = re.search(r"<!-- tutorial -->\n```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10  # "ten lines"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/patching.md", "exec"), {})
    assert "restored" in printed.getvalue()
