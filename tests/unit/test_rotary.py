"""Rotary position embeddings (`vitmech.model.rotary`) against the sources' own functions on random inputs:
timm's `RotaryEmbeddingCat` + `apply_rot_embed_cat` (EVA-02) and `RotaryEmbeddingDinoV3` (DINOv3)."""

from __future__ import annotations

import pytest
import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, apply_rot_embed_cat

from vitmech.config import ViTConfig
from vitmech.model.block import rotary_for
from vitmech.model.rotary import apply_rotary, rotary_tables
from vitmech.tokens import TokenLayout


@pytest.mark.parametrize(("d_head", "grid", "ref_grid"), [(16, 4, None), (32, 5, 16), (64, 3, 7)])
def test_eva_tables_and_rotation_match_timm(d_head, grid, ref_grid):
    source = RotaryEmbeddingCat(
        d_head, in_pixels=False, feat_shape=[grid, grid], ref_feat_shape=None if ref_grid is None else [ref_grid] * 2
    )
    emb = source.get_embed()
    sin, cos = rotary_tables("eva", d_head, grid, 10000.0, half=False, ref_grid=ref_grid)
    assert torch.allclose(torch.cat([sin, cos], -1), emb, atol=1e-6)
    x = torch.randn(3, grid * grid, 2, d_head, generator=torch.Generator().manual_seed(d_head))
    expected = apply_rot_embed_cat(x.transpose(1, 2), emb).transpose(1, 2)  # timm: [B, H, N, e]
    assert (apply_rotary(x, sin, cos, half=False) - expected).abs().max() < 1e-5


@pytest.mark.parametrize(("d_head", "grid", "temperature"), [(16, 4, 100.0), (32, 6, 100.0), (64, 3, 10000.0)])
def test_dinov3_tables_and_rotation_match_timm(d_head, grid, temperature):
    source = RotaryEmbeddingDinoV3(d_head, temperature=temperature, feat_shape=[grid, grid], rotate_half=True)
    emb = source.get_embed()
    sin, cos = rotary_tables("dinov3", d_head, grid, temperature, half=True)
    assert torch.allclose(torch.cat([sin, cos], -1), emb, atol=1e-6)
    x = torch.randn(2, grid * grid, 3, d_head, generator=torch.Generator().manual_seed(grid))
    expected = apply_rot_embed_cat(x.transpose(1, 2), emb, half=True).transpose(1, 2)
    assert (apply_rotary(x, sin, cos, half=True) - expected).abs().max() < 1e-5


def test_rotary_leaves_prefix_tokens_alone_and_rotates_patches():
    cfg = ViTConfig(
        n_layers=1, n_heads=2, d_model=32, d_head=16, d_mlp=32, image_size=32, patch_size=8,
        n_register_tokens=2, rope="dinov3", rope_temperature=100.0, rope_half=True,
    )  # fmt: skip
    rotary = rotary_for(cfg)
    assert rotary is not None
    layout = TokenLayout.from_config(cfg)
    q = torch.randn(2, cfg.n_tokens, 2, 16)
    out = rotary(q)
    assert torch.equal(layout.prefix(out, dim=1), layout.prefix(q, dim=1))
    sin, cos = rotary_tables("dinov3", 16, cfg.grid_size, 100.0, half=True)
    assert torch.equal(layout.patches(out, dim=1), apply_rotary(layout.patches(q, dim=1), sin, cos, half=True))
    # a rotation keeps each vector's norm
    assert torch.allclose(out.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_rotary_config_defaults_keep_old_configs_and_validate():
    old = {"n_layers": 1, "n_heads": 1, "d_model": 8, "d_head": 8, "d_mlp": 8, "image_size": 16, "patch_size": 8}
    cfg = ViTConfig.from_dict(old)
    assert cfg.rope == "none" and not cfg.mlp_norm and rotary_for(cfg) is None
    assert ViTConfig.from_dict(cfg.replace(rope="eva", rope_ref_grid=16).to_dict()).rope_ref_grid == 16
    with pytest.raises((ValueError, TypeError), match="rope"):  # TypeError when configs are type-checked at run time
        ViTConfig.from_dict({**old, "rope": "mixed"})
    with pytest.raises(ValueError, match="divisible by 4"):
        ViTConfig.from_dict({**old, "d_head": 6, "d_model": 6, "rope": "eva"})
