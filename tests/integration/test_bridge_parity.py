"""Parity with transformer_lens' own TransformerBridge on the same HF ViT (booted offline).

Every hook both expose agrees within 1e-5 (`ln*.hook_normalized` included: both take it before the
LayerNorm gain and bias), except two whose meanings differ (checked explicitly):
- the bridge's `hook_embed` is the full embedding (our `hook_full_embed`);
- its `hook_attn_scores` is not the input of the softmax that gives its `hook_pattern`; ours is.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification

from tests.helpers.models import randomize_source_, seeded_images
from vitmech import HookedViT

bridge_module = pytest.importorskip("transformer_lens.model_bridge")


@pytest.fixture(scope="module")
def hf_model():
    config = HFViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    config.architectures = ["ViTForImageClassification"]
    return randomize_source_(ViTForImageClassification(config), seed=21).eval()


@pytest.fixture(scope="module")
def ours_model(hf_model):
    return HookedViT.from_hf(hf_model)


@pytest.fixture(scope="module")
def both(hf_model, ours_model):
    hf, ours = hf_model, ours_model
    # the bridge wraps the HF modules in place, so it gets its own copy
    bridge = bridge_module.TransformerBridge.boot_transformers(
        "google/vit-base-patch16-224", hf_model=copy.deepcopy(hf), device="cpu"
    )
    x = seeded_images(2, 32, seed=22)
    with torch.no_grad():
        return ours.run_with_cache(x), bridge.run_with_cache(x)


def test_logits_and_every_shared_hook_agree(both):
    (ours_out, ours), (bridge_out, theirs) = both
    torch.testing.assert_close(ours_out, bridge_out, atol=1e-5, rtol=0)
    differ = {k for k in ours if k == "hook_embed" or k.endswith("hook_attn_scores")}
    shared = sorted((set(ours.keys()) & set(theirs.keys())) - differ)
    assert len(shared) >= 25 and any(name.endswith("ln1.hook_normalized") for name in shared)
    for name in shared:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)


def test_the_two_hooks_whose_meaning_differs(both, ours_model):
    (_, ours), (_, theirs) = both
    torch.testing.assert_close(theirs["hook_embed"], ours["hook_full_embed"], atol=1e-5, rtol=0)
    for layer in range(2):
        torch.testing.assert_close(torch.softmax(ours["attn_scores", layer], -1), ours["pattern", layer])
        torch.testing.assert_close(theirs["pattern", layer], ours["pattern", layer], atol=1e-6, rtol=0)
