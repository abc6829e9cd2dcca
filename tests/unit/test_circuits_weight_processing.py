"""Weight processing: each step keeps the logits (within 1e-4) and does what it says to the weights."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech import HookedViT
from vitmech.loading import to_timm
from vitmech.weight_processing import (
    center_classifier,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    load_processed,
    process_weights,
)


def logits_of(model, images):
    with torch.no_grad():
        return model(images)


@pytest.fixture(scope="module")
def images():
    return seeded_images(3, 32, seed=2)


@pytest.mark.parametrize("step", [fold_layer_norm, center_writing_weights, fold_value_biases, process_weights])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_each_step_keeps_the_logits_and_leaves_the_original_alone(step, pre_norm, images):
    model = tiny_model(seed=7, pre_norm=pre_norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    processed = step(model)
    assert processed is not model
    torch.testing.assert_close(logits_of(processed, images), logits_of(model, images), atol=1e-4, rtol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.card == {} and processed.card["weight_processing"][-1]["step"] in (step.__name__, "fold_value_biases")


def test_fold_layer_norm_resets_the_layer_norms_and_centres_reading_weights(images):
    model = fold_layer_norm(tiny_model(seed=1))
    for ln in [m for b in model.blocks for m in (b.ln1, b.ln2)] + [model.ln_final]:
        assert torch.equal(ln.w, torch.ones_like(ln.w)) and torch.equal(ln.b, torch.zeros_like(ln.b))
    for W in (model.W_Q, model.W_K, model.W_V):
        assert W.mean(-2).abs().max() < 1e-6
    assert model.W_in.mean(-2).abs().max() < 1e-6 and model.W_H.mean(0).abs().max() < 1e-6
    uncentred = fold_layer_norm(tiny_model(seed=1), center_reading_weights=False)
    assert uncentred.W_Q.mean(-2).abs().max() > 1e-3
    torch.testing.assert_close(logits_of(uncentred, images), logits_of(model, images), atol=1e-4, rtol=1e-5)


def test_center_writing_weights_centres_every_residual_stream(images):
    model = center_writing_weights(tiny_model(seed=2))
    with torch.no_grad():
        _, cache = model.run_with_cache(images)
    names = ["hook_full_embed"] + [
        f"blocks.{layer}.hook_{k}" for layer in range(3) for k in ("resid_mid", "resid_post", "attn_out", "mlp_out")
    ]
    for name in names:
        assert cache[name].mean(-1).abs().max() < 1e-5, name
    with torch.no_grad():
        _, raw_cache = tiny_model(seed=2).run_with_cache(images)
    assert raw_cache["blocks.2.hook_resid_post"].mean(-1).abs().max() > 1e-2  # the check can fail


def test_fold_value_biases_zeroes_b_v():
    model = fold_value_biases(tiny_model(seed=3))
    assert torch.equal(model.b_V, torch.zeros_like(model.b_V))
    assert tiny_model(seed=3).b_V.abs().max() > 0


def test_center_classifier_keeps_the_softmax_but_shifts_the_logits(images):
    model = tiny_model(seed=4)
    centred = center_classifier(model)
    before, after = logits_of(model, images), logits_of(centred, images)
    torch.testing.assert_close(after.log_softmax(-1), before.log_softmax(-1), atol=1e-5, rtol=0)
    shift = before - after
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), atol=1e-5, rtol=0)
    assert shift.abs().max() > 1e-3
    assert centred.W_H.mean(-1).abs().max() < 1e-6 and abs(float(centred.b_H.detach().mean())) < 1e-6
    assert "center_classifier" not in [s["step"] for s in process_weights(model).card["weight_processing"]]
    torch.testing.assert_close(
        logits_of(process_weights(model, center_head=True), images).log_softmax(-1),
        before.log_softmax(-1),
        atol=1e-5,
        rtol=0,
    )


def test_headless_models_keep_ln_final_and_their_features(images):
    model = tiny_model(n_classes=0)
    processed = process_weights(model)
    torch.testing.assert_close(logits_of(processed, images), logits_of(model, images), atol=1e-4, rtol=1e-5)
    assert not torch.equal(processed.ln_final.w, torch.ones_like(processed.ln_final.w))
    with pytest.raises(ValueError, match="classifier head"):
        center_classifier(model)


def test_inplace_edits_the_model_and_bad_input_is_rejected(tiny_vit):
    model = tiny_vit
    assert fold_value_biases(model, inplace=True) is model and torch.equal(model.b_V, torch.zeros_like(model.b_V))
    with pytest.raises(TypeError, match="HookedViT"):
        process_weights(torch.nn.Linear(2, 2))


def test_processed_models_save_load_and_export(tmp_path, images):
    model = tiny_model(seed=6, qkv_bias=False)
    with torch.no_grad():
        for block in model.blocks:  # a real qkv_bias=False model has no q/k/v biases
            for b in (block.attn.b_Q, block.attn.b_K, block.attn.b_V):
                b.zero_()
    processed = process_weights(model)
    assert processed.cfg.qkv_bias and processed.b_Q.abs().max() > 0  # the folded ln1 bias
    expected = logits_of(processed, images)
    torch.testing.assert_close(logits_of(to_timm(processed), images), expected, atol=1e-4, rtol=1e-5)
    processed.save_pretrained(tmp_path / "processed")
    reloaded = HookedViT.from_pretrained(str(tmp_path / "processed"))
    assert [s["step"] for s in reloaded.card["weight_processing"]] == [
        "fold_layer_norm",
        "center_writing_weights",
        "fold_value_biases",
    ]
    torch.testing.assert_close(logits_of(reloaded, images), expected, atol=0, rtol=0)
    model.save_pretrained(tmp_path / "raw")
    on_load = load_processed(str(tmp_path / "raw"), fold_value_bias=False)
    assert [s["step"] for s in on_load.card["weight_processing"]] == ["fold_layer_norm", "center_writing_weights"]
    torch.testing.assert_close(logits_of(on_load, images), logits_of(model, images), atol=1e-4, rtol=1e-5)
