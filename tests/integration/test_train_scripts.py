"""The training scripts end to end on small models and data: they run offline, save a model with a card
that loads by path, write their report, and refuse bad arguments. Plus the shipped models, when present."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.models import tiny_model
from tests.helpers.scripts import load_experiment as load_script
from vitmech import HookedViT
from vitmech.train import with_image_size

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_pretrained(tmp_path_factory) -> Path:
    """A 64 px, 3-layer model standing in for vitmech/mini-pretrained, saved by path."""
    model = with_image_size(tiny_model(0), 64)
    model.preprocessing = type(model.preprocessing)(
        image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash", crop_pct=1.0, interpolation="bilinear"
    )
    return model.save_pretrained(tmp_path_factory.mktemp("models") / "small")


def test_pretrain_script_runs_and_saves_a_loadable_model(tmp_path):
    from vitmech.cli import run_command

    out = tmp_path / "run" / "model"
    args = [
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--threads",
        "1",
        "--layers",
        "1",
        "--d-model",
        "24",
        "--stage1-images",
        "64",
        "--stage1-steps",
        "3",
        "--stage1-batch",
        "16",
        "--stage2-images",
        "16",
        "--stage2-steps",
        "2",
        "--stage2-batch",
        "8",
        "--test-images",
        "16",
    ]
    assert run_command("pretrain", args) == 0
    model = HookedViT.from_pretrained(str(out))
    assert model.cfg.n_heads == 12 and model.cfg.grid_size == 14 and model.cfg.n_classes == 32
    card = model.card
    assert (
        card["metrics"]["chance_uniform"] == pytest.approx(1 / 32)
        and 0 <= card["metrics"]["procedural_test_accuracy"] <= 1
    )
    assert {"source_model", "data", "tier", "recipe", "hardware", "train_seconds"} <= set(card)
    assert (tmp_path / "run" / "report.md").is_file()
    # a second run resumes from the finished checkpoints instead of training again
    assert run_command("pretrain", [*args, "--resume"]) == 0


def test_galaxy_script_full_tier_with_probe(tmp_path, small_pretrained):
    script = load_script("02_fine_tune_galaxy.py")
    out = tmp_path / "galaxy"
    assert (
        script.main(
            [
                "--model",
                str(small_pretrained),
                "--n-train",
                "24",
                "--n-val",
                "6",
                "--n-test",
                "12",
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--probe-steps",
                "5",
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
                "--save-model",
                str(out),
            ]
        )
        == 0
    )
    model = HookedViT.from_pretrained(str(out))
    assert model.cfg.n_classes == 6 and model.class_names[0] == "smooth_round"
    metrics = model.card["metrics"]
    assert metrics["split_sizes"] == {"train": 24, "val": 6, "test": 12, "probe_train": 24}
    assert metrics["margins"]["over_linear_probe"] == pytest.approx(
        metrics["test"]["accuracy"] - metrics["linear_probe_test"]["accuracy"]
    )
    assert metrics["baselines"]["uniform"] == pytest.approx(1 / 6)
    summary = (tmp_path / "run" / "summary.csv").read_text()
    assert "linear probe" in summary and "chance (uniform)" in summary


def test_galaxy_script_reads_a_local_gz2_copy(tmp_path, small_pretrained):
    from vitmech.data import make_gz2_fixture

    classes = [
        "smooth_round",
        "smooth_cigar",
        "unbarred_spiral",
        "edge_on_disk",
        "barred_spiral",
        "featured_without_bar_or_spiral",
    ]
    source = make_gz2_fixture(
        tmp_path / "gz2", train_summaries=(classes + ["smooth_inbetween", ""]) * 4, test_summaries=classes * 2
    )
    script = load_script("02_fine_tune_galaxy.py")
    assert (
        script.main(
            [
                "--model",
                str(small_pretrained),
                "--images",
                "gz2",
                "--gz2-source",
                str(source),
                "--tier",
                "lora",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--probe-steps",
                "0",
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
                "--save-model",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    card = json.loads((tmp_path / "m" / "config.json").read_text())["card"]
    assert card["tier"] == "lora" and card["metrics"]["split_sizes"]["test"] == 12
    assert card["data"]["loader_report"]["survived"]["train"] == 24  # smooth_inbetween and '' dropped


def test_chirp_script_lora_regressor(tmp_path, small_pretrained):
    script = load_script("09_fine_tune_chirp.py")
    out = tmp_path / "chirp"
    assert (
        script.main(
            [
                "--model",
                str(small_pretrained),
                "--n-train",
                "24",
                "--n-val",
                "4",
                "--n-test",
                "8",
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--probe-steps",
                "5",
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
                "--save-model",
                str(out),
            ]
        )
        == 0
    )
    model = HookedViT.from_pretrained(str(out))
    card = model.card
    assert model.cfg.n_classes == 3 and model.class_names == ["start_time", "start_freq", "end_freq"]
    assert card["task"] == "regression" and card["tier"] == "lora" and card["lora"]["config"]["targets"] == ["q", "v"]
    assert model.cfg.pool == "rowcol" and card["readout"] == "rowcol"  # the position-keeping head (default)
    assert card["metrics"]["linear_probe_fit"] == {"ridge_alpha": 0.05}  # the closed-form probe (LP-FT's start)
    assert set(card["metrics"]["test"]["pearson_r"]) == {"start_time", "start_freq", "end_freq"}
    assert len(card["targets"]["mean"]) == 3 and card["targets"]["units"] == ["s", "Hz", "Hz"]


def test_pretrain_takes_a_patch_size(tmp_path, capsys):
    """--patch-size 32 (how vitmech/mini-galaxy-p32's backbone was made): stage 1 on a 4 x 4 grid of 128 px
    images, position embeddings resampled to the 7 x 7 grid of 224 px; a stage-1 size the patch does not
    divide is refused naming both."""
    from vitmech.cli import run_command

    out = tmp_path / "run"
    args = ["--quick", "--no-progress", "--patch-size", "32", "--stage1-size", "128", "--out", str(out)]
    assert run_command("pretrain", args) == 0
    model = HookedViT.from_pretrained(str(out / "model"))
    assert (model.cfg.patch_size, model.cfg.grid_size, model.cfg.image_size) == (32, 7, 224)
    assert model.card["recipe"]["stage2"]["position_embeddings"] == "bicubic resample 4x4 -> 7x7"
    assert model.card["data"]["stage1"]["size"] == 128
    with pytest.raises(SystemExit) as exc:
        run_command("pretrain", ["--patch-size", "32", "--stage1-size", "112", "--out", str(tmp_path / "no")])
    assert exc.value.code == 2 and "multiple of the patch size 32" in capsys.readouterr().err


def test_scripts_refuse_bad_arguments(capsys):
    for name, args in (
        ("02_fine_tune_galaxy.py", ["--n-train", "0"]),
        ("09_fine_tune_chirp.py", ["--steps", "-1"]),
        ("02_fine_tune_galaxy.py", ["--tier", "half"]),
    ):
        with pytest.raises(SystemExit) as exc:
            load_script(name).main(args)
        assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err
    from vitmech.cli import run_command

    with pytest.raises(SystemExit) as exc:
        run_command("pretrain", ["--stage1-size", "100"])
    assert exc.value.code == 2


SHIPPED = ("vitmech/mini-pretrained", "vitmech/mini-galaxy", "vitmech/mini-chirp", "vitmech/mini-chirp-full")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_by_name_and_path_with_its_card(name):
    from vitmech.loading.registry import zoo_models

    zoo = zoo_models()
    assert name in zoo, f"{name} is shipped with the package (vitmech/zoo) but was not found"
    model = HookedViT.from_pretrained(name)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.grid_size) == (12, 12, 14)
    by_path = HookedViT.from_pretrained(str(zoo[name]))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), by_path.state_dict().values()))
    assert model.dtype == torch.float32
    card = model.card
    assert {"source_model", "data", "tier", "metrics", "hardware"} <= set(card)


def test_shipped_patch32_twin_differs_from_mini_galaxy_only_in_patch_size():
    """vitmech/mini-galaxy-p32: mini-galaxy's architecture with 32 px patches (7 x 7 grid), under 6 MB, its
    card's held-out accuracy on the same test split as mini-galaxy's, and above chance on fresh galaxies."""
    from vitmech.loading.registry import zoo_models
    from vitmech.train import evaluate
    from vitmech.train.datasets import galaxy_dataset

    zoo = zoo_models()
    if "vitmech/mini-galaxy-p32" not in zoo:
        pytest.skip("shipped patch-32 model not in this checkout")
    assert (zoo["vitmech/mini-galaxy-p32"] / "model.safetensors").stat().st_size <= 6 * 2**20
    twin, reference = (
        HookedViT.from_pretrained("vitmech/mini-galaxy-p32"),
        HookedViT.from_pretrained("vitmech/mini-galaxy"),
    )
    assert (twin.cfg.patch_size, twin.cfg.grid_size) == (32, 7)
    assert twin.cfg.replace(patch_size=16) == reference.cfg
    assert twin.class_names == reference.class_names
    metrics, same = twin.card["metrics"], reference.card["metrics"]
    assert metrics["split_sizes"] == same["split_sizes"] and metrics["test"]["n"] == same["test"]["n"]
    assert twin.card["data"] == reference.card["data"]
    assert metrics["test"]["accuracy"] > metrics["baselines"]["uniform"]
    fresh = galaxy_dataset(36, seed=777, progress=False)
    assert evaluate(twin, fresh).accuracy > 1 / 6 + 0.15


def test_shipped_galaxy_model_beats_its_probe_and_chance_on_fresh_galaxies():
    """Independent check of the card's claim on galaxies it never saw (another stream seed)."""
    from vitmech.loading.registry import zoo_models
    from vitmech.train import evaluate
    from vitmech.train.datasets import galaxy_dataset

    assert "vitmech/mini-galaxy" in zoo_models(), "the shipped galaxy model is missing from vitmech/zoo"
    model = HookedViT.from_pretrained("vitmech/mini-galaxy")
    card = model.card["metrics"]
    assert card["margins"]["over_linear_probe"] > 0 and card["margins"]["over_uniform_chance"] > 0
    fresh = galaxy_dataset(36, seed=777, progress=False)
    assert evaluate(model, fresh).accuracy > 1 / 6 + 0.15


def test_shipped_chirp_model_learns_all_three_targets_on_fresh_chirps():
    """Independent check of the card's claim (held-out r >= 0.8 on each target) on chirps from another part of
    the stream (indices from 2,000,000; training used 0..6,999), z-scored with the card's mean and std."""
    import numpy as np

    from vitmech.data.chirps import generate_chirps
    from vitmech.loading.registry import zoo_models
    from vitmech.train.evaluate import pearson_r

    assert "vitmech/mini-chirp" in zoo_models(), "the shipped chirp model is missing from vitmech/zoo"
    model = HookedViT.from_pretrained("vitmech/mini-chirp")
    card = model.card
    assert min(card["metrics"]["test"]["pearson_r"].values()) >= 0.8 and card["readout"] == model.cfg.pool
    samples = generate_chirps(64, 0, start=2_000_000, size=model.cfg.image_size)
    raw = np.asarray([s.targets for s in samples])
    targets = (raw - np.asarray(card["targets"]["mean"])) / np.asarray(card["targets"]["std"])
    with torch.no_grad():
        predictions = model(model.preprocess([s.image for s in samples])).numpy()
    assert (pearson_r(predictions, targets) > 0.7).all()  # 64 figures: r 0.8 has a standard error of about 0.05


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
