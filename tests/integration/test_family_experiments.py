"""Experiments 03-07 run unchanged on a small DINOv2-with-registers model (class token + 4 registers) and a
SigLIP vision tower (no class token, attention-pool head): HuggingFace models with seeded random weights,
saved with save_pretrained and passed to the scripts by path, on a folder of images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import transformers as T
from PIL import Image

from tests.helpers.scripts import load_experiment

SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
FAMILIES = {
    "dinov2_registers": (T.Dinov2WithRegistersConfig, T.Dinov2WithRegistersModel, {"num_register_tokens": 4}),
    "siglip": (T.SiglipVisionConfig, T.SiglipVisionModel, {}),
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """Two seeds of one family (a 'before' and an 'after') and five images."""
    import torch

    config_cls, model_cls, extra = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    for name, seed in (("before", 0), ("after", 1)):
        torch.manual_seed(seed)
        model = model_cls(config_cls(**SMALL, **extra)).eval()
        with torch.no_grad():  # peaked attention: scale the query/key weights up
            for param_name, param in model.named_parameters():
                if any(k in param_name for k in ("query.weight", "key.weight", "q_proj.weight", "k_proj.weight")):
                    param.mul_(4.0)
        model.save_pretrained(root / name)
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return request.param, root


def test_experiments_03_to_07_run_on_the_family(saved):
    family, root = saved
    models = ["--models", str(root / "before"), str(root / "after")]
    common = ["--images", str(root / "images"), "--no-progress"]

    assert load_experiment("03_spatial_attention").main([*models, *common, "--out", str(root / "r03")]) == 0
    assert len(read_csv(root / "r03" / "heads.csv")) == 2 * 2 * 2  # layers x heads x models

    out04 = root / "r04"
    assert load_experiment("04_cls_attention").main([*models, *common, "--top-k", "4", "--out", str(out04)]) == 0
    by_layer = read_csv(next(out04.glob("by_layer_*before.csv")))
    assert len(by_layer) == 2 and float(by_layer[0]["cls_top4_mean"]) > 0

    out05 = root / "r05"
    assert load_experiment("05_attention_rollout").main([*models, *common, "--out", str(out05)]) == 0
    rows = read_csv(out05 / "rollout_vs_last_layer.csv")
    assert len(rows) == 2 and all(0 < float(r["rollout_entropy"]) <= np.log(16) + 1e-6 for r in rows)

    out06 = root / "r06"
    pair = ["--pretrained", str(root / "before"), "--finetuned", str(root / "after")]
    assert (
        load_experiment("06_before_after_comparison").main([*pair, *common, "--top-k", "4", "--out", str(out06)]) == 0
    )
    comparison = json.loads((out06 / "comparison.json").read_text())
    readout = "class token" if family == "dinov2_registers" else "mean over patches"
    assert comparison["readout"] == readout
    labels = [row["metric"] for row in read_csv(out06 / "summary.csv")]
    assert labels[0].startswith("CLS" if family == "dinov2_registers" else "Readout (mean over patches)")

    out07 = root / "r07"
    args07 = ["--model", str(root / "before"), "--images", str(root / "images"), "--out", str(out07)]
    assert load_experiment("07_head_ablation_heatmap").main([*args07, "--batch-size", "5", "--no-estimates"]) == 0
    assert len(read_csv(out07 / "all_heads.csv")) == 2 * 2
