"""Experiment 11 end to end: --quick on the shipped model (offline), and the study's cache and statistics on a
tiny saved model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.models import tiny_config
from tests.helpers.scripts import load_experiment
from vitmech import HookedViT
from vitmech.analysis.alignment import RegionMasks
from vitmech.analysis.stats import paired_comparison
from vitmech.data.chirps import generate_chirps
from vitmech.loading.registry import zoo_models
from vitmech.studies.alignment import (
    AlignmentStudyConfig,
    chirp_data,
    fine_tuned_model,
    galaxy_data,
    run_alignment_study,
)


def test_quick_run_writes_the_report(tmp_path, capsys) -> None:
    assert "vitmech/mini-pretrained" in zoo_models(), "the shipped model is missing from vitmech/zoo"
    out = tmp_path / "report"
    assert load_experiment("11_attention_alignment").main(["--quick", "--no-progress", "--out", str(out)]) == 0
    for name in (
        "report.md",
        "comparisons.csv",
        "comparisons_supervised.csv",
        "accuracy.csv",
        "by_region.csv",
        "by_layer.csv",
        "by_head.csv",
        "settings.json",
        "delta_iou_last_layer_mean.png",
        "iou_by_layer.png",
        "head_delta_vitmech__mini-pretrained.png",
        "overlay_vitmech__mini-pretrained.png",
    ):
        assert (out / name).is_file(), name
    rows = json.loads((out / "comparisons.json").read_text())
    assert {(r["tier"], r["map"]) for r in rows} == {
        (t, m) for t in ("linear_probe", "lora", "full", "attention_supervised") for m in ("last_layer_mean", "rollout")
    }
    probe = [r for r in rows if r["tier"] == "linear_probe"]
    assert all(r["delta_iou"] == 0 for r in probe)  # a frozen backbone keeps its attention
    assert "report:" in capsys.readouterr().out


@pytest.mark.skipif("vitmech/mini-chirp" not in zoo_models(), reason="shipped model not in this checkout")
def test_quick_chirp_run_then_resume_reuses_every_fine_tune(tmp_path) -> None:
    out = tmp_path / "chirps"
    argv = [
        "--quick",
        "--data",
        "chirps",
        "--tiers",
        "full",
        "attention_supervised",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert load_experiment("11_attention_alignment").main(argv) == 0
    rows = json.loads((out / "comparisons.json").read_text())
    assert {r["model"] for r in rows} == {"vitmech/mini-chirp"} and {r["region"] for r in rows} == {"chirp"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["data"] == "chirps" and settings["supervision"]["region"] == "chirp"
    first = (out / "accuracy.csv").read_text()
    assert "mean Pearson r" in first and "True" not in first  # nothing reused the first time
    done = sorted(p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/done.json"))
    assert len(done) == 2

    assert load_experiment("11_attention_alignment").main([*argv, "--resume"]) == 0
    again = (out / "accuracy.csv").read_text()
    assert again.count("True") == 2  # both fine-tuned models were loaded, not retrained
    assert sorted(p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/done.json")) == done
    assert json.loads((out / "comparisons.json").read_text()) == rows


def test_chirp_data_masks_and_z_scored_targets() -> None:
    train, train_regions, scaler = chirp_data(6, 0, ("chirp", "text"), 64)
    held_out, _, same = chirp_data(3, 1, ("chirp", "text"), 64, scaler)
    assert same is scaler and train.task == "regression" and list(train.targets.shape) == [6, 3]
    assert np.allclose(train.targets.numpy().mean(0), 0, atol=1e-5)  # z-scored with the training set's own scale
    samples = generate_chirps(6, 0, size=64)
    assert np.array_equal(train.images.numpy(), np.stack([s.image for s in samples]))
    expected = RegionMasks.from_chirps(samples, {"chirp": ("chirp",), "text": ("title", "xlabel")})
    assert train_regions.names == ("chirp", "text")
    assert np.array_equal(train_regions.masks[:, 0].numpy(), expected.masks[:, 0].numpy())
    assert train_regions.masks[:, 1].sum() >= expected.masks[:, 1].sum()  # text also has tick labels etc.
    raw = np.asarray([s.targets for s in generate_chirps(3, 1, size=64)])
    assert np.allclose(held_out.targets.numpy(), scaler.transform(raw), atol=1e-5)


def test_chirp_config_defaults_and_errors() -> None:
    chirps = AlignmentStudyConfig(data="chirps")
    assert chirps.regions == ("chirp", "text", "axis", "colorbar") and chirps.target == "chirp"
    assert chirps.supervision.region == "chirp"  # the supervised region follows the target
    galaxies = AlignmentStudyConfig()
    assert galaxies.target == "union" and "data" not in galaxies.run_key()
    assert chirps.run_key()["data"] == "chirps"  # a chirp run never reuses a galaxy run
    with pytest.raises(ValueError, match="unknown data"):
        AlignmentStudyConfig(data="cats")
    with pytest.raises(ValueError, match="target 'union'"):
        AlignmentStudyConfig(data="chirps", target="union")
    with pytest.raises(ValueError, match="unknown chirps regions"):
        AlignmentStudyConfig(data="chirps", regions=("bar",))


def test_study_statistics_and_cached_runs(tmp_path) -> None:
    model = HookedViT(tiny_config(n_layers=2, n_heads=2, n_classes=3))
    model.init_weights(0)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    config = AlignmentStudyConfig(
        models=(str(path),), tiers=("linear_probe", "full"), n_train=12, n_eval=6, steps=2, batch_size=4
    )
    study = run_alignment_study(config, tmp_path / "runs", progress=False)
    assert len(study.comparisons) == 4 and not study.accuracy["reused_run"].any()
    before = next(s for s in study.states if s.tier == "before")
    after = next(s for s in study.states if s.tier == "full")
    x = before.scores["rollout"].per_image("iou", "union").numpy()
    y = after.scores["rollout"].per_image("iou", "union").numpy()
    keep = ~np.isnan(x)
    expected = paired_comparison(x[keep], y[keep], n_resamples=config.n_resamples)
    row = study.comparisons.set_index(["tier", "map"]).loc[("full", "rollout")]
    assert row["p"] == pytest.approx(expected.p) and row["ci_low"] == pytest.approx(expected.ci_low)
    assert row["cohens_dz"] == pytest.approx(expected.cohens_dz)
    assert (study.comparisons["p_holm"] >= study.comparisons["p"]).all()

    again = run_alignment_study(config, tmp_path / "runs", progress=False)  # finished runs are reused
    assert again.accuracy["reused_run"].all()
    assert np.allclose(again.comparisons["iou_after"], study.comparisons["iou_after"])

    train, regions = galaxy_data(12, 0, config.regions, 32)
    changed = AlignmentStudyConfig(**{**config.__dict__, "steps": 3})  # a different budget is a different run
    _, reused = fine_tuned_model(str(path), model, "full", train, regions, changed, tmp_path / "runs", progress=False)
    assert not reused
    steps = sorted(json.loads(p.read_text())["key"]["steps"] for p in (tmp_path / "runs").glob("*/full-*/done.json"))
    assert steps == [2, 3]
