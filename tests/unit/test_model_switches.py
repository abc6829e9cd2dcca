"""transformer_lens' switches on HookedViT (use_split_qkv_input, use_attn_in, use_hook_mlp_in), the run-time
config fields its tools read, accumulated_bias and the residual decompositions built on it."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching
from einops import einsum

from tests.helpers.models import seeded_images, tiny_config, tiny_model
from vitmech.analysis.ablation import head_sweep
from vitmech.weight_processing import process_weights

SWITCHES = {
    "split_qkv": ("set_use_split_qkv_input", ["hook_q_input", "hook_k_input", "hook_v_input"]),
    "attn_in": ("set_use_attn_in", ["hook_attn_in"]),
    "mlp_in": ("set_use_hook_mlp_in", ["hook_mlp_in"]),
}


def _models():
    raw = tiny_model(seed=1)
    return {"raw": raw, "processed": process_weights(raw)}


@pytest.mark.parametrize("weights", ["raw", "processed"])
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_switch_leaves_outputs_unchanged_and_fires_its_hooks(weights, switch):
    model = _models()[weights]
    images = seeded_images(2, 32, seed=3)
    with torch.no_grad():
        before, cache_off = model.run_with_cache(images)
        setter, hooks = SWITCHES[switch]
        getattr(model, setter)(True)
        after, cache_on = model.run_with_cache(images)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    cfg, P, H, d = model.cfg, model.cfg.n_tokens, model.cfg.n_heads, model.cfg.d_model
    for layer in range(cfg.n_layers):
        for hook in hooks:
            name = f"blocks.{layer}.{hook}"
            assert name not in cache_off.cache_dict
            expected = (2, P, d) if hook == "hook_mlp_in" else (2, P, H, d)
            assert cache_on[name].shape == expected
            source = cache_on[
                f"blocks.{layer}.hook_resid_mid" if hook == "hook_mlp_in" else f"blocks.{layer}.hook_resid_pre"
            ]
            copies = cache_on[name] if hook == "hook_mlp_in" else cache_on[name][:, :, H - 1]
            torch.testing.assert_close(copies, source)
        torch.testing.assert_close(cache_on[f"blocks.{layer}.attn.hook_z"], cache_off[f"blocks.{layer}.attn.hook_z"])
    getattr(model, setter)(False)
    assert not any(getattr(model.cfg, f"use_{n}") for n in ("split_qkv_input", "attn_in", "hook_mlp_in"))


def test_split_switches_are_mutually_exclusive_and_mirrored_in_cfg(tiny_vit):
    model = tiny_vit
    model.set_use_split_qkv_input(True)
    assert model.cfg.use_split_qkv_input and model.blocks[0].use_split_qkv_input
    with pytest.raises(ValueError, match="mutually exclusive"):
        model.set_use_attn_in(True)
    model.set_use_split_qkv_input(False)
    model.set_use_attn_in(True)
    with pytest.raises(ValueError, match="mutually exclusive"):
        model.set_use_split_qkv_input(True)
    # run-time fields never enter equality or the saved config
    assert model.cfg == tiny_config() and "use_attn_in" not in model.cfg.to_dict()
    assert model.cfg.n_ctx == model.cfg.n_tokens and model.cfg.n_key_value_heads is None


def test_cfg_device_follows_the_model(tiny_vit):
    model = tiny_vit
    assert model.cfg.device == model.device
    model.set_use_hook_mlp_in(True)
    model.to(torch.float64)
    assert model.cfg.device == model.device and model.cfg.use_hook_mlp_in


def test_patching_one_heads_key_input_matches_a_manual_computation():
    """Split qkv: head h of layer l reads its keys from the corrupted resid_pre; all else clean."""
    model = tiny_model(seed=2)
    layer, head = 1, 2
    clean, corrupted = seeded_images(2, 32, seed=4), seeded_images(2, 32, seed=5)
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=[name])
        model.set_use_split_qkv_input(True)

        def patch_key_input(k_input, hook):
            k_input[:, :, head] = corrupted_cache[name]
            return k_input

        patched = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.hook_k_input", patch_key_input)])
        model.set_use_split_qkv_input(False)

        # manual: the same block written out, keys of one head from the corrupted stream
        resid = model(clean, stop_at_layer=layer)
        block, attn = model.blocks[layer], model.blocks[layer].attn
        x, x_bad = block.ln1(resid), block.ln1(corrupted_cache[name])
        q = einsum(x, attn.W_Q, "b p d, h d e -> b p h e") + attn.b_Q
        k = einsum(x, attn.W_K, "b p d, h d e -> b p h e") + attn.b_K
        k[:, :, head] = x_bad @ attn.W_K[head] + attn.b_K[head]
        v = einsum(x, attn.W_V, "b p d, h d e -> b p h e") + attn.b_V
        pattern = torch.softmax(einsum(q, k, "b q h e, b k h e -> b h q k") / attn.d_head**0.5, dim=-1)
        z = einsum(pattern, v, "b h q k, b k h e -> b q h e")
        resid_mid = resid + einsum(z, attn.W_O, "b p h e, h e d -> b p d") + attn.b_O
        resid_post = resid_mid + block.mlp(block.ln2(resid_mid))
        manual = model(resid_post, start_at_layer=layer + 1)
        unpatched = model(clean)
    torch.testing.assert_close(patched, manual, atol=1e-5, rtol=0)
    assert (patched - unpatched).abs().max() > 1e-3  # the patch did something


@pytest.mark.parametrize("weights", ["raw", "processed"])
def test_full_resid_decomposition_sums_to_the_residual_stream(weights):
    model = _models()[weights]
    with torch.no_grad():
        _, cache = model.run_with_cache(seeded_images(2, 32, seed=6))
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    stack, labels = cache.get_full_resid_decomposition(return_labels=True)
    assert labels[-3:] == ["embed", "pos_embed", "bias"]
    assert stack.shape[0] == model.cfg.n_layers * (model.cfg.n_heads + model.cfg.d_mlp) + 3
    torch.testing.assert_close(stack.sum(0), final, atol=1e-4, rtol=0)
    whole = cache.get_full_resid_decomposition(expand_neurons=False)
    torch.testing.assert_close(whole.sum(0), final, atol=1e-4, rtol=0)
    mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=False)
    torch.testing.assert_close(mid.sum(0), cache["blocks.1.hook_resid_mid"], atol=1e-4, rtol=0)
    torch.testing.assert_close(cache.decompose_resid().sum(0), final, atol=1e-4, rtol=0)  # outputs carry biases


def test_accumulated_bias_closed_form_and_errors():
    model = tiny_model()
    torch.testing.assert_close(model.accumulated_bias(0), torch.zeros(model.cfg.d_model))
    expected = model.blocks[0].attn.b_O + model.blocks[0].mlp.b_out + model.blocks[1].attn.b_O
    torch.testing.assert_close(model.accumulated_bias(1, mlp_input=True), expected)
    torch.testing.assert_close(
        model.accumulated_bias(1, include_mlp_biases=False), model.blocks[0].attn.b_O, atol=0, rtol=0
    )
    with pytest.raises(IndexError):
        model.accumulated_bias(model.cfg.n_layers + 1)
    with pytest.raises(ValueError, match="mlp_input"):
        model.accumulated_bias(model.cfg.n_layers, mlp_input=True)
    with pytest.raises(NotImplementedError, match="pre-norm"):
        tiny_model(pre_norm=True).accumulated_bias(1)


def test_cache_logit_lens_reproduces_the_logits_at_the_class_token():
    model = tiny_model(seed=3)
    with torch.no_grad():
        logits, cache = model.run_with_cache(seeded_images(2, 32, seed=7))
    lens = cache.logit_lens(positions=0, return_type="logits")
    values = lens.readout.values if hasattr(lens, "readout") else lens.values
    assert values.shape[0] == model.cfg.n_layers + 1
    torch.testing.assert_close(values[-1], logits, atol=1e-5, rtol=0)


def test_transformer_lens_patching_runs_on_hooked_vit():
    model = tiny_model(seed=4)
    clean, corrupted = seeded_images(2, 32, seed=8), seeded_images(2, 32, seed=9)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)

    def metric(logits):
        return (logits[:, 0] - logits[:, 1]).mean()

    with torch.no_grad():
        heads = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
        assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)

        def patch(z, hook):  # layer 1, head 3, every position
            z[:, :, 3] = clean_cache["blocks.1.attn.hook_z"][:, :, 3]
            return z

        manual = metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_z", patch)]))
        torch.testing.assert_close(heads[1, 3], manual)
        path = tl_patching.get_act_patch_direct_path(
            model,
            corrupted,
            clean_cache,
            corrupted_cache,
            metric,
            src_layer=0,
            src_head=1,
            component="k",
            verbose=False,
        )
    assert path.shape == (model.cfg.n_layers, model.cfg.n_heads) and not model.cfg.use_split_qkv_input
    assert path[1:].abs().sum() > 0


def test_exact_ablation_engine_is_unaffected_by_the_switches():
    """The engine recomputes blocks without hook points; the switches only add hook points, so a sweep
    with them on equals one with them off (and the naive hooked engine agrees)."""
    model = tiny_model(seed=5)
    images = seeded_images(4, 32, seed=10)
    off = head_sweep(model, images, "kl_to_clean", progress=False).grid("delta")
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    on = head_sweep(model, images, "kl_to_clean", progress=False).grid("delta")
    naive = head_sweep(model, images, "kl_to_clean", progress=False, engine="naive").grid("delta")
    torch.testing.assert_close(torch.as_tensor(on), torch.as_tensor(off), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.as_tensor(naive), torch.as_tensor(off), atol=1e-4, rtol=0)


@pytest.mark.parametrize("weights", ["raw", "processed"])
def test_refactor_factored_attn_matrices_keeps_circuits_and_outputs(weights):
    from vitmech.weight_processing import refactor_factored_attn_matrices

    model = _models()[weights]
    images = seeded_images(2, 32, seed=13)
    refactored = refactor_factored_attn_matrices(model)
    torch.testing.assert_close(refactored(images), model(images), atol=1e-4, rtol=0)
    with torch.no_grad():
        _, before = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_attn_scores"))
        _, after = refactored.run_with_cache(images, names_filter=lambda n: n.endswith("hook_attn_scores"))
    for name in before.cache_dict:
        torch.testing.assert_close(after[name], before[name], atol=1e-4, rtol=0)
    torch.testing.assert_close(refactored.OV.AB, model.OV.AB, atol=1e-5, rtol=0)
    w_o = refactored.W_O  # [layer, head, d_head, d_model]: orthonormal rows
    eye = torch.eye(model.cfg.d_head).expand(*w_o.shape[:2], -1, -1)
    torch.testing.assert_close(w_o @ w_o.transpose(-1, -2), eye, atol=1e-5, rtol=0)
    assert (refactored.b_V == 0).all()
    # even split: each direction's query and key columns (bias row included) have the same norm, sqrt(S)
    q_eff = torch.cat([refactored.W_Q, refactored.b_Q[:, :, None]], dim=-2)
    k_eff = torch.cat([refactored.W_K, refactored.b_K[:, :, None]], dim=-2)
    torch.testing.assert_close(q_eff.norm(dim=-2), k_eff.norm(dim=-2), atol=1e-4, rtol=1e-4)
