"""Load-time checks on inputs: labels against the head, targets against the images, devices, cache sizes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import vitmech
from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.scripts import load_experiment
from vitmech.analysis.ablation import MetricError, head_sweep
from vitmech.data.sources import load_image_source
from vitmech.data.targets import TargetsFileError, check_targets_fit, read_targets
from vitmech.errors import CacheBudgetError, ImageInputError
from vitmech.memory import estimate_cache_bytes, hook_numel
from vitmech.model.hooked_vit import _all_but_head_results


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1, n_classes=6)


@pytest.mark.parametrize("metric", ["cross_entropy", "accuracy", "class_logit", "logit_diff"])
def test_a_label_outside_the_head_is_named(model, metric):
    images = seeded_images(4, 32)
    with pytest.raises(MetricError, match=r"outside the model's 6 classes \(valid 0..5\): \[9\]"):
        head_sweep(model, images, metric, targets=torch.tensor([0, 1, 9, 2]), layers=[0], progress=False)


def test_targets_files_are_checked_both_ways(tmp_path):
    np.save(tmp_path / "more.npy", np.arange(7) % 3)
    np.save(tmp_path / "fewer.npy", np.arange(5) % 3)
    with pytest.raises(TargetsFileError, match=r"7 rows for 6 image files \(more rows"):
        read_targets(tmp_path / "more.npy", n_images=6)
    with pytest.raises(TargetsFileError, match=r"5 rows for 6 image files \(fewer rows"):
        read_targets(tmp_path / "fewer.npy", n_images=6)
    assert read_targets(tmp_path / "more.npy", n_images=7, rows=[0, 2]).tolist() == [0, 2]


def test_a_text_cell_names_file_line_and_column(tmp_path):
    (tmp_path / "y.csv").write_text("0.5,1\n1.5,abc\n")
    with pytest.raises(TargetsFileError, match=r"y\.csv line 2, column 2: 'abc' is not a number") as info:
        read_targets(tmp_path / "y.csv", n_images=2)
    assert info.value.line == 2 and info.value.path == tmp_path / "y.csv"


def test_labels_beyond_the_head_in_a_file_are_named(tmp_path):
    np.save(tmp_path / "y.npy", np.array([0, 5, 9]))
    with pytest.raises(TargetsFileError, match=r"labels \[9\] \(at rows \[2\]\) are outside the model's 6 classes"):
        read_targets(tmp_path / "y.npy", n_images=3, kind="labels", n_classes=6)
    with pytest.raises(vitmech.data.DataError, match="outside the model's 6 classes"):
        check_targets_fit(torch.tensor([0, 6]), 2, 6)
    with pytest.raises(vitmech.data.DataError, match="3 rows for 2 images"):
        check_targets_fit(torch.zeros(3), 2, None)


def test_experiment_07_refuses_a_targets_file_with_more_rows_than_images(tmp_path):
    tiny_model(seed=2, n_classes=3).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
    np.save(tmp_path / "y.npy", rng.normal(size=(8, 3)).astype(np.float32))  # 8 rows, 6 images
    with pytest.raises(TargetsFileError, match=r"8 rows for 6 image files \(more rows"):
        load_image_source(tmp_path / "images", targets=str(tmp_path / "y.npy"))
    with pytest.raises(TargetsFileError, match=r"8 rows for 6 image files"):  # also when only 4 are read
        load_image_source(tmp_path / "images", limit=4, targets=str(tmp_path / "y.npy"))
    np.save(tmp_path / "y6.npy", rng.normal(size=(6, 3)).astype(np.float32))
    assert load_image_source(tmp_path / "images", limit=4, targets=str(tmp_path / "y6.npy")).targets.shape == (4, 3)
    exp = load_experiment("07_head_ablation_heatmap.py")
    args = ["--model", str(tmp_path / "model"), "--images", str(tmp_path / "images"), "--targets"]
    with pytest.raises(SystemExit, match=r"8 rows for 6 image files"):
        exp.main([*args, str(tmp_path / "y.npy"), "--out", str(tmp_path / "out"), "--no-estimates"])


def test_images_on_another_device_name_both_devices_and_the_fix(model):
    images = torch.empty(2, 3, 32, 32, device="meta")
    with pytest.raises(
        ImageInputError, match=r"images are on meta but the model is on cpu.*images\.to\(model\.device\)"
    ):
        model(images)


def test_the_cache_estimate_matches_the_cache(model):
    images = seeded_images(3, 32)
    with torch.no_grad():
        _, cache = model.run_with_cache(images)
    held = sum(v.numel() * v.element_size() for v in cache.values())
    assert estimate_cache_bytes(model, 3, _all_but_head_results) == held
    assert hook_numel(model, "blocks.0.attn.hook_pattern", 3) == 3 * 4 * 17 * 17
    for switch in ("set_use_split_qkv_input", "set_use_attn_in", "set_use_hook_mlp_in"):
        switched = tiny_model(seed=1, n_classes=6)
        getattr(switched, switch)(True)
        with torch.no_grad():
            _, cache = switched.run_with_cache(images)
        held = sum(v.numel() * v.element_size() for v in cache.values())
        assert estimate_cache_bytes(switched, 3, _all_but_head_results) == held, switch


def test_vit_b16_at_batch_64_is_estimated_at_11_and_16_gib():
    big = vitmech.HookedViT(
        vitmech.ViTConfig(
            n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, image_size=224, patch_size=16, n_classes=1000
        ),
        initialize=False,
    )
    assert estimate_cache_bytes(big, 64, _all_but_head_results) / 2**30 == pytest.approx(11.03, abs=0.01)
    assert estimate_cache_bytes(big, 64) / 2**30 == pytest.approx(16.23, abs=0.01)


def test_a_cache_above_the_budget_is_refused_with_advice(model, caplog):
    images = seeded_images(8, 32)
    needed = estimate_cache_bytes(model, 8, _all_but_head_results)
    vitmech.set_cache_budget(needed - 1)
    try:
        with pytest.raises(CacheBudgetError, match=r"names_filter.*smaller batch.*at most 7 images.*stream"):
            model.run_with_cache(images)
        with torch.no_grad():
            _, cache = model.run_with_cache(images, names_filter=["blocks.0.hook_resid_post"])  # fits
        assert list(cache.keys()) == ["blocks.0.hook_resid_post"]
    finally:
        vitmech.set_cache_budget(None)
    with pytest.raises(CacheBudgetError, match="the cache_budget argument"):
        model.run_with_cache(images, cache_budget=1000)
    import vitmech.memory as memory

    old = memory.LOG_THRESHOLD_BYTES
    memory.LOG_THRESHOLD_BYTES = 1000
    try:
        with caplog.at_level(logging.WARNING), torch.no_grad():
            model.run_with_cache(images)
    finally:
        memory.LOG_THRESHOLD_BYTES = old
    assert "caching about" in caplog.text
