"""HuggingFace families through `HookedViT.from_hf`: DINOv2 (+registers, SwiGLU, 518 / 224 px), DINOv3 (rotary
embeddings, registers, LayerScale, SwiGLU, optional biases), DeiT with its teacher head, ViTMAE, CLIP (with and
without projection) and SigLIP image towers. Models are built from
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
    "dinov3_registers": (
        lambda: build(T.DINOv3ViTConfig, T.DINOv3ViTModel, num_register_tokens=4, image_size=32, patch_size=8),
        "pooler_output",
        "features",
        {},
    ),
    "dinov3_swiglu_biases": (  # no registers (an empty parameter), SwiGLU, a key bias, no output / MLP biases
        lambda: build(
            T.DINOv3ViTConfig,
            T.DINOv3ViTModel,
            image_size=32,
            patch_size=8,
            use_gated_mlp=True,
            hidden_act="silu",
            key_bias=True,
            proj_bias=False,
            mlp_bias=False,
        ),
        "last_hidden_state",
        "tokens",
        {"left_out": ("mask_token", "register_tokens")},
    ),
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
    check_export_round_trip(source, hooked, "hf", left_out=options.get("left_out", ("mask_token",)))
    if case == "dinov2_registers":
        assert hooked.cfg.n_register_tokens == 4 and hooked.cfg.n_pos_prefix == 1
    if case == "siglip":
        assert hooked.cfg.pool == "map" and not hooked.cfg.class_token
    if case.startswith("dinov3"):
        cfg = hooked.cfg
        assert cfg.rope == "dinov3" and cfg.rope_half and cfg.rope_temperature == 100 and not cfg.pos_embed
        assert cfg.layer_scale and cfg.n_register_tokens == (4 if case == "dinov3_registers" else 0)


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


def test_hf_dinov3_from_a_directory_at_another_image_size_rotates_as_hf(tmp_path):
    """HF computes the rotary tables from the input's size; HookedViT from the size it is loaded at. Loaded
    from a saved directory (the class read from its config)."""
    source = build(T.DINOv3ViTConfig, T.DINOv3ViTModel, num_register_tokens=2, image_size=32, patch_size=8)
    source.save_pretrained(tmp_path)
    at_48 = HookedViT.from_hf(tmp_path, image_size=48)
    assert at_48.cfg.grid_size == 6
    check_port(source, at_48, layers_of(source, 2), reference(source, "pooler_output", False), image_size=48)


def test_hf_and_timm_dinov3_are_one_model():
    """HF weights exported through the timm Eva family's key map run in timm's `vit_*_dinov3` with the same
    tokens: both sources' rotary embeddings, LayerScale and registers are the core's one definition. (The
    pooled outputs differ by default: HF's `pooler_output` is the class token, timm pools the patch mean.)"""
    import timm

    from vitmech.loading import export_state_dict
    from vitmech.loading.families import family_for

    hf = build(T.DINOv3ViTConfig, T.DINOv3ViTModel, num_register_tokens=4, image_size=32, patch_size=16,
               intermediate_size=128)  # fmt: skip
    tm = timm.create_model(
        "vit_small_patch16_dinov3_qkvb", pretrained=False, embed_dim=32, depth=2, num_heads=2, img_size=32,
        num_classes=0,
    ).eval()  # fmt: skip
    hooked = HookedViT.from_hf(hf)
    tm.load_state_dict(export_state_dict(hooked, family_for(tm, "timm"), list(tm.state_dict())), strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_tokens, timm_tokens = hf(pixel_values=x).last_hidden_state, tm.forward_features(x)
    assert hf_tokens.abs().max() > 0.1
    assert (hf_tokens - timm_tokens).abs().max() <= 1e-4
    assert HookedViT.from_timm(tm).cfg.replace(pool="cls") == hooked.cfg


def test_unsupported_hf_models_fail_at_load_naming_the_feature():
    from vitmech import UnsupportedModelError

    config = T.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32
    )
    with pytest.raises(UnsupportedModelError, match="model class DINOv3ViTBackbone"):
        HookedViT.from_hf(T.DINOv3ViTBackbone(config))
    with pytest.raises(UnsupportedModelError, match="class token and the mean of the patches"):
        HookedViT.from_hf(T.Dinov2ForImageClassification(T.Dinov2Config(**SMALL, num_labels=2)))
