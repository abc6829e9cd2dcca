"""HuggingFace families through `HookedViT.from_hf`: DINOv2 (+registers, SwiGLU, 518 / 224 px), DeiT with
its teacher head, ViTMAE, CLIP (with and without projection) and SigLIP image towers. Models are built from
tiny configs with seeded random weights (no hub)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

from tests.families._check import check_export_round_trip, check_port, randomized
from vitmech import HookedViT

SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14
)


def layers_of(model: nn.Module, n: int) -> nn.ModuleList:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise AssertionError("no layer list")


def build(config_cls, model_cls, **overrides):
    config = config_cls(**{**SMALL, **overrides})
    config._attn_implementation = "eager"
    return randomized(model_cls(config))


CASES = {
    "dinov2": (lambda: build(T.Dinov2Config, T.Dinov2Model), "pooler_output", "features", {}),
    "dinov2_tokens": (lambda: build(T.Dinov2Config, T.Dinov2Model), "last_hidden_state", "tokens", {}),
    "dinov2_swiglu": (
        lambda: build(T.Dinov2Config, T.Dinov2Model, use_swiglu_ffn=True),
        "pooler_output",
        "features",
        {},
    ),
    "dinov2_registers": (
        lambda: build(T.Dinov2WithRegistersConfig, T.Dinov2WithRegistersModel, num_register_tokens=4),
        "last_hidden_state",
        "tokens",
        {},
    ),
    "deit_distilled": (
        lambda: build(T.DeiTConfig, T.DeiTForImageClassificationWithTeacher, num_labels=5, image_size=32, patch_size=8),
        "logits",
        "logits",
        {},
    ),
    "vit_mae": (
        lambda: build(T.ViTMAEConfig, T.ViTMAEModel, mask_ratio=0.0, image_size=32, patch_size=8),
        "last_hidden_state",
        "tokens",
        {"noise": True},
    ),
    "clip": (lambda: build(T.CLIPVisionConfig, T.CLIPVisionModel), "pooler_output", "features", {}),
    "clip_projection": (
        lambda: build(T.CLIPVisionConfig, T.CLIPVisionModelWithProjection, projection_dim=24),
        "image_embeds",
        "embeddings",
        {},
    ),
    "siglip": (lambda: build(T.SiglipVisionConfig, T.SiglipVisionModel), "pooler_output", "features", {}),
}


def reference(source, field: str, noise: bool):
    def run(x):
        kwargs = {}
        if noise:  # ViTMAE shuffles patches by random noise; arange keeps their order
            n = source.config.image_size // source.config.patch_size
            kwargs["noise"] = torch.arange(n * n, dtype=torch.float32).expand(x.shape[0], -1)
        return getattr(source(pixel_values=x, **kwargs), field)

    return run


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_family_matches_source(case):
    make, field, return_type, options = CASES[case]
    source = make()
    hooked = HookedViT.from_hf(source)
    layers = layers_of(source, hooked.cfg.n_layers)
    check_port(source, hooked, layers, reference(source, field, options.get("noise", False)), return_type=return_type)
    check_export_round_trip(source, hooked, "hf", left_out=("mask_token",))
    if case == "dinov2_registers":
        assert hooked.cfg.n_register_tokens == 4 and hooked.cfg.n_pos_prefix == 1
    if case == "siglip":
        assert hooked.cfg.pool == "map" and not hooked.cfg.class_token


def test_hf_model_outputs_default_to_features_or_embeddings():
    clip = build(T.CLIPVisionConfig, T.CLIPVisionModelWithProjection, projection_dim=24)
    hooked = HookedViT.from_hf(clip)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert hooked(x).shape == (2, 24)  # "auto": the projected image embedding
        assert hooked(x, return_type="features").shape == (2, 32)


def test_dinov2_at_518_and_224_px_resamples_positions_as_hf():
    source = build(T.Dinov2Config, T.Dinov2Model, image_size=518, num_hidden_layers=1)
    layers = layers_of(source, 1)
    at_518 = HookedViT.from_hf(source)
    check_port(source, at_518, layers, reference(source, "pooler_output", False), batches=(1,))
    at_224 = HookedViT.from_hf(source, image_size=224)
    assert at_224.cfg.pos_grid == 37 and at_224.cfg.grid_size == 16 and at_224.cfg.pos_resample == "bicubic"
    check_port(source, at_224, layers, reference(source, "pooler_output", False), image_size=224)


def test_hf_dinov3_fails_at_load_naming_the_feature():
    from vitmech import UnsupportedModelError

    config = T.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32
    )
    with pytest.raises(UnsupportedModelError, match="rotary position embeddings"):
        HookedViT.from_hf(T.DINOv3ViTModel(config))
    with pytest.raises(UnsupportedModelError, match="class token and the mean of the patches"):
        HookedViT.from_hf(T.Dinov2ForImageClassification(T.Dinov2Config(**SMALL, num_labels=2)))
