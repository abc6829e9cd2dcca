"""Property-based tests of the circuit math (issue 5's "Done when"), over random small ViT configs and seeds.

Each property is checked against an independent reference: the explicit product, the model's own hooks,
or the model's own logits.
"""

from __future__ import annotations

import math

import torch
from einops import einsum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.models import seeded_images, tiny_config, tiny_model
from vitmech.analysis.attribution import direct_logit_attribution
from vitmech.analysis.circuits import (
    composition_scores,
    head_results,
    ov_circuits,
    positional_qk,
    qk_circuits,
    qk_scores,
)
from vitmech.weight_processing import process_weights

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_configs(draw) -> dict:
    """Overrides for tiny_config: 1-3 layers, 1-4 heads, d_head 1-8, d_model 4-24, 1x1 to 4x4 grids."""
    patch = draw(st.sampled_from([2, 4]))
    return dict(
        n_layers=draw(st.integers(1, 3)),
        n_heads=draw(st.integers(1, 4)),
        d_head=draw(st.integers(1, 8)),
        d_model=draw(st.integers(4, 24)),
        d_mlp=draw(st.integers(4, 32)),
        patch_size=patch,
        image_size=patch * draw(st.integers(1, 4)),
        n_classes=draw(st.integers(1, 6)),
        pre_norm=draw(st.booleans()),
        act_fn=draw(st.sampled_from(["gelu", "gelu_tanh", "quick_gelu", "relu"])),
    )


seeds = st.integers(0, 2**16)


def model_for(overrides: dict, seed: int):
    tiny_config(**overrides)  # validates
    return tiny_model(seed, **overrides)


@SETTINGS
@given(small_configs(), seeds)
def test_factored_qk_and_ov_equal_the_explicit_products_with_rank_and_norm(overrides, seed):
    model = model_for(overrides, seed)
    qk, ov = qk_circuits(model), ov_circuits(model)
    explicit_qk = einsum(model.W_Q, model.W_K, "l h d e, l h f e -> l h d f")
    explicit_ov = einsum(model.W_V, model.W_O, "l h d e, l h e f -> l h d f")
    torch.testing.assert_close(qk.AB, explicit_qk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ov.AB, explicit_ov, atol=1e-5, rtol=1e-5)
    d_head = model.cfg.d_head
    for factored, explicit in ((qk, explicit_qk), (ov, explicit_ov)):
        # the library's factorisation: inner dimension d_head, so at most d_head non-zero singular values,
        # and those equal the explicit product's largest ones (the rest of the explicit spectrum is ~0)
        assert factored.A.shape[-1] == d_head and factored.B.shape[-2] == d_head
        assert factored.S.shape[-1] <= d_head
        explicit_s = torch.linalg.svdvals(explicit.detach())
        torch.testing.assert_close(factored.S, explicit_s[..., : factored.S.shape[-1]], atol=1e-4, rtol=1e-4)
        rest = explicit_s[..., d_head:]
        assert rest.numel() == 0 or float(rest.max()) <= 1e-4 * float(explicit_s.max())
        torch.testing.assert_close(factored.norm(), torch.linalg.matrix_norm(explicit, "fro"), atol=1e-4, rtol=1e-4)


