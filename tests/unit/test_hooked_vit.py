"""HookedViT: hook names and shapes, hooks that change the forward pass, the two attention paths,
weight properties, layer slicing and input errors."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache, FactoredMatrix

from tests.helpers.models import seeded_images, tiny_config, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech import HookedViT, ImageInputError

B = 2


def expected_hook_shapes(cfg, batch: int) -> dict[str, tuple[int, ...]]:
    """Every hook of REFERENCE §1 with its shape (P tokens, H heads)."""
    P, d, H, e, m = cfg.n_tokens, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    shapes = {
        "hook_embed": (batch, P, d),
        "hook_pos_embed": (batch, P, d),
        "hook_full_embed": (batch, P, d),
        "ln_final.hook_scale": (batch, P, 1),
        "ln_final.hook_normalized": (batch, P, d),
        "hook_pooled": (batch, d),
    }
    if cfg.has_classifier:
        shapes["head.hook_logits"] = (batch, cfg.n_classes)
    if cfg.pre_norm:
        shapes.update(
            {"hook_ln_pre": (batch, P, d), "ln_pre.hook_scale": (batch, P, 1), "ln_pre.hook_normalized": (batch, P, d)}
        )
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        shapes.update(
            {
                b + "hook_resid_pre": (batch, P, d),
                b + "ln1.hook_scale": (batch, P, 1),
                b + "ln1.hook_normalized": (batch, P, d),
                b + "attn.hook_q": (batch, P, H, e),
                b + "attn.hook_k": (batch, P, H, e),
                b + "attn.hook_v": (batch, P, H, e),
                b + "attn.hook_attn_scores": (batch, H, P, P),
                b + "attn.hook_pattern": (batch, H, P, P),
                b + "attn.hook_z": (batch, P, H, e),
                b + "attn.hook_result": (batch, P, H, d),
                b + "hook_attn_out": (batch, P, d),
                b + "hook_resid_mid": (batch, P, d),
                b + "ln2.hook_scale": (batch, P, 1),
                b + "ln2.hook_normalized": (batch, P, d),
                b + "mlp.hook_pre": (batch, P, m),
                b + "mlp.hook_post": (batch, P, m),
                b + "hook_mlp_out": (batch, P, d),
                b + "hook_resid_post": (batch, P, d),
            }
        )
    return shapes


@pytest.mark.parametrize("pre_norm", [False, True])
def test_every_hook_name_and_shape_is_pinned(pre_norm):
    model = tiny_model(pre_norm=pre_norm)
    expected = expected_hook_shapes(model.cfg, B)
    switched = {  # fire only with transformer_lens' switches on (tests/unit/test_model_switches.py)
        f"blocks.{layer}.{hook}"
        for layer in range(model.cfg.n_layers)
        for hook in ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in")
    }
    assert set(model.hook_dict) == set(expected) | switched
    model.set_use_attn_result(True)
    with torch.no_grad():
        _, cache = model.run_with_cache(seeded_images(B, 32))
    assert isinstance(cache, ActivationCache)
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected


def test_default_cache_leaves_out_per_head_results_unless_asked(tiny_vit):
    model = tiny_vit
    x = seeded_images(B, 32)
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
        assert not any(k.endswith("hook_result") for k in cache)
        _, by_name = model.run_with_cache(x, names_filter=["blocks.1.attn.hook_result"])
        assert list(by_name.keys()) == ["blocks.1.attn.hook_result"]


def test_head_results_sum_to_attention_output(tiny_vit):
    model = tiny_vit
    model.set_use_attn_result(True)
    with torch.no_grad():
        _, cache = model.run_with_cache(seeded_images(B, 32))
    for layer in range(model.cfg.n_layers):
        rebuilt = cache["result", layer].sum(dim=2) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(rebuilt, cache["attn_out", layer], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(expected_hook_shapes(tiny_config(pre_norm=True), B)))
def test_a_hook_return_value_flows_on(name):
    """A hook that returns a changed tensor changes the output; one returning None changes nothing."""
    model = tiny_model(pre_norm=True)
    x = seeded_images(B, 32)
    with torch.no_grad():
        clean = model(x)
        observed = model.run_with_hooks(x, fwd_hooks=[(name, lambda t, hook: None)])
        # a position- and feature-dependent edit (a uniform shift or scale would vanish in a LayerNorm)
        changed = model.run_with_hooks(
            x, fwd_hooks=[(name, lambda t, hook: t + 0.5 * torch.sin(torch.arange(t.numel()).reshape(t.shape)))]
        )
    torch.testing.assert_close(observed, clean, atol=1e-6, rtol=0)
    assert (changed - clean).abs().max() > 1e-3, f"editing {name} did not change the logits"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(expected_hook_shapes(tiny_config(pre_norm=True), B)))
def test_an_in_place_hook_edit_changes_this_run_only(name, batch):
    """Editing the activation in place (README's style) works at any batch size and leaves the weights alone."""
    model = tiny_model(pre_norm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = seeded_images(batch, 32)

    def edit(t, hook):  # position- and feature-dependent (a LayerNorm would undo a uniform shift or scale)
        t.add_(0.5 * torch.sin(torch.arange(1, t.numel() + 1).reshape(t.shape)))
        return t

    with torch.no_grad():
        clean = model(x)
        edited = model.run_with_hooks(x, fwd_hooks=[(name, edit)])
        again = model(x)
    assert (edited - clean).abs().max() > 1e-4, f"editing {name} in place did not change the logits"
    torch.testing.assert_close(again, clean, atol=0, rtol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"an in-place edit of {name} changed the weight {key}"


def test_fused_and_explicit_attention_agree(tiny_vit):
    model = tiny_vit
    x = seeded_images(4, 32)
    with torch.no_grad():
        fused = model(x)
        model.set_attention_backend("explicit")
        explicit = model(x)
        model.set_attention_backend("auto")
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_pattern_is_row_stochastic_and_not_uniform(tiny_vit):
    model = tiny_vit
    with torch.no_grad():
        _, cache = model.run_with_cache(seeded_images(B, 32), names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
        assert pattern.max() > 3.0 / model.cfg.n_tokens  # test weights must make attention peaked


def test_stacked_weights_and_factored_circuits(tiny_vit):
    model = tiny_vit
    cfg = model.cfg
    L, H, d, e = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    assert model.W_Q.shape == model.W_K.shape == model.W_V.shape == (L, H, d, e)
    assert model.W_O.shape == (L, H, e, d)
    assert model.b_Q.shape == (L, H, e) and model.b_O.shape == (L, d)
    assert model.W_in.shape == (L, d, cfg.d_mlp) and model.W_out.shape == (L, cfg.d_mlp, d)
    assert model.W_pos.shape == (cfg.n_tokens, d) and model.W_H.shape == (d, cfg.n_classes)
    assert isinstance(model.QK, FactoredMatrix) and isinstance(model.OV, FactoredMatrix)
    torch.testing.assert_close(model.QK.AB, model.W_Q @ model.W_K.transpose(-1, -2))
    torch.testing.assert_close(model.OV.AB, model.W_V @ model.W_O)
    torch.testing.assert_close(model.W_Q[1], model.blocks[1].attn.W_Q)


def test_start_and_stop_at_layer_compose_to_the_full_forward(tiny_vit):
    model = tiny_vit
    x = seeded_images(B, 32)
    with torch.no_grad():
        full = model(x)
        resid = model(x, stop_at_layer=2)
        _, cache = model.run_with_cache(x, names_filter="blocks.2.hook_resid_pre")
        rest = model(resid, start_at_layer=2)
    torch.testing.assert_close(resid, cache["resid_pre", 2])
    torch.testing.assert_close(rest, full)


def test_return_types(tiny_vit):
    model = tiny_vit
    x = seeded_images(B, 32)
    with torch.no_grad():
        tokens = model(x, return_type="tokens")
        features = model(x, return_type="features")
        logits = model(x, return_type="logits")
        assert model(x, return_type=None) is None
    assert tokens.shape == (B, model.cfg.n_tokens, model.cfg.d_model)
    torch.testing.assert_close(features, tokens[:, 0])
    torch.testing.assert_close(logits, features @ model.W_H + model.b_H)


def test_headless_model_returns_features_and_refuses_logits():
    model = tiny_model(n_classes=0)
    x = seeded_images(B, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (B, model.cfg.d_model)
    with pytest.raises(AttributeError, match="no classifier head"):
        model(x, return_type="logits")


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 32, 32), r"\[batch, 3, 32, 32\].*add a batch axis"),
        (torch.zeros(2, 32, 32, 3), "channels last"),
        (torch.zeros(2, 1, 32, 32), r"expected images of shape \[batch, 3, 32, 32\], got \[2, 1, 32, 32\]"),
        (torch.zeros(2, 3, 64, 64), "takes 32px images"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float tensor.*preprocess"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.float64), "float64 but the model is torch.float32"),
        ([[0.0]], "takes a float tensor"),
    ],
)
def test_bad_images_get_a_clear_error(tiny_vit, bad, message):
    with runtime_checks_off(), pytest.raises(ImageInputError, match=message):
        tiny_vit(bad)


def test_nan_and_inf_inputs_are_refused_with_counts(tiny_vit):
    x = seeded_images(B, 32)
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 3, 4] = float("inf")
    with pytest.raises(ImageInputError, match="1 NaN and 1 infinite"):
        tiny_vit(x)


def test_layer_indices_out_of_range(tiny_vit):
    model = tiny_vit
    with pytest.raises(IndexError, match="stop_at_layer 7 is out of range"):
        model(seeded_images(B, 32), stop_at_layer=7)
    with pytest.raises(ImageInputError, match="residual stream"):
        model(seeded_images(B, 32), start_at_layer=1)


def test_init_is_seeded():
    a, b = HookedViT(tiny_config(), seed=3), HookedViT(tiny_config(), seed=3)
    c = HookedViT(tiny_config(), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_Q, c.W_Q)


def test_config_validation():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        tiny_config(image_size=30)
    with runtime_checks_off(), pytest.raises(ValueError, match="act_fn"):
        tiny_config(act_fn="swish")
