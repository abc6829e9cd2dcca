"""Direct logit attribution at CLS and the logit lens, against the model's logits, transformer_lens' own
attribution of cached components, and a by-hand final LayerNorm."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech import ImageInputError
from vitmech.analysis.attribution import (
    direct_logit_attribution,
    direct_logit_attribution_from_cache,
    logit_lens,
    logit_lens_from_cache,
)
from vitmech.weight_processing import fold_value_biases

B = 4


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=5)
    m.class_names = ["round", "cigar", "edge", "spiral", "bar"]
    return m


@pytest.fixture(scope="module")
def images():
    return seeded_images(B, 32, seed=5)


def test_components_sum_to_the_logit_for_every_way_of_naming_classes(model, images):
    with torch.no_grad():
        logits = model(images)
    rows = torch.arange(B)
    for classes, expected in (
        ("predicted", logits.argmax(-1)),
        (2, torch.full((B,), 2)),
        ("spiral", torch.full((B,), 3)),
        ([4, 0, 1, 3], torch.tensor([4, 0, 1, 3])),
        (torch.tensor([1, 1, 0, 2]), torch.tensor([1, 1, 0, 2])),
    ):
        dla = direct_logit_attribution(model, images, classes=classes)
        assert torch.equal(dla.classes, expected)
        torch.testing.assert_close(dla.total, logits[rows, expected], atol=1e-5, rtol=0)
        assert dla.max_abs_error < 1e-5


def test_head_mlp_and_embedding_attributions_equal_transformer_lens_attribution_of_the_cache(model, images):
    """transformer_lens attributes the cached hook_result / mlp_out / embeddings through the cached final-LN scale."""
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(images)
    finally:
        model.set_use_attn_result(False)
    classes = logits.argmax(-1)
    dla = direct_logit_attribution_from_cache(model, cache, classes)
    heads, _ = cache.stack_head_results(layer=-1, pos_slice=0, return_labels=True)
    tl_heads = cache.logit_attrs(heads, tokens=classes, pos_slice=0)  # [L*H, B]
    torch.testing.assert_close(dla.head_attributions().flatten(1), tl_heads.T, atol=1e-5, rtol=1e-5)
    for layer in range(model.cfg.n_layers):
        mlp = cache["mlp_out", layer][:, 0] - model.blocks[layer].mlp.b_out
        tl_mlp = cache.logit_attrs(mlp[None], tokens=classes, pos_slice=0)[0]
        torch.testing.assert_close(dla.mlp_attributions()[:, layer], tl_mlp, atol=1e-5, rtol=1e-5)
    embed = cache.logit_attrs(cache["embed"][:, 0][None], tokens=classes, pos_slice=0)[0]
    torch.testing.assert_close(dla.attributions[:, dla.labels.index("cls_token")], embed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dla.attributions[:, dla.labels.index("b_H")], model.b_H[classes].detach())


def test_split_value_bias_moves_a_constant_out_of_each_head(model, images):
    plain = direct_logit_attribution(model, images)
    split = direct_logit_attribution(model, images, split_value_bias=True)
    torch.testing.assert_close(split.total, plain.total, atol=1e-5, rtol=0)
    value_bias = split.attributions[:, [i for i, k in enumerate(split.kinds) if k == "value_bias"]]
    torch.testing.assert_close(
        split.head_attributions().flatten(1) + value_bias, plain.head_attributions().flatten(1), atol=1e-5, rtol=0
    )
    # folding the value biases into b_O (an exact model change) gives the split heads
    folded = direct_logit_attribution(fold_value_biases(model), images, classes=plain.classes)
    torch.testing.assert_close(folded.head_attributions(), split.head_attributions(), atol=1e-5, rtol=1e-5)


def test_batching_does_not_change_the_result(model, images):
    whole = direct_logit_attribution(model, images, classes=[0, 1, 2, 3], batch_size=None)
    chunked = direct_logit_attribution(model, images, classes=[0, 1, 2, 3], batch_size=3)
    torch.testing.assert_close(chunked.attributions, whole.attributions, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked.logits, whole.logits, atol=1e-6, rtol=0)
    assert torch.equal(chunked.classes, whole.classes)
    assert chunked.components == whole.components and chunked.labels == whole.labels
    assert whole.components[-2:] == (("ln_final.b", "ln_final_bias", -1, -1), ("b_H", "head_bias", -1, -1))
    assert [(c.layer, c.head) for c in whole.components if c.kind == "head"] == [
        (layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
    ]


def test_tables(model, images):
    dla = direct_logit_attribution(model, images)
    frame = dla.to_frame()
    n_components = 2 + model.cfg.n_layers * (model.cfg.n_heads + 3) + 2
    assert len(dla.labels) == n_components and len(frame) == B * n_components
    sums = frame.groupby("image")["attribution"].sum().values
    torch.testing.assert_close(torch.tensor(sums, dtype=torch.float32), dla.logits, atol=1e-5, rtol=0)
    assert set(frame["class_name"]) <= set(model.class_names)
    summary = dla.summary_frame()
    assert len(summary) == n_components and {"mean_attribution", "mean_abs_attribution"} <= set(summary.columns)
    by_kind = dla.by_kind()
    torch.testing.assert_close(sum(by_kind.values()), dla.total)
    assert dla.to_dict()["max_abs_error"] < 1e-5


def test_pre_norm_models_attribute_ln_pre_output_as_the_embedding():
    model = tiny_model(pre_norm=True)
    images = seeded_images(2, 32)
    dla = direct_logit_attribution(model, images)
    assert dla.labels[0] == "embed (ln_pre)" and "cls_token" not in dla.labels
    with torch.no_grad():
        torch.testing.assert_close(dla.total, model(images).gather(-1, dla.classes[:, None])[:, 0], atol=1e-5, rtol=0)


def test_bad_inputs_get_clear_errors(model, images, unchecked_types):
    with pytest.raises(IndexError, match="out of range"):
        direct_logit_attribution(model, images, classes=5)
    with runtime_checks_off(), pytest.raises(ValueError, match="one class per image"):
        direct_logit_attribution(model, images, classes=[[0, 1], [2, 3]], batch_size=None)
    with pytest.raises(ValueError, match="2 classes for 4 images"):
        direct_logit_attribution(model, images, classes=[0, 1])
    with pytest.raises(ValueError, match="unknown class name"):
        direct_logit_attribution(model, images, classes="barred")
    with pytest.raises(ImageInputError):
        direct_logit_attribution(model, images[0])
    with pytest.raises(ValueError, match="batch_size"):
        direct_logit_attribution(model, images, batch_size=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter="head.hook_logits")
    with pytest.raises(KeyError, match="lacks"):
        direct_logit_attribution_from_cache(model, cache)
    with pytest.raises(KeyError, match="lacks"):
        logit_lens_from_cache(model, cache)
    headless = tiny_model(n_classes=0)
    with pytest.raises(ValueError, match="classifier head"):
        direct_logit_attribution(headless, images)
    with pytest.raises(ValueError, match="classifier head"):
        logit_lens(headless, images)


def test_logit_lens_ends_at_the_logits_and_starts_at_the_embedding(model, images):
    lens = logit_lens(model, images, batch_size=3)
    L = model.cfg.n_layers
    assert lens.logits.shape == (B, L + 1, model.cfg.n_classes) and lens.labels == ["embed"] + [
        f"L{layer}" for layer in range(L)
    ]
    with torch.no_grad():
        logits = model(images)
        first = model.W_cls + model.W_pos[0]
        by_hand = (first - first.mean()) / (
            first.var(unbiased=False) + model.cfg.ln_eps
        ).sqrt() * model.ln_final.w + model.ln_final.b
        by_hand = by_hand @ model.W_H + model.b_H
    torch.testing.assert_close(lens.logits[:, -1], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens.logits[:, 0], by_hand.expand(B, -1), atol=1e-5, rtol=1e-5)
    assert torch.equal(lens.final_classes, logits.argmax(-1))
    assert lens.agreement[-1] == 1.0
    torch.testing.assert_close(lens.final_class_probability[:, -1], logits.softmax(-1).max(-1).values)
    frame = lens.to_frame()
    assert len(frame) == B * (L + 1) and set(frame["predicted_name"]) <= set(model.class_names)
    summary = lens.summary_frame()
    assert summary["agreement_with_final"].iloc[-1] == 1.0 and len(summary) == L + 1