@SETTINGS
@given(small_configs(), seeds)
def test_scores_and_head_results_rebuilt_from_the_cache_equal_the_hooks(overrides, seed):
    model = model_for(overrides, seed)
    images = seeded_images(2, model.cfg.image_size, seed=seed)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            images,
            names_filter=lambda n: (
                n.split(".")[-1] in ("hook_normalized", "hook_attn_scores", "hook_pattern", "hook_v", "hook_result")
            ),
        )
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        x = cache["normalized", layer, "ln1"] * block.ln1.w + block.ln1.b  # the hook is before gain and bias
        # by hand: x W_Q + b_Q, x W_K + b_K, q.k / sqrt(d_head)
        q = einsum(x, attn.W_Q, "b p d, h d e -> b p h e") + attn.b_Q
        k = einsum(x, attn.W_K, "b p d, h d e -> b p h e") + attn.b_K
        by_hand = einsum(q, k, "b q h e, b k h e -> b h q k") / math.sqrt(model.cfg.d_head)
        torch.testing.assert_close(by_hand, cache["attn_scores", layer], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(qk_scores(attn, x), cache["attn_scores", layer], atol=1e-4, rtol=1e-4)
        # each head: pattern @ V, then @ W_O
        z = einsum(cache["pattern", layer], cache["v", layer], "b h q k, b k h e -> b q h e")
        result = einsum(z, attn.W_O, "b q h e, h e d -> b q h d")
        torch.testing.assert_close(result, cache["result", layer], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(head_results(attn, z), cache["result", layer], atol=1e-4, rtol=1e-4)


@SETTINGS
@given(small_configs(), seeds, st.data())
def test_dla_components_sum_to_the_logit(overrides, seed, data):
    model = model_for(overrides, seed)
    images = seeded_images(3, model.cfg.image_size, seed=seed)
    classes = data.draw(st.lists(st.integers(0, model.cfg.n_classes - 1), min_size=3, max_size=3))
    split = data.draw(st.booleans())
    with torch.no_grad():
        logits = model(images)
    dla = direct_logit_attribution(model, images, classes=classes, split_value_bias=split)
    expected = logits[torch.arange(3), torch.tensor(classes)]
    torch.testing.assert_close(dla.attributions.sum(-1), expected, atol=1e-4, rtol=1e-5)


@SETTINGS
@given(small_configs(), seeds, st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_processed_and_unprocessed_models_give_the_same_logits(
    overrides, seed, fold_ln, center, fold_v, center_reading
):
    model = model_for(overrides, seed)
    images = seeded_images(2, model.cfg.image_size, seed=seed)
    processed = process_weights(
        model, fold_ln=fold_ln, center_writing=center, fold_value_bias=fold_v, center_reading_weights=center_reading
    )
    with torch.no_grad():
        torch.testing.assert_close(processed(images), model(images), atol=1e-4, rtol=1e-5)


@SETTINGS
@given(small_configs(), seeds, st.data())
def test_composition_scores_lie_in_unit_interval_and_ignore_rescaling(overrides, seed, data):
    overrides["n_layers"] = max(2, overrides["n_layers"])
    model = model_for(overrides, seed)
    before = composition_scores(model)
    for score in before.scores.values():
        valid = score[~torch.isnan(score)]
        assert valid.numel() > 0 and bool((valid >= 0).all()) and bool((valid <= 1 + 1e-5).all())
    # rescale the earlier matrices (W_O of layer 0) and the later ones (W_Q, W_K, W_V of the last layer)
    scale_a = data.draw(st.floats(0.01, 100) | st.floats(-100, -0.01))
    scale_b = data.draw(st.floats(0.01, 100) | st.floats(-100, -0.01))
    with torch.no_grad():
        model.blocks[0].attn.W_O.mul_(scale_a)
        for name in ("W_Q", "W_K", "W_V"):
            getattr(model.blocks[-1].attn, name).mul_(scale_b)
    after = composition_scores(model)
    for mode in before.scores:
        torch.testing.assert_close(after.scores[mode], before.scores[mode], atol=1e-4, rtol=1e-3, equal_nan=True)


@SETTINGS
@given(small_configs(), seeds, st.sampled_from(["ln1", "raw"]), st.booleans())
def test_positional_qk_of_zero_position_embeddings_is_constant(overrides, seed, mode, scale):
    model = model_for(overrides, seed)
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
    scores = positional_qk(model, mode=mode, scale=scale).scores  # [L, H, P, P]
    spread = scores.flatten(-2).max(-1).values - scores.flatten(-2).min(-1).values
    assert float(spread.max()) <= 1e-5 * (1 + float(scores.abs().max()))


@SETTINGS
@given(small_configs(), seeds)
def test_ln1_positional_qk_is_layer_zero_attention_without_content(overrides, seed):
    """With zero patch embeddings and CLS token, block 0 sees LN1(W_pos) exactly: its scores are hook_attn_scores."""
    model = model_for(overrides, seed)
    with torch.no_grad():
        model.embed.W_E.zero_()
        model.embed.b_E.zero_()
        model.cls_token.W_cls.zero_()
        _, cache = model.run_with_cache(
            seeded_images(1, model.cfg.image_size, seed=seed), names_filter="blocks.0.attn.hook_attn_scores"
        )
    scores = positional_qk(model, mode="ln1", layers=[0]).scores[0]
    torch.testing.assert_close(scores, cache["attn_scores", 0][0], atol=1e-4, rtol=1e-4)
