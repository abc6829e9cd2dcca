"""Loading from files and names, the errors on bad checkpoints and unsupported architectures, and export."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification

from tests.helpers.models import randomize_source_, seeded_images, tiny_model
from vitmech import CheckpointMismatchError, HookedViT, UnknownModelError, UnsupportedModelError
from vitmech.loading import hf_state_dict, read_state_dict, timm_state_dict, to_hf, to_timm

TOL = 1e-4


def small_timm(**kwargs) -> VisionTransformer:
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=7)
    base.update(kwargs)
    return randomize_source_(VisionTransformer(**base), seed=11).eval()


def small_hf(num_labels: int = 3) -> ViTForImageClassification:
    config = HFViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=num_labels,
    )
    config._attn_implementation = "eager"  # exported models run eager attention; compare like with like
    return randomize_source_(ViTForImageClassification(config), seed=12).eval()


def assert_same_outputs(a, b, size: int = 32, atol: float = TOL) -> None:
    x = seeded_images(2, size, seed=13)
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    out_a = getattr(out_a, "logits", out_a)
    out_b = getattr(out_b, "logits", out_b)
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=0)


# ---------------------------------------------------------------- local files
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_fine_tuned_timm_checkpoint_with_six_classes_loads_from_a_file(tmp_path, suffix):
    source = randomize_source_(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=6), seed=14
    ).eval()
    path = tmp_path / f"finetuned{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    hooked = HookedViT.from_checkpoint(path, arch="vit_tiny_patch16_224")
    assert hooked.cfg.n_classes == 6
    assert_same_outputs(hooked, source, size=224)
    inferred = HookedViT.from_pretrained(str(path))  # arch inferred from the file's shapes
    assert inferred.cfg == hooked.cfg


def test_hf_state_dict_file_in_either_key_layout_loads(tmp_path):
    source = small_hf(num_labels=4)
    hooked_ref = HookedViT.from_hf(source)
    config = source.config
    for layout in ("v4", "v5"):
        path = tmp_path / f"weights_{layout}.safetensors"
        save_file(hf_state_dict(hooked_ref, layout=layout), str(path))
        loaded = HookedViT.from_checkpoint(path, hf_config=config)
        assert loaded.cfg.n_classes == 4
        assert_same_outputs(loaded, source)


def test_checkpoint_with_missing_and_unexpected_keys_lists_them(tmp_path):
    state = {k: v for k, v in small_timm().state_dict().items() if k != "blocks.1.mlp.fc2.bias"}
    state["blocks.1.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError) as err:
        HookedViT.from_checkpoint(path, arch="vit_tiny_patch16_224")
    message = str(err.value)
    assert "blocks.1.mlp.fc2.bias" in message and "blocks.1.extra.weight" in message


def test_checkpoint_for_the_wrong_architecture_says_which_shapes_differ(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(dict(small_timm().state_dict()), str(path))
    with pytest.raises(
        CheckpointMismatchError, match=r"shape mismatches \[.*checkpoint \(32, 32\) vs model \(768, 768\)"
    ):
        HookedViT.from_checkpoint(path, arch="vit_base_patch16_224")


def test_unrecognised_file_layout(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    with pytest.raises(CheckpointMismatchError, match="unrecognised checkpoint layout"):
        HookedViT.from_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pt")


def test_native_save_and_load_round_trip(tmp_path):
    model = tiny_model(seed=2)
    model.class_names = ["a", "b", "c", "d", "e"]
    directory = model.save_pretrained(tmp_path / "m", card={"tier": "full"})
    for source in (directory, directory / "model.safetensors"):
        loaded = HookedViT.from_pretrained(str(source))
        assert loaded.cfg == model.cfg and loaded.class_names == model.class_names
        assert loaded.card == {"tier": "full"}
        assert loaded.preprocessing == model.preprocessing
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_bare_hooked_state_dict_needs_its_config(tmp_path):
    model = tiny_model(seed=3)
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="pass config=ViTConfig"):
        HookedViT.from_checkpoint(path)
    assert_same_outputs(HookedViT.from_checkpoint(path, config=model.cfg), model)


# ---------------------------------------------------------------- names
def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="vit_base_patch16_224"):
        HookedViT.from_pretrained("vit_base_patch16_244")
    with pytest.raises(UnknownModelError, match="unknown model 'vitmech/nope'"):
        HookedViT.from_pretrained("vitmech/nope")
    with pytest.raises(UnknownModelError, match="Close matches: vit_base_patch16_224"):
        HookedViT.from_timm("vit_bsae_patch16_224")


def test_hub_name_without_network_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load a HuggingFace config"):
        HookedViT.from_pretrained("google/vit-base-patch16-224")


# ---------------------------------------------------------------- unsupported
@pytest.mark.parametrize(
    "kwargs, feature",
    [
        (dict(scale_attn_norm=True), "attention output norm"),
        (dict(scale_mlp_norm=True), "norm inside the MLP"),
        (dict(proj_bias=False), "projection without bias"),
        (dict(dynamic_img_pad=True), "dynamic image padding"),
        (dict(global_pool="avg", fc_norm=False, final_norm=True, pool_include_prefix=True), "pool_include_prefix"),
    ],
)
def test_unsupported_timm_features_are_named(kwargs, feature):
    with pytest.raises(UnsupportedModelError, match=feature):
        HookedViT.from_timm(small_timm(**kwargs))


def test_rms_norm_and_other_model_classes_are_refused():
    from timm.layers import RmsNorm

    with pytest.raises(UnsupportedModelError, match="RmsNorm"):
        HookedViT.from_timm(small_timm(norm_layer=RmsNorm))
    with pytest.raises(UnsupportedModelError, match="model class ResNet"):
        HookedViT.from_timm(timm.create_model("resnet18", pretrained=False, num_classes=2))


# ---------------------------------------------------------------- export
def test_timm_export_round_trip_is_exact():
    source = small_timm()
    hooked = HookedViT.from_timm(source)
    exported = to_timm(hooked)
    assert set(exported.state_dict()) == set(source.state_dict())
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in source.state_dict().items())
    x = seeded_images(2, 32)
    with torch.no_grad():
        assert torch.equal(exported(x), source(x))
    again = HookedViT.from_timm(exported)
    assert all(torch.equal(a, b) for a, b in zip(hooked.state_dict().values(), again.state_dict().values()))


def test_hf_export_round_trip_is_exact():
    source = small_hf()
    hooked = HookedViT.from_hf(source)
    exported = to_hf(hooked)
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in source.state_dict().items())
    x = seeded_images(2, 32)
    with torch.no_grad():
        assert torch.equal(exported(x).logits, source(x).logits)


def test_a_model_trained_in_vitmech_exports_to_both():
    hooked = tiny_model(seed=5)
    assert_same_outputs(to_timm(hooked), hooked)
    assert_same_outputs(to_hf(hooked), hooked)
    assert set(timm_state_dict(hooked)) == set(to_timm(hooked).state_dict())


def test_export_refuses_what_the_target_cannot_hold():
    with pytest.raises(UnsupportedModelError, match="no pre-norm"):
        to_hf(tiny_model(pre_norm=True))
    with pytest.raises(UnsupportedModelError, match="n_heads \\* d_head == d_model"):
        to_timm(tiny_model(d_head=4))


def test_family_of_reads_a_converter_module_and_names_what_it_lacks():
    import types

    from vitmech.loading.families import FAMILIES, FAMILY_MODULES, _timm, family_of, hf_clip, timm_vit

    assert [f.name for f in FAMILIES] == [m.NAME for m in FAMILY_MODULES]
    timm = family_of(timm_vit)
    assert (timm.source, timm.key_map, timm.preprocessing) == ("timm", timm_vit.key_map, _timm.preprocessing)
    assert timm.class_names is _timm.class_names
    assert family_of(hf_clip).class_names(None, None) is None  # no class_names: the Family default
    partial = types.ModuleType("half_family")
    partial.NAME, partial.SOURCE, partial.matches = "half", "timm", timm_vit.matches
    with pytest.raises(TypeError, match="half_family does not define unsupported, config, key_map, preprocessing"):
        family_of(partial)
