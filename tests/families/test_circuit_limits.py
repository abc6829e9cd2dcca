"""Weight-based QK analyses on the families whose scores are not x QK y^T: qk-norm is applied where the
scores are computed from vectors (`qk_scores`, `positional_qk`), and positional QK refuses rotary models."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from tests.families._check import randomized
from vitmech import HookedViT, UnsupportedModelError
from vitmech.analysis.circuits import positional_qk, qk_scores

TINY = dict(pretrained=False, embed_dim=32, depth=2, num_heads=2, img_size=32)


def test_qk_scores_apply_qk_norm_and_equal_the_models_scores():
    model = HookedViT.from_timm(
        randomized(timm.create_model("vit_base_patch16_224", qk_norm=True, num_classes=3, **TINY))
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    names = ("blocks.1.hook_resid_pre", "blocks.1.attn.hook_attn_scores")
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n in names)
        block = model.blocks[1]
        ln1 = F.layer_norm(cache[names[0]], (32,), block.ln1.w, block.ln1.b, block.ln1.eps)
        scores = qk_scores(block.attn, ln1)
    assert cache[names[1]].std() > 0.1
    torch.testing.assert_close(scores, cache[names[1]], atol=1e-5, rtol=0)
    positional_qk(model)  # learned positions and qk-norm: supported


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3", "eva02_tiny_patch14_224"])
def test_positional_qk_refuses_rotary_models_naming_the_feature(name):
    size = 28 if name.startswith("eva") else 32
    source = timm.create_model(name, **{**TINY, "img_size": size}, num_classes=0)
    model = HookedViT.from_timm(randomized(source))
    with pytest.raises(UnsupportedModelError, match="rotary position embeddings"):
        positional_qk(model)
