"""timm `Eva` through `HookedViT.from_timm`: EVA-02 (interleaved rotary embeddings, SwiGLU with a LayerNorm
inside, packed SwiGLU) and DINOv3 (rotate-half rotary embeddings on centred coordinates, registers without
position embeddings, LayerScale). Tiny random configs built by name, no weights downloaded."""

from __future__ import annotations

import pytest
import timm
import torch

from tests.families._check import check_export_round_trip, check_port, randomized
from vitmech import HookedViT, UnsupportedModelError

TINY = dict(pretrained=False, embed_dim=64, depth=2, num_heads=2)

CASES = {
    "eva02_packed_swiglu": ("eva02_tiny_patch14_224", dict(img_size=56, num_classes=5)),
    "eva02_mlp_norm": ("eva02_base_patch14_224", dict(img_size=56, num_classes=0)),
    "eva02_token_pool": ("eva02_small_patch14_224", dict(img_size=42, num_classes=3, global_pool="token")),
    "dinov3": ("vit_small_patch16_dinov3", dict(img_size=64, num_classes=0)),
    "dinov3_qkvb_cls": ("vit_small_patch16_dinov3_qkvb", dict(img_size=48, num_classes=4, global_pool="token")),
}


def eva_model(name: str, **kwargs) -> torch.nn.Module:
    return randomized(timm.create_model(name, **{**TINY, **kwargs}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_timm_eva_family_matches_source(case):
    name, kwargs = CASES[case]
    source = eva_model(name, **kwargs)
    hooked = HookedViT.from_timm(source)
    check_port(source, hooked, source.blocks, source)
    check_export_round_trip(source, hooked, "timm")
    cfg = hooked.cfg
    if case.startswith("eva02"):
        assert cfg.rope == "eva" and not cfg.rope_half and cfg.rope_ref_grid == 16 and cfg.gated_mlp
        assert cfg.mlp_norm == (case == "eva02_mlp_norm")
    else:
        assert cfg.rope == "dinov3" and cfg.rope_half and cfg.rope_temperature == 100
        assert cfg.n_register_tokens == 4 and not cfg.pos_embed and cfg.layer_scale


def test_hook_q_sees_rotated_queries_of_patches_only():
    """hook_q is the input to the scores: patch queries are rotated, prefix queries are not."""
    source = eva_model("vit_small_patch16_dinov3", img_size=32, num_classes=0)
    hooked = HookedViT.from_timm(source)
    x = torch.randn(1, 3, 32, 32)
    _, cache = hooked.run_with_cache(x, names_filter=lambda n: n in ("blocks.0.attn.hook_q", "blocks.0.hook_resid_pre"))
    block = hooked.blocks[0]
    normed = torch.nn.functional.layer_norm(
        cache["blocks.0.hook_resid_pre"], (64,), block.ln1.w, block.ln1.b, block.ln1.eps
    )
    q_raw, _, _ = block.attn.qkv(normed)
    n_prefix = hooked.cfg.n_prefix_tokens
    q = cache["blocks.0.attn.hook_q"]
    assert torch.equal(q.narrow(1, 0, n_prefix), q_raw.narrow(1, 0, n_prefix))
    assert not torch.allclose(q.narrow(1, n_prefix, 4), q_raw.narrow(1, n_prefix, 4), atol=1e-3)
    # a rotation keeps each channel pair's norm
    assert torch.allclose(q.norm(dim=-1), q_raw.norm(dim=-1), atol=1e-5)


def test_export_to_a_timm_vision_transformer_is_refused_naming_rotary():
    from vitmech.loading import to_hf, to_timm

    hooked = HookedViT.from_timm(eva_model("eva02_tiny_patch14_224", img_size=28, num_classes=2))
    with pytest.raises(UnsupportedModelError, match="rotary"):
        to_timm(hooked)
    with pytest.raises(UnsupportedModelError, match="rope"):
        to_hf(hooked)


def test_eva_features_still_unsupported_fail_naming_them():
    mixed = timm.create_model("vit_small_patch16_rope_mixed_224", **{**TINY, "img_size": 32})
    with pytest.raises(UnsupportedModelError, match="mixed"):
        HookedViT.from_timm(mixed)
    attn_norm = timm.create_model("eva02_tiny_patch14_224", **{**TINY, "img_size": 28, "scale_attn_inner": True})
    with pytest.raises(UnsupportedModelError, match="attention output norm"):
        HookedViT.from_timm(attn_norm)
