"""Experiment 07 end to end on a small saved model and an image folder; the ablation plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.scripts import load_experiment as load_script
from vitmech.analysis.ablation import (
    compare_estimates,
    estimate_head_effects,
    head_sweep,
    pair_interactions,
    pruning_curve,
)
from vitmech.viz.ablation import (
    plot_estimates_vs_exact,
    plot_head_heatmap,
    plot_layer_summary,
    plot_pair_interactions,
    plot_pruning_curve,
)

ROOT = Path(__file__).resolve().parents[2]


def load_experiment():
    return load_script("07_head_ablation_heatmap.py")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp07")
    tiny_model(seed=2, n_classes=3).save_pretrained(folder / "model")
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / f"{i:02d}.png")
    np.save(folder / "targets.npy", rng.normal(size=(6, 3)).astype(np.float32))
    return folder


def test_experiment_writes_the_report_and_resumes(saved):
    exp = load_experiment()
    out = saved / "report"
    args = [
        "--model",
        str(saved / "model"),
        "--images",
        str(saved / "images"),
        "--targets",
        str(saved / "targets.npy"),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--prune",
        "3",
    ]
    assert exp.main(args) == 0
    for name in (
        "report.md",
        "heatmap.png",
        "layer_summary.csv",
        "all_heads.csv",
        "sweep.json",
        "estimates.csv",
        "pruning.csv",
    ):
        assert (out / name).exists(), name
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["metric"]["metric"] == "mse" and len(sweep["rows"]) == 12
    first = (out / "all_heads.csv").read_text()
    store_files = list((out / "store").glob("sweep-*.jsonl"))
    assert len(store_files) == 1
    assert exp.main([*args, "--resume"]) == 0  # a rerun resumes from the store and gives the same table
    assert (out / "all_heads.csv").read_text() == first
    assert len(list((out / "store").glob("sweep-*.jsonl"))) == 1


def test_experiment_on_generated_chirps_uses_the_card_scaling(tmp_path):
    exp = load_experiment()
    model = tiny_model(seed=3, n_classes=3)
    model.card = {"task": "regression", "targets": {"mean": [20.0, 50.0, 50.0], "std": [13.0, 29.0, 30.0]}}
    model.save_pretrained(tmp_path / "chirp_model")
    out = tmp_path / "report"
    args = [
        "--model",
        str(tmp_path / "chirp_model"),
        "--images",
        "chirps",
        "--n-images",
        "6",
        "--out",
        str(out),
        "--no-estimates",
        "--ablation",
        "mean",
    ]
    assert exp.main(args) == 0
    text = (out / "report.md").read_text()
    assert "generated chirp spectrograms" in text and "model card" in text
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["metric"]["metric"] == "mse" and sweep["ablation"]["ablation"] == "mean"
    # the head taxonomy of the same chirps beside the heatmap, joined with each head's effect
    assert (out / "taxonomy.png").exists() and "Head taxonomy" in text
    taxonomy = json.loads((out / "taxonomy.json").read_text())
    assert taxonomy["region_names"] == ["chirp", "colorbar", "text", "axis", "background"]
    assert sum(taxonomy["counts"].values()) == len(sweep["rows"])
    joined = (out / "taxonomy.csv").read_text().splitlines()
    assert len(joined) == 1 + len(sweep["rows"]) and "label" in joined[0] and "delta" in joined[0]
    assert (out / "top_layers.png").exists() and (out / "layer_ranking.csv").exists()


def test_experiment_fails_clearly_without_its_model_or_data(saved, capsys, tmp_path):
    exp = load_experiment()
    with pytest.raises(SystemExit, match="vitmech/mini-chirp-does-not-exist' is not in this installation"):
        exp.main(
            [
                "--model",
                "vitmech/mini-chirp-does-not-exist",
                "--images",
                str(saved / "images"),
                "--out",
                str(tmp_path / "a"),
            ]
        )
    with pytest.raises(SystemExit) as usage_error:
        exp.main(
            [
                "--model",
                str(saved / "model"),
                "--images",
                str(saved / "images"),
                "--metric",
                "mse",
                "--out",
                str(tmp_path / "b"),
            ]
        )
    assert usage_error.value.code == 2 and "needs targets" in capsys.readouterr().err


def test_plots_draw_the_results():
    model = tiny_model(seed=1)
    images = seeded_images(4, 32, seed=1)
    labels = torch.tensor([0, 1, 2, 3])
    result = head_sweep(model, images, "cross_entropy", targets=labels, progress=False)
    fig = plot_head_heatmap(result)
    drawn = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn), result.grid("pct_change"))
    assert len(fig.axes[0].texts) == 12
    figures = [
        fig,
        plot_layer_summary(result),
        plot_estimates_vs_exact(
            compare_estimates(result, estimate_head_effects(model, images, "cross_entropy", targets=labels))
        ),
        plot_pruning_curve(
            pruning_curve(model, images, "cross_entropy", targets=labels, steps=[0, 4, 8], progress=False)
        ),
        plot_pair_interactions(
            pair_interactions(model, images, "cross_entropy", targets=labels, layers=[0], progress=False), 0
        ),
    ]
    for figure in figures:
        assert isinstance(figure, matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="grid"):
        plot_head_heatmap(np.zeros(3))


def test_targets_follow_their_image_files_when_one_cannot_be_read(saved, tmp_path):
    from vitmech.data.sources import load_image_source

    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted((saved / "images").glob("*.png")):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "02.png").write_bytes(b"not a png")  # the third of six files
    values = np.arange(12, dtype=np.float32).reshape(6, 2) + 0.5
    np.save(tmp_path / "y.npy", values)
    source = load_image_source(folder, targets=str(tmp_path / "y.npy"), skip_unreadable=True)
    assert len(source) == 5 and source.targets.tolist() == values[[0, 1, 3, 4, 5]].tolist()
