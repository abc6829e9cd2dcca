"""Reduced precision is opt-in, and its error against float32 stays within the bounds of
docs/performance.md#reduced-precision (bf16 autocast on the CPU, tiny random models, 4 seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis import streaming
from vitmech.device import default_device, forward_precision, resolve_device
from vitmech.errors import RuntimeSettingError

# The documented bounds (about 3x the largest error measured over seeds 0-3).
BOUNDS = {
    "cls_entropy_mean": 0.01,  # nats
    "cls_top10_mean": 0.002,  # fraction of the CLS attention
    "mean_distance_mean": 0.015,  # pixels (patch size 8)
    "sweep_ablated": 0.03,  # nats of cross-entropy, per cell
    "logits_relative": 0.03,  # max |logit error| / max |logit|
}


@pytest.mark.parametrize("seed", [0, 3])
def test_bf16_error_stays_within_the_documented_bounds(seed):
    model, images = tiny_model(seed), seeded_images(16, 32, seed=seed)
    labels = torch.arange(16) % 5
    frames = {
        p: streaming.stream_attention_metrics(model, images, batch_size=8, precision=p, progress=False).to_frame()
        for p in ("fp32", "bf16")
    }
    for column in ("cls_entropy_mean", "cls_top10_mean", "mean_distance_mean"):
        error = float((frames["fp32"][column] - frames["bf16"][column]).abs().max())
        assert 0 < error <= BOUNDS[column], (column, error)  # > 0: bf16 really ran
    sweeps = {
        p: streaming.stream_head_sweep(
            model, images, "cross_entropy", targets=labels, batch_size=8, precision=p, progress=False
        )
        for p in ("fp32", "bf16")
    }
    assert 0 < np.abs(sweeps["fp32"].ablated - sweeps["bf16"].ablated).max() <= BOUNDS["sweep_ablated"]
    with torch.no_grad():
        reference = model(images)
        with forward_precision("bf16", model.device):
            reduced = model(images)
    assert reduced.dtype == torch.bfloat16
    relative = float((reference - reduced.float()).abs().max() / reference.abs().max())
    assert relative <= BOUNDS["logits_relative"]


def test_fp32_is_the_default_and_changes_nothing(tiny_vit):
    model, images = tiny_vit, seeded_images(4, 32)
    with torch.no_grad(), forward_precision("fp32", "cpu"):
        assert torch.equal(model(images), model(images))
    with pytest.raises(RuntimeSettingError, match="precision must be one of"):
        streaming.stream_attention_metrics(model, images, precision="int8", progress=False)
    with pytest.raises(RuntimeSettingError, match="needs a GPU"), forward_precision("fp16", "cpu"):
        pass


def test_devices_resolve_with_clear_errors():
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == default_device() and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeSettingError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeSettingError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_analyses_move_cpu_inputs_to_the_model_device():
    from vitmech.analysis.ablation import estimate_head_effects, head_sweep
    from vitmech.analysis.attention import collect_patterns
    from vitmech.analysis.attribution import direct_logit_attribution

    model, images = tiny_model(0).to("cuda"), seeded_images(4, 32)
    labels = torch.arange(4) % 5
    assert collect_patterns(model, images, progress=False).device.type == "cuda"
    direct_logit_attribution(model, images)
    sweep = head_sweep(model, images, "cross_entropy", targets=labels, progress=False)
    cpu = head_sweep(tiny_model(0), images, "cross_entropy", targets=labels, progress=False)
    np.testing.assert_allclose(sweep.ablated, cpu.ablated, rtol=0, atol=1e-4)
    estimate_head_effects(model, images, "cross_entropy", targets=labels)
    streamed = streaming.stream_attention_metrics(model, images, precision="fp16", progress=False)
    assert streamed.n_images == 4
