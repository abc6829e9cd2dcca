"""pool="flatten": the head reads every final-normed patch token with its own weights (the chirp regressor's
readout). Checked against a per-patch loop, through save/load, and under the head-ablation sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import randomize_hooked_, seeded_images, tiny_config, tiny_model
from vitmech import HookedViT, ViTConfig
from vitmech.analysis.ablation import head_ablation_hooks, head_sweep, naive_head_sweep
from vitmech.errors import UnsupportedModelError
from vitmech.loading.export import timm_kwargs
from vitmech.tokens import token_layout
from vitmech.train.heads import with_new_head

TOL = 1e-4


def flat_model(seed: int = 0, **overrides) -> HookedViT:
    cfg = tiny_config(pool="flatten", n_classes=3, **overrides)
    return randomize_hooked_(HookedViT(cfg, seed=seed), seed).eval()


def per_patch_logits(model: HookedViT, images: torch.Tensor) -> torch.Tensor:
    """b_H + sum over patches n of LN_final(token_n) @ W_H[n * d : (n + 1) * d], one patch at a time."""
    resid = model(images, stop_at_layer=model.cfg.n_layers)
    d = model.cfg.d_model
    n_prefix = model.cfg.n_prefix_tokens  # this reference counts positions itself, from the config
    logits = model.head.b_H.expand(images.shape[0], -1).clone()
    for n in range(model.cfg.n_patches):
        token = model.ln_final(resid[:, n_prefix + n])
        logits = logits + token @ model.head.W_H[n * d : (n + 1) * d]
    return logits


def test_config_width_and_refusals():
    cfg = tiny_config(pool="flatten")
    assert cfg.pooled_dim == cfg.n_patches * cfg.d_model == 16 * 32
    assert tiny_config().pooled_dim == 32
    with pytest.raises(ValueError, match="flatten"):
        tiny_config(pool="flatten", final_norm="pooled")
    with pytest.raises(ValueError, match="flatten"):
        tiny_config(pool="flatten", n_classes=0, projection_dim=8)
    with pytest.raises(ValueError, match="fixed 4x4 patch grid"):
        cfg.at_image_size(64)
    with pytest.raises(UnsupportedModelError, match="flatten"):
        timm_kwargs(cfg)


@pytest.mark.parametrize("overrides", [{}, {"n_register_tokens": 2}, {"class_token": False}])
def test_forward_equals_a_per_patch_loop(overrides):
    model = flat_model(seed=1, **overrides)
    images = seeded_images(3, 32, seed=2)
    with torch.no_grad():
        logits = model(images)
        features = model(images, return_type="features")
        expected = per_patch_logits(model, images)
    assert model.head.W_H.shape == (16 * 32, 3) and features.shape == (3, 16 * 32)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert logits.abs().max() > 0.1  # a real signal, not a vacuous zero
    # the features are patch-major: patch n's final-normed token at n * d .. (n + 1) * d
    with torch.no_grad():
        tokens = token_layout(model).patches(model(images, return_type="tokens"), dim=1)
    torch.testing.assert_close(features.view(3, 16, 32), tokens)


def test_round_trip_through_save_pretrained(tmp_path):
    model = flat_model(seed=3)
    model.save_pretrained(tmp_path / "flat", card={"note": "x"})
    loaded = HookedViT.from_pretrained(str(tmp_path / "flat"))
    assert loaded.cfg == model.cfg and loaded.cfg.pool == "flatten"
    images = seeded_images(2, 32, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=0, rtol=0)
    assert ViTConfig.from_dict(model.cfg.to_dict()) == model.cfg


def test_with_new_head_switches_the_readout_and_keeps_the_backbone():
    source = tiny_model(seed=5)
    flat = with_new_head(source, 3, ["a", "b", "c"], task="regression", pool="flatten")
    assert flat.cfg.pool == "flatten" and flat.head.W_H.shape == (16 * 32, 3)
    images = seeded_images(2, 32, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(flat(images, return_type="tokens"), source(images, return_type="tokens"))
        assert flat(images).abs().max() == 0  # a zero head
    kept = with_new_head(flat, 2)
    assert kept.cfg.pool == "flatten"


def test_head_sweep_equals_the_naive_loop_on_a_flatten_model():
    model = flat_model(seed=7)
    images = seeded_images(6, 32, seed=8)
    targets = torch.randn(6, 3, generator=torch.Generator().manual_seed(9))
    kwargs = dict(targets=targets, batch_size=4, progress=False)
    exact = head_sweep(model, images, "mse", "zero", max_batch=4, **kwargs)
    naive = naive_head_sweep(model, images, "mse", "zero", **kwargs)
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)
    assert np.abs(exact.delta).max() > 1e-3
    # the naive loop itself, for one head: a hooked forward, then the MSE by hand
    with torch.no_grad():
        out = model.run_with_hooks(images, fwd_hooks=head_ablation_hooks(model, [(2, 1)], "zero"))
    index = naive.heads.index((2, 1))
    assert naive.ablated[index] == pytest.approx(float(((out - targets) ** 2).mean()), rel=1e-5)
