"""timm families through `HookedViT.from_timm`: DINOv2 (+registers, SwiGLU, 518 / 224 px), DeiT distilled,
DeiT III, CLIP, SigLIP (MAP and global average), global-pool + fc_norm (MAE fine-tuning), qk-norm,
LayerScale, no class token. Tiny configs built by name (no weights downloaded)."""

from __future__ import annotations

import pytest
import timm
import torch

from tests.families._check import check_export_round_trip, check_port, randomized
from vitmech import HookedViT
from vitmech.loading import to_timm

TINY = dict(pretrained=False, embed_dim=32, depth=2, num_heads=2)


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    return randomized(timm.create_model(name, **{**TINY, **kwargs}))


def port_and_check(source, **kwargs) -> HookedViT:
    hooked = HookedViT.from_timm(source, **kwargs)
    check_port(source, hooked, source.blocks, source, image_size=kwargs.get("image_size"))
    check_export_round_trip(source, hooked, "timm")
    return hooked


CASES = {
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=56)),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=56)),
    "dinov2_swiglu": ("vit_giant_patch14_dinov2", dict(img_size=56)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, num_classes=5)),
    "deit3": ("deit3_small_patch16_224", dict(img_size=32, num_classes=5)),
    "clip": ("vit_base_patch16_clip_224", dict(img_size=32, num_classes=6)),
    "clip_quickgelu": ("vit_base_patch32_clip_quickgelu_224", dict(img_size=64, num_classes=0)),
    "siglip_map": ("vit_base_patch16_siglip_224", dict(img_size=32, num_classes=0)),
    "siglip_map_head": ("vit_base_patch16_siglip_224", dict(img_size=32, num_classes=4)),
    "siglip_gap": ("vit_base_patch16_siglip_gap_224", dict(img_size=32, num_classes=0)),
    "global_pool_fc_norm": ("vit_base_patch16_224", dict(img_size=32, global_pool="avg", fc_norm=True, num_classes=3)),
    "qk_norm": ("vit_base_patch16_224", dict(img_size=32, qk_norm=True, num_classes=3)),
    "layer_scale": ("vit_base_patch16_224", dict(img_size=32, init_values=0.1, num_classes=3)),
    "registers_with_positions": ("vit_base_patch16_224", dict(img_size=32, reg_tokens=2, num_classes=3)),
    "no_class_token_avg": (
        "vit_base_patch16_224",
        dict(img_size=32, class_token=False, global_pool="avg", num_classes=3),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_timm_family_matches_source(case):
    name, kwargs = CASES[case]
    hooked = port_and_check(timm_model(name, **kwargs))
    cfg = hooked.cfg
    if case == "dinov2_reg4":
        assert cfg.n_register_tokens == 4 and cfg.n_pos_prefix == 0 and cfg.layer_scale
    if case == "dinov2_swiglu":
        assert cfg.gated_mlp and cfg.act_fn == "silu"
    if case == "deit_distilled":
        assert cfg.distill_token and cfg.has_distill_head
    if case.startswith("siglip"):
        assert not cfg.class_token and cfg.pool in ("map", "avg")


def test_dinov2_at_518_and_224_px_resamples_positions_as_timm():
    """The stored 37x37 grid at 518 px, and resampled (bicubic, antialiased) to 16x16 at 224 px."""
    source = timm_model("vit_small_patch14_dinov2", img_size=518, depth=1, dynamic_img_size=True)
    at_518 = HookedViT.from_timm(source)
    assert at_518.cfg.grid_size == 37 and at_518.cfg.pos_grid is None
    check_port(source, at_518, source.blocks, source, batches=(1,))
    at_224 = HookedViT.from_timm(source, image_size=224)
    assert at_224.cfg.grid_size == 16 and at_224.cfg.pos_grid == 37
    check_port(source, at_224, source.blocks, source, image_size=224)
    check_export_round_trip(source, at_224, "timm")


@pytest.mark.parametrize(
    "case", ["dinov2_reg4", "deit_distilled", "siglip_map_head", "dinov2_swiglu", "global_pool_fc_norm"]
)
def test_timm_export_builds_an_equal_timm_model(case):
    name, kwargs = CASES[case]
    source = timm_model(name, **kwargs)
    exported = to_timm(HookedViT.from_timm(source))
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in source.state_dict().items())
    x = torch.randn(2, 3, source.patch_embed.img_size[0], source.patch_embed.img_size[1])
    with torch.no_grad():
        assert torch.equal(exported(x), source(x))


def test_rotary_families_fail_at_load_naming_the_feature():
    from vitmech import UnsupportedModelError

    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, img_size=28)
    with pytest.raises(UnsupportedModelError, match="rotary position embeddings"):
        HookedViT.from_timm(eva)
    dinov3 = timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=1, img_size=32)
    with pytest.raises(UnsupportedModelError, match="rotary position embeddings"):
        HookedViT.from_timm(dinov3)
