"""open_clip image towers through `HookedViT.from_open_clip`: class and average pooling, LayerScale,
final LayerNorm after pooling, QuickGELU; the projected image embedding is the output."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer

from tests.families._check import check_export_round_trip, check_port, randomized
from vitmech import HookedViT

CASES = {
    "clip": dict(),
    "quick_gelu": dict(act_layer=QuickGELU),
    "avg_pool_layer_scale": dict(pool_type="avg", ls_init_value=0.1),
    "ln_after_pool": dict(final_ln_after_pool=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_open_clip_tower_matches_source(case):
    tower = randomized(
        VisionTransformer(
            image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16, **CASES[case]
        )
    )
    hooked = HookedViT.from_open_clip(tower)
    assert hooked.cfg.projection_dim == 16
    check_port(tower, hooked, tower.transformer.resblocks, tower, return_type="embeddings")
    check_export_round_trip(tower, hooked, "open_clip")
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(hooked(x), hooked(x, return_type="embeddings"))


def test_full_open_clip_model_ports_its_image_tower():
    import open_clip

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    assert HookedViT.from_open_clip.__doc__
    from vitmech.loading.open_clip import convert_open_clip

    converted = convert_open_clip(model)
    assert converted.config.projection_dim == 512 and converted.config.n_layers == 12
