"""Fidelity of timm ports: logits and every block output equal the source's within 1e-4 (float32).

Source models are built from timm's configs (no hub here) with seeded O(1) weights, ported, and
compared on seeded images through both attention paths.
"""

from __future__ import annotations

import pytest
import timm
import torch

from tests.helpers.models import randomize_source_, seeded_images
from vitmech import HookedViT

TOL = 1e-4


def _timm_block_outputs(model, x):
    outputs = []
    handles = [blk.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in model.blocks]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, outputs


def check_timm_port(name: str, batch: int = 2, **kwargs) -> HookedViT:
    source = randomize_source_(timm.create_model(name, pretrained=False, **kwargs), seed=1).eval()
    hooked = HookedViT.from_timm(source)
    x = seeded_images(batch, hooked.cfg.image_size, seed=2)
    with torch.no_grad():
        ref_logits, ref_blocks = _timm_block_outputs(source, x)
        fused = hooked(x)
        # residuals only: the fused (SDPA) path; with the pattern hooked: the explicit softmax path
        _, fused_cache = hooked.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
        _, explicit_cache = hooked.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_resid_post", "hook_pattern"))
        )
    assert ref_logits.abs().max() > 0.1, "test weights should give O(1) logits"
    assert (fused - ref_logits).abs().max() <= TOL
    for layer, ref in enumerate(ref_blocks):
        for path, cache in (("fused", fused_cache), ("explicit", explicit_cache)):
            assert (cache["resid_post", layer] - ref).abs().max() <= TOL, (layer, path)
    with torch.no_grad():
        hooked.set_attention_backend("explicit")
        explicit = hooked(x)
        hooked.set_attention_backend("auto")
    assert (explicit - fused).abs().max() <= 1e-5
    return hooked


@pytest.mark.parametrize(
    "name", ["vit_base_patch16_224", "vit_small_patch16_224", "vit_base_patch32_224", "deit_tiny_patch16_224"]
)
def test_timm_port_matches_source(name):
    hooked = check_timm_port(name)
    assert hooked.cfg.ln_eps == 1e-6
    assert hooked.preprocessing.source.startswith("timm")


def test_timm_port_at_384px_and_with_a_fine_tuned_head():
    hooked = check_timm_port("vit_tiny_patch16_384", batch=1, num_classes=6)
    assert hooked.cfg.n_tokens == 1 + 24 * 24 and hooked.cfg.n_classes == 6


def test_clip_style_pre_norm_and_quick_gelu():
    hooked = check_timm_port("vit_base_patch32_clip_quickgelu_224", batch=1, num_classes=4)
    assert hooked.cfg.pre_norm and hooked.cfg.act_fn == "quick_gelu" and hooked.cfg.ln_eps == 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_large_patch16_224", "vit_base_patch16_384"])
def test_large_and_384_ports(name):
    check_timm_port(name, batch=1)


def test_headless_timm_model_gives_features():
    source = randomize_source_(
        timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0), seed=3
    ).eval()
    hooked = HookedViT.from_timm(source)
    x = seeded_images(2, 224)
    with torch.no_grad():
        torch.testing.assert_close(hooked(x), source(x), atol=TOL, rtol=0)
