"""Fidelity of HuggingFace ports: a base-size ViTForImageClassification saved with save_pretrained and
loaded by path gives the source's logits and per-layer hidden states within 1e-4; ViTModel too."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification, ViTImageProcessor, ViTModel

from tests.helpers.models import randomize_source_, seeded_images
from vitmech import HookedViT, UnsupportedModelError

TOL = 1e-4


def hf_config(**overrides) -> HFViTConfig:
    base = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        num_labels=10,
        layer_norm_eps=1e-12,
    )
    base.update(overrides)
    config = HFViTConfig(**base)
    config.architectures = ["ViTForImageClassification"]
    config._attn_implementation = "eager"
    return config


@pytest.fixture(scope="module")
def saved_base_model(tmp_path_factory):
    """google/vit-base-patch16-224-shaped classifier with seeded weights, saved the way the hub stores it."""
    torch.manual_seed(0)
    model = randomize_source_(ViTForImageClassification(hf_config()), seed=4).eval()
    path = tmp_path_factory.mktemp("hf_vit_base")
    model.save_pretrained(path)
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"height": 224, "width": 224}).save_pretrained(
        path
    )
    return model, path


def test_hf_base_loaded_by_path_matches_source(saved_base_model):
    source, path = saved_base_model
    hooked = HookedViT.from_hf(path)
    assert hooked.cfg.ln_eps == 1e-12 and hooked.cfg.n_classes == 10
    assert hooked.preprocessing.mean == (0.5, 0.5, 0.5) and hooked.preprocessing.resize_mode == "squash"
    x = seeded_images(2, 224, seed=5)
    with torch.no_grad():
        ref = source(x, output_hidden_states=True)
        logits, cache = hooked.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post"))
        )
        explicit_logits, explicit = hooked.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_resid_post", "hook_pattern"))
        )
        fused = hooked(x)
    assert ref.logits.abs().max() > 0.1
    assert (logits - ref.logits).abs().max() <= TOL
    assert (explicit_logits - ref.logits).abs().max() <= TOL
    assert (fused - ref.logits).abs().max() <= TOL
    torch.testing.assert_close(cache["resid_pre", 0], ref.hidden_states[0], atol=TOL, rtol=0)
    for layer in range(12):
        want = ref.hidden_states[layer + 1]
        assert (cache["resid_post", layer] - want).abs().max() <= TOL, (layer, "fused")
        assert (explicit["resid_post", layer] - want).abs().max() <= TOL, (layer, "explicit")


def test_from_pretrained_dispatches_a_local_hf_directory(saved_base_model):
    source, path = saved_base_model
    hooked = HookedViT.from_pretrained(str(path))
    x = seeded_images(1, 224, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(hooked(x), source(x).logits, atol=TOL, rtol=0)


def test_hf_vit_model_with_pooler_is_ported_with_a_warning(caplog):
    config = hf_config(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-12,
    )
    source = randomize_source_(ViTModel(config, add_pooling_layer=True), seed=7).eval()
    with caplog.at_level("WARNING"):
        hooked = HookedViT.from_hf(source)
    assert "pooler" in caplog.text
    x = seeded_images(2, 32, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(hooked(x), source(x).last_hidden_state[:, 0], atol=TOL, rtol=0)
        torch.testing.assert_close(hooked(x, return_type="tokens"), source(x).last_hidden_state, atol=TOL, rtol=0)
    with pytest.raises(UnsupportedModelError, match="pooler"):
        HookedViT.from_hf(source, ignore_pooler=False)


def test_hf_gelu_tanh_and_no_qkv_bias():
    config = hf_config(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        hidden_act="gelu_pytorch_tanh",
        qkv_bias=False,
        num_labels=3,
    )
    source = randomize_source_(ViTForImageClassification(config), seed=9).eval()
    hooked = HookedViT.from_hf(source)
    assert hooked.cfg.act_fn == "gelu_tanh" and not hooked.cfg.qkv_bias
    x = seeded_images(2, 32, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(hooked(x), source(x).logits, atol=TOL, rtol=0)


def _small_hf_dir(tmp_path, **overrides):
    config = hf_config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
        **overrides,
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    return model


def test_hf_directory_with_missing_or_unexpected_weights_is_refused_with_the_keys(tmp_path):
    """transformers would fill a missing weight at random and drop an unexpected one, only printing a report."""
    from safetensors.torch import load_file, save_file

    from vitmech import CheckpointMismatchError

    _small_hf_dir(tmp_path)
    file = tmp_path / "model.safetensors"
    state = load_file(str(file))
    dropped = next(k for k in state if k.endswith("layernorm_after.bias"))
    del state[dropped]
    state["vit.extra.weight"] = torch.zeros(2)
    save_file(state, str(file), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        HookedViT.from_hf(str(tmp_path))
    message = str(err.value)
    assert "missing keys" in message and "layernorm_after.bias" in message
    assert "unexpected keys" in message and "extra.weight" in message
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        HookedViT.from_checkpoint(file, hf_config=str(tmp_path))


def test_hf_directory_with_a_mis_shaped_weight_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from vitmech import CheckpointMismatchError

    _small_hf_dir(tmp_path)
    file = tmp_path / "model.safetensors"
    state = load_file(str(file))
    key = next(k for k in state if k.endswith("intermediate.dense.weight"))
    state[key] = torch.zeros(65, 32)
    save_file(state, str(file), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        HookedViT.from_hf(str(tmp_path))


def test_a_complete_small_hf_directory_still_loads_exactly(tmp_path):
    source = _small_hf_dir(tmp_path)
    model = HookedViT.from_hf(str(tmp_path))
    x = seeded_images(2, 32, seed=1)
    with torch.no_grad():
        assert (model(x) - source(pixel_values=x).logits).abs().max() <= TOL


def test_unsupported_hf_models_fail_at_load_naming_the_feature(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassification, ViTForMaskedImageModeling, YolosConfig, YolosModel

    small = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    with pytest.raises(UnsupportedModelError, match="model class DeiTForImageClassification "):
        HookedViT.from_hf(DeiTForImageClassification(DeiTConfig(**small, num_labels=3)).eval())
    yolos = YolosModel(YolosConfig(**{**small, "image_size": [32, 32]}), add_pooling_layer=False).eval()
    with pytest.raises(UnsupportedModelError, match="YolosModel is not a supported hf model"):
        HookedViT.from_hf(yolos)
    yolos.config.architectures = ["YolosModel"]
    yolos.save_pretrained(tmp_path / "yolos")
    with pytest.raises(UnsupportedModelError, match="'yolos' model"):
        HookedViT.from_hf(str(tmp_path / "yolos"))
    with pytest.raises(UnsupportedModelError, match="model class ViTForMaskedImageModeling"):
        HookedViT.from_hf(ViTForMaskedImageModeling(HFViTConfig(**small)).eval())
    with pytest.raises(UnsupportedModelError, match="activation 'relu6'"):
        HookedViT.from_hf(ViTForImageClassification(HFViTConfig(**small, hidden_act="relu6", num_labels=3)).eval())
