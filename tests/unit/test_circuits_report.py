"""Experiment 08 on small locally saved models, and the circuit figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.scripts import load_experiment
from vitmech.analysis.attribution import direct_logit_attribution, logit_lens
from vitmech.analysis.circuits import composition_scores, positional_qk
from vitmech.viz.circuits import (
    plot_composition,
    plot_head_change,
    plot_head_dla,
    plot_locality,
    plot_logit_lens,
    plot_positional_grids,
)

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "08_circuits_report.py"


def load_script():
    return load_experiment("08_circuits_report.py")


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    pretrained = tiny_model(seed=0, n_layers=2, n_classes=5)
    finetuned = tiny_model(seed=1, n_layers=2, n_classes=3)
    finetuned.class_names = ["round", "cigar", "edge"]
    return pretrained.save_pretrained(root / "pre"), finetuned.save_pretrained(root / "ft")


def test_report_for_a_model_and_its_fine_tuned_twin(saved_pair, tmp_path):
    pre, ft = saved_pair
    out = tmp_path / "report"
    assert (
        load_script().main(
            ["--model", str(pre), "--finetuned", str(ft), "--synthetic-galaxies", "3", "--out", str(out)]
        )
        == 0
    )
    files = set(json.loads((out / "index.json").read_text())["files"])
    for name in (
        "positional_grids_pretrained.png",
        "positional_grids_finetuned.png",
        "locality.png",
        "locality_by_head.csv",
        "composition_top_pretrained.csv",
        "composition_K_finetuned.png",
        "dla_heads.png",
        "dla_top_finetuned.csv",
        "logit_lens.png",
        "logit_lens_pretrained.csv",
        "locality_change.png",
        "composition_changes.csv",
        "dla_change.png",
        "copying_change.png",
        "ov_copying_pretrained.csv",
        "settings.json",
    ):
        assert name in files and (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    assert "## Changes with fine-tuning" in text and "3 synthetic galaxies" in text
    assert "max |sum of components - logit|" in text
    errors = [
        float(line.split("= ")[1].split(";")[0])
        for line in text.splitlines()
        if "max |sum of components - logit|" in line
    ]
    assert len(errors) == 2 and max(errors) < 1e-4


def test_report_for_one_model_from_an_image_folder(saved_pair, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()).save(
            folder / f"{i}.png"
        )
    out = tmp_path / "one"
    main = load_script().main
    assert (
        main(
            [
                "--model",
                str(saved_pair[0]),
                "--finetuned",
                "none",
                "--images",
                str(folder),
                "--query",
                "1,2",
                "--positional-mode",
                "raw",
                "--no-baseline",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = (out / "report.md").read_text()
    assert "Changes with fine-tuning" not in text and f"2 images from {folder}" in text


def test_missing_models_fail_clearly(tmp_path):
    main = load_script().main
    with pytest.raises(SystemExit, match="vitmech/not-shipped' is not in this installation"):
        main(["--model", "vitmech/not-shipped", "--finetuned", "none", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="cannot load model '.*nowhere'"):
        main(["--model", str(tmp_path / "nowhere"), "--finetuned", "none", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="at least 1"):
        main(["--n-images", "0", "--finetuned", "none", "--out", str(tmp_path / "x")])


def test_figures_have_one_panel_per_head_or_model():
    model = tiny_model(n_layers=2)
    images = seeded_images(2, 32)
    pqk = positional_qk(model)
    fig = plot_positional_grids(pqk, query=(1, 1))
    assert len(fig.axes) == 2 * 4
    assert len(plot_positional_grids(pqk, layers=[1], heads=[0, 2]).axes) == 2
    loc = {"a": pqk.locality(), "b": pqk.locality()}
    assert len(plot_locality(loc).axes) == 1
    assert len(plot_locality(loc, {"a": torch.rand(2, 4)}).axes) == 2
    comp = composition_scores(model, subtract_baseline=True, n_baseline_samples=4)
    assert len(plot_composition(comp, "Q").axes) == 2  # heatmap + colour bar
    dla = direct_logit_attribution(model, images)
    fig = plot_head_dla({"a": dla, "b": dla}, image=1)
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 2 * 4
    assert len(plot_logit_lens({"a": logit_lens(model, images)}).axes) == 2
    assert len(plot_head_change(torch.rand(2, 4), torch.rand(2, 4), "x").axes) == 6


def test_weight_processing_that_changes_the_logits_stops_the_report(saved_pair, tmp_path, monkeypatch):
    import vitmech.weight_processing

    script = load_script()
    real = vitmech.weight_processing.process_weights

    def broken(model):
        processed = real(model)
        with torch.no_grad():
            processed.head.b_H.add_(1.0)  # not a function-preserving edit
        return processed

    monkeypatch.setattr(vitmech.weight_processing, "process_weights", broken)
    with pytest.raises(SystemExit, match="weight processing changed"):
        script.main(["--model", str(saved_pair[0]), "--synthetic-galaxies", "2", "--out", str(tmp_path / "r")])
