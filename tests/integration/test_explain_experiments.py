"""Experiments 12, 13 and 14 (`vitmech explain`, `vitmech misclassified`, `vitmech patch-size`) run offline in
their quick mode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers.scripts import load_experiment
from vitmech.loading.registry import zoo_models
from vitmech.train.cnn import zoo_cnns

pytestmark = pytest.mark.skipif("vitmech/mini-galaxy" not in zoo_models(), reason="shipped model not in this checkout")


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_12_explanations_quick_writes_figure_and_alignment(tmp_path) -> None:
    models = ["--model", "vitmech/mini-galaxy"]
    if "vitmech/mini-cnn" in zoo_cnns():
        models += ["--model", "vitmech/mini-cnn"]
    out = tmp_path / "r12"
    code = load_experiment("12_explanations").main(["--quick", "--no-progress", *models, "--out", str(out)])
    assert code == 0
    assert (out / "explanations.png").stat().st_size > 10_000
    summary = rows(out / "alignment_summary.csv")
    vit_methods = {r["method"] for r in summary if r["model"] == "vitmech/mini-galaxy"}
    assert {"rollout", "gradcam", "transformer_attribution", "integrated_gradients", "saliency"} <= vit_methods
    if "vitmech/mini-cnn" in zoo_cnns():
        assert {r["method"] for r in summary if r["model"] == "vitmech/mini-cnn"} >= {"gradcam", "saliency"}
    assert "RANDOM WEIGHTS" not in (out / "report.md").read_text()


def test_13_misclassified_quick_on_random_cnn_weights(tmp_path) -> None:
    """A random timm CNN gets nearly every galaxy wrong: the maps path runs, and the report is stamped."""
    out = tmp_path / "r13"
    argv = ["--quick", "--no-progress", "--model", "resnet10t", "--random-init", "--methods", "gradcam,saliency"]
    code = load_experiment("13_misclassified").main([*argv, "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    confusion = rows(out / "confusion.csv")
    assert len(confusion) == 1000  # the full matrix of the ImageNet head
    assert sum(int(v) for r in confusion for k, v in r.items() if k != "true") == summary["n_images"] == 12
    shown = rows(out / "confusion_occurring.csv")  # report.md shows only the classes that occur
    occurring = {r["true"] for r in confusion if any(int(v) for k, v in r.items() if k != "true")}
    occurring |= {k for k in confusion[0] if k != "true" and any(int(r[k]) for r in confusion)}
    assert {r["true"] for r in shown} == occurring and len(shown[0]) == len(occurring) + 1
    assert sum(int(v) for r in shown for k, v in r.items() if k != "true") == 12
    assert (out / "report.md").stat().st_size < 200_000
    ranked = rows(out / "misclassified.csv")
    assert len(ranked) == summary["n_misclassified"] > 0
    confidences = [float(r["confidence"]) for r in ranked]
    assert confidences == sorted(confidences, reverse=True)
    table = rows(out / "alignment_summary.csv")
    assert {(r["method"], r["explained_class"]) for r in table} == {
        (m, c) for m in ("gradcam", "saliency") for c in ("true", "predicted")
    }
    assert (out / "misclassified_maps.png").is_file()
    assert "RANDOM WEIGHTS" in (out / "report.md").read_text()


@pytest.mark.skipif("vitmech/mini-galaxy-p32" not in zoo_models(), reason="shipped patch-32 model not in this checkout")
def test_14_patch_size_quick_on_the_shipped_pair(tmp_path) -> None:
    """The default pair (patch 16 and its patch-32 twin) on 3 held-out galaxies: every ViT method's alignment
    for both models on the 224 px grid, the four attention metrics paired, the maps figure, trained weights."""
    out = tmp_path / "r14"
    assert load_experiment("14_patch_size").main(["--quick", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patch_sizes"] == {"p16": 16, "p32": 32}
    alignment = rows(out / "alignment_comparison.csv")
    assert {r["score"] for r in alignment} == {"iou", "energy", "pointing"}
    assert {"rollout", "gradcam", "transformer_attribution", "integrated_gradients"} <= {r["method"] for r in alignment}
    assert all(0 <= float(r[f"mean_{m}"]) <= 1 for r in alignment for m in ("p16", "p32"))
    attention = {r["metric"]: r for r in rows(out / "attention_comparison.csv")}
    assert set(attention) == {"cls_entropy", "cls_entropy_relative", "cls_top_k_equal_area", "mean_distance_px"}
    assert all(0 < float(attention["cls_entropy_relative"][f"mean_{m}"]) <= 1 for m in ("p16", "p32"))
    assert (out / "maps.png").stat().st_size > 10_000 and (out / "attention_by_layer.png").is_file()
    assert "RANDOM WEIGHTS" not in (out / "report.md").read_text()
