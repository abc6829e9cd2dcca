"""The exact ablation engine on every family: head_sweep equals the naive loop (one hooked forward per head)
within 1e-4, for models with registers, a distillation head, LayerScale, SwiGLU, qk-norm, attention and
average pooling, no class token, a projection, and rotary embeddings (EVA-02, DINOv3 from timm and HF); models without a classifier are scored by a metric on
their features."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import transformers as T

from tests.families._check import randomized
from tests.helpers.models import seeded_images
from vitmech import HookedViT
from vitmech.analysis.ablation import feature_direction, head_sweep, metric_from_function, naive_head_sweep

TOL = 1e-4
TINY = dict(pretrained=False, embed_dim=32, depth=2, num_heads=2)


def timm_port(name, **kwargs):
    return HookedViT.from_timm(randomized(timm.create_model(name, **{**TINY, **kwargs})))


def hf_port(config_cls, model_cls, **kwargs):
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return HookedViT.from_hf(randomized(model_cls(config_cls(**{**base, **kwargs}))))


MODELS = {
    "dinov2_reg4": lambda: timm_port("vit_small_patch14_reg4_dinov2", img_size=28),
    "dinov2_swiglu": lambda: timm_port("vit_giant_patch14_dinov2", img_size=28),
    "deit_distilled": lambda: timm_port("deit_tiny_distilled_patch16_224", img_size=32, num_classes=5),
    "deit3": lambda: timm_port("deit3_small_patch16_224", img_size=32, num_classes=5),
    "siglip_map": lambda: timm_port("vit_base_patch16_siglip_224", img_size=32, num_classes=0),
    "gap_fc_norm": lambda: timm_port(
        "vit_base_patch16_224", img_size=32, global_pool="avg", fc_norm=True, num_classes=5
    ),
    "eva02_rotary_mlp_norm": lambda: timm_port("eva02_base_patch14_224", img_size=28, num_classes=5),
    "dinov3_rotary": lambda: timm_port("vit_small_patch16_dinov3", img_size=32, num_classes=0),
    "qk_norm": lambda: timm_port("vit_base_patch16_224", img_size=32, qk_norm=True, num_classes=5),
    "hf_dinov2_registers": lambda: hf_port(
        T.Dinov2WithRegistersConfig, T.Dinov2WithRegistersModel, image_size=28, patch_size=14, num_register_tokens=2
    ),
    "hf_dinov3_rotary": lambda: hf_port(
        T.DINOv3ViTConfig, T.DINOv3ViTModel, image_size=32, patch_size=8, num_register_tokens=2, use_gated_mlp=True
    ),
    "hf_clip_projection": lambda: hf_port(
        T.CLIPVisionConfig, T.CLIPVisionModelWithProjection, image_size=28, patch_size=14, projection_dim=16
    ),
}


def drift(output: str):
    return metric_from_function(
        lambda out, clean: (out - clean).pow(2).mean(-1), name=f"{output}_drift", output=output, needs_clean=True
    )


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("ablation", ["zero", "uniform_attention"])
def test_exact_head_sweep_equals_naive_loop(family, ablation):
    model = MODELS[family]()
    cfg = model.cfg
    images = seeded_images(4, cfg.image_size, seed=7)
    if cfg.has_classifier:
        metric, kwargs = "cross_entropy", dict(targets=torch.arange(4) % cfg.n_classes)
    elif cfg.projection_dim:
        metric, kwargs = drift("embeddings"), {}
    else:
        metric, kwargs = drift("features"), {}
    exact = head_sweep(model, images, metric, ablation, batch_size=2, max_batch=4, progress=False, **kwargs)
    naive = naive_head_sweep(model, images, metric, ablation, batch_size=2, progress=False, **kwargs)
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)
    assert np.abs(exact.delta).max() > 1e-3  # heads matter: the comparison is not vacuous


def test_a_direction_on_the_features_gives_a_scalar_for_models_without_a_classifier():
    model = MODELS["siglip_map"]()
    images = seeded_images(3, 32, seed=1)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    metric = feature_direction(direction)
    exact = head_sweep(model, images, metric, batch_size=3, progress=False)
    naive = naive_head_sweep(model, images, metric, batch_size=3, progress=False)
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)
    with torch.no_grad():
        assert exact.clean == pytest.approx(float((model(images, return_type="features") @ direction).mean()), abs=1e-5)


def test_weight_processing_refuses_the_parts_it_does_not_handle():
    from vitmech import UnsupportedModelError
    from vitmech.weight_processing import process_weights

    with pytest.raises(UnsupportedModelError, match="LayerScale"):
        process_weights(MODELS["dinov2_reg4"]())
    with pytest.raises(UnsupportedModelError, match="pool='map'"):
        process_weights(MODELS["siglip_map"]())
