"""Experiment scripts 03-06 end to end on small saved models and an image folder; their numbers equal the
library's on the same images; bad arguments exit with a clear message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.models import randomize_hooked_, tiny_model
from tests.helpers.scripts import load_experiment
from vitmech import HookedViT
from vitmech.analysis.attention import AttentionSettings
from vitmech.analysis.compare import compare_models
from vitmech.loading import registry
from vitmech.loading.registry import zoo_models

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def script(name: str):
    return load_experiment(name)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention_scripts")
    tiny_model(seed=0).save_pretrained(root / "before")
    tiny_model(seed=1).save_pretrained(root / "after")
    tiny_model(seed=2, n_layers=2).save_pretrained(root / "shallow")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_06_writes_seed_000_table_equal_to_the_library(setup, capsys):
    out = setup / "r06"
    code = script("06_before_after_comparison").main(
        [
            "--pretrained",
            str(setup / "before"),
            "--finetuned",
            str(setup / "after"),
            "--images",
            str(setup / "images"),
            "--top-k",
            "3",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    summary = read_csv(out / "summary.csv")
    assert [r["metric"] for r in summary][:2] == [
        "CLS attention entropy, last layer (head-mean map)",
        "CLS attention entropy, last layer (mean of per-head)",
    ]
    assert any(r["metric"] == "Rollout CLS entropy" for r in summary)
    # the same numbers from Python: raw images preprocessed by each model
    images = []
    for f in sorted((setup / "images").iterdir()):
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    before, after = HookedViT.from_pretrained(str(setup / "before")), HookedViT.from_pretrained(str(setup / "after"))
    expected = compare_models(before, after, images, settings=AttentionSettings(k=3), progress=False).summary_table()
    for row, (_, ref) in zip(summary, expected.iterrows()):
        for column in ("before", "after", "change", "p"):
            assert float(row[column]) == pytest.approx(ref[column], rel=1e-5, abs=1e-7)
    assert len(read_csv(out / "heads.csv")) == 12 and len(read_csv(out / "locality.csv")) == 3
    assert len(read_csv(out / "cka.csv")) == 4
    for figure in (
        "heads_before",
        "layer_progression",
        "rollout_vs_last_layer",
        "by_layer_mean_distance",
        "qk_change_per_head",
    ):
        assert (out / f"{figure}.png").stat().st_size > 1000
    assert "Before/after table" in (out / "report.md").read_text()
    assert json.loads((out / "comparison.json").read_text())["names"] == ["before", "after"]
    assert "CLS attention entropy" in capsys.readouterr().out


def test_03_04_05_write_their_reports(setup):
    models = ["--models", str(setup / "before"), str(setup / "after")]
    common = ["--images", str(setup / "images"), "--no-progress"]
    assert script("03_spatial_attention").main([*models, *common, "--out", str(setup / "r03")]) == 0
    assert len(read_csv(setup / "r03" / "locality_change.csv")) == 3
    assert len(read_csv(setup / "r03" / "heads.csv")) == 24
    assert script("04_cls_attention").main([*models, *common, "--top-k", "4", "--out", str(setup / "r04")]) == 0
    by_layer = read_csv(next((setup / "r04").glob("by_layer_*before.csv")))
    assert len(by_layer) == 3 and "cls_top4_mean" in by_layer[0]
    assert (
        script("05_attention_rollout").main([*models, *common, "--gradient-images", "2", "--out", str(setup / "r05")])
        == 0
    )
    rows = read_csv(setup / "r05" / "rollout_vs_last_layer.csv")
    assert len(rows) == 2 and float(rows[0]["rollout (mean) entropy"]) == pytest.approx(
        float(rows[0]["rollout_entropy"])
    )
    family = read_csv(next((setup / "r05").glob("family_*after.csv")))
    assert [r["method"] for r in family] == ["gradient rollout", "GMAR (L1)", "attention flow"]
    assert float(family[-1]["seconds_per_image"]) > 0


def test_bad_arguments_exit_with_a_clear_message(setup, monkeypatch, capsys, tmp_path):
    s06 = script("06_before_after_comparison")
    with monkeypatch.context() as without_zoo:  # an installation without the shipped models
        without_zoo.setattr(registry, "ZOO_DIR", tmp_path / "no_zoo")
        assert zoo_models() == {}
        with pytest.raises(SystemExit, match="'vitmech/mini-pretrained' is not in this installation"):
            s06.main(["--images", str(setup / "images"), "--out", str(setup / "bad")])
    with pytest.raises(SystemExit, match="n_layers: 3 vs 2"):
        s06.main(
            [
                "--pretrained",
                str(setup / "before"),
                "--finetuned",
                str(setup / "shallow"),
                "--images",
                str(setup / "images"),
                "--out",
                str(setup / "bad"),
                "--no-progress",
            ]
        )
    with pytest.raises(SystemExit, match="n_layers"):
        script("03_spatial_attention").main(
            [
                "--models",
                str(setup / "before"),
                str(setup / "shallow"),
                "--images",
                str(setup / "images"),
                "--out",
                str(setup / "bad"),
            ]
        )
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage_error:
        script("05_attention_rollout").main(
            [
                "--models",
                str(setup / "before"),
                "--discard-ratio",
                "1.5",
                "--images",
                str(setup / "images"),
                "--out",
                str(setup / "bad"),
            ]
        )
    assert usage_error.value.code == 2 and "discard_ratio must be in [0, 1), got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="at least 2"):
        s06.main(
            [
                "--pretrained",
                str(setup / "before"),
                "--finetuned",
                str(setup / "after"),
                "--synthetic-galaxies",
                "1",
                "--out",
                str(setup / "bad"),
            ]
        )
    with pytest.raises(SystemExit, match="--n-images must be at least 2"):  # one image from a folder
        s06.main(
            [
                "--pretrained",
                str(setup / "before"),
                "--finetuned",
                str(setup / "after"),
                "--images",
                str(setup / "images"),
                "--limit",
                "1",
                "--out",
                str(setup / "bad"),
            ]
        )


def test_scripts_skip_unreadable_image_files(setup, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted((setup / "images").glob("*.png")):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "9.png").write_bytes(b"truncated")
    out = tmp_path / "r06"
    assert (
        script("06_before_after_comparison").main(
            [
                "--pretrained",
                str(setup / "before"),
                "--finetuned",
                str(setup / "after"),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "5 images from" in (out / "report.md").read_text()


def test_synthetic_galaxies_feed_the_scripts(setup):
    out = setup / "r04_galaxies"
    assert (
        script("04_cls_attention").main(
            ["--models", str(setup / "before"), "--synthetic-galaxies", "3", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    assert "3 synthetic galaxies" in (out / "report.md").read_text()


@pytest.mark.slow
def test_06_runs_on_two_vit_b16_sized_models(tmp_path):
    """Done-when: the comparison on two ViT-B/16-sized models (random weights; 2 images)."""
    import timm

    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=6)
    before = HookedViT.from_timm(source)
    before.save_pretrained(tmp_path / "before")
    randomize_hooked_(before, seed=1)
    before.save_pretrained(tmp_path / "after")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with torch.no_grad():
        code = script("06_before_after_comparison").main(
            [
                "--pretrained",
                str(tmp_path / "before"),
                "--finetuned",
                str(tmp_path / "after"),
                "--images",
                str(folder),
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "r06"),
                "--no-progress",
            ]
        )
    assert code == 0
    summary = read_csv(tmp_path / "r06" / "summary.csv")
    assert len(summary) == 6 and float(summary[0]["before"]) <= np.log(196) + 1e-4
    assert len(read_csv(tmp_path / "r06" / "heads.csv")) == 144
