"""transformer_lens ActivationCache methods on a HookedViT at the CLS position."""

from __future__ import annotations

import torch

from tests.helpers.models import seeded_images


def cached(model, batch: int = 3):
    with torch.no_grad():
        return model.run_with_cache(seeded_images(batch, model.cfg.image_size))


def test_decompose_resid_sums_to_the_final_residual(tiny_vit):
    model = tiny_vit
    _, cache = cached(model)
    parts, labels = cache.decompose_resid(layer=-1, pos_slice=0, return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"] and len(labels) == 2 + 2 * model.cfg.n_layers
    torch.testing.assert_close(parts.sum(0), cache["resid_post", model.cfg.n_layers - 1][:, 0], atol=1e-5, rtol=0)


def test_stack_head_results_rebuilds_attention_outputs_from_z(tiny_vit):
    model = tiny_vit
    _, cache = cached(model)
    heads, labels = cache.stack_head_results(layer=-1, pos_slice=0, return_labels=True)
    H = model.cfg.n_heads
    assert heads.shape == (model.cfg.n_layers * H, 3, model.cfg.d_model) and labels[H + 1] == "L1H1"
    for layer in range(model.cfg.n_layers):
        rebuilt = heads[layer * H : (layer + 1) * H].sum(0) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(rebuilt, cache["attn_out", layer][:, 0], atol=1e-5, rtol=0)


def test_logit_attrs_give_exact_direct_logit_attribution(tiny_vit):
    model = tiny_vit
    logits, cache = cached(model)
    classes = torch.tensor([1, 3, 4])
    stack = cache.decompose_resid(layer=-1, pos_slice=0)
    attrs = cache.logit_attrs(stack, tokens=classes, pos_slice=0)
    constant = model.ln_final.b @ model.W_H[:, classes] + model.b_H[classes]
    torch.testing.assert_close(attrs.sum(0) + constant, logits[torch.arange(3), classes], atol=1e-5, rtol=0)


def test_class_names_work_as_tokens(tiny_vit):
    model = tiny_vit
    model.class_names = ["round", "cigar", "edge", "spiral", "bar"]
    direction = model.tokens_to_residual_directions("edge")
    torch.testing.assert_close(direction, model.W_H[:, 2] * model.ln_final.w)


def test_accumulated_resid_with_ln_recovers_the_logits_at_the_end(tiny_vit):
    model = tiny_vit
    logits, cache = cached(model)
    acc = cache.accumulated_resid(layer=-1, apply_ln=True, pos_slice=0)
    assert acc.shape[0] == model.cfg.n_layers + 1
    torch.testing.assert_close(acc[-1] @ model.W_H + model.b_H, logits, atol=1e-5, rtol=0)
