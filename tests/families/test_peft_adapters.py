"""LoRA adapters saved by peft on timm and HuggingFace base models load merged through the same loaders and
give the adapted model's outputs (not the base model's)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import transformers as T
from peft import LoraConfig, PeftModel, get_peft_model

from tests.families._check import randomized
from vitmech import HookedViT

TOL = 1e-4


def adapted(base, targets, seed=3):
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return peft_model.eval()


def test_timm_lora_adapter_loads_merged(tmp_path):
    base = randomized(
        timm.create_model(
            "vit_small_patch16_224", pretrained=False, embed_dim=32, depth=2, num_heads=2, img_size=32, num_classes=4
        )
    )
    peft_model = adapted(base, ["qkv", "fc1"])
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = peft_model(x)
        assert (expected - base(x)).abs().max() > 0.1  # the adapter changes the model
        from_dir = HookedViT.from_timm(base, adapter=tmp_path / "adapter")(x)
        from_instance = HookedViT.from_timm(peft_model)(x)
    assert (from_dir - expected).abs().max() <= TOL
    assert (from_instance - expected).abs().max() <= TOL
    assert isinstance(peft_model, PeftModel)  # the caller's peft model is left as it was


def test_hf_lora_adapter_loads_merged(tmp_path):
    config = T.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    base = randomized(T.ViTForImageClassification(config))
    peft_model = adapted(base, ["q_proj", "v_proj"])
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = peft_model(pixel_values=x).logits
        got = HookedViT.from_hf(base, adapter=tmp_path / "adapter")(x)
    assert (got - expected).abs().max() <= TOL


def test_missing_adapter_directory_is_named(tmp_path):
    base = timm.create_model("vit_small_patch16_224", pretrained=False, embed_dim=32, depth=1, num_heads=2, img_size=32)
    with pytest.raises(FileNotFoundError, match="no peft adapter"):
        HookedViT.from_timm(base, adapter=tmp_path / "nothing")
