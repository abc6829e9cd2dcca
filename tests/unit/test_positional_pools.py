"""The position-keeping readouts: pool="flatten" (the head reads every final-normed patch token with its own
weights) and pool="rowcol" (the mean token of every grid row and column; the chirp regressor's readout).
Checked against per-patch loops, through save/load, and under the head-ablation sweep."""

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


POOLS = ["flatten", "rowcol"]


def flat_model(seed: int = 0, pool: str = "flatten", **overrides) -> HookedViT:
    cfg = tiny_config(pool=pool, n_classes=3, **overrides)
    return randomize_hooked_(HookedViT(cfg, seed=seed), seed).eval()


def per_patch_logits(model: HookedViT, images: torch.Tensor) -> torch.Tensor:
    """The head by hand, one patch at a time (positions counted from the config, row-major after the prefix):
    flatten: b_H + sum_n LN(token_n) @ W_H[n*d : (n+1)*d];
    rowcol: b_H + sum_i mean_j LN(token_ij) @ W_H[i*d : (i+1)*d] + sum_j mean_i LN(token_ij) @ W_H[(g+j)*d : ...]."""
    resid = model(images, stop_at_layer=model.cfg.n_layers)
    d, g = model.cfg.d_model, model.cfg.grid_size
    n_prefix = model.cfg.n_prefix_tokens
    weights = model.head.W_H
    logits = model.head.b_H.expand(images.shape[0], -1).clone()
    for i in range(g):
        for j in range(g):
            n = i * g + j
            token = model.ln_final(resid[:, n_prefix + n])
            if model.cfg.pool == "flatten":
                logits = logits + token @ weights[n * d : (n + 1) * d]
            else:
                row_weights = weights[i * d : (i + 1) * d]  # token (i, j) is 1/g of row i's mean ...
                column_weights = weights[(g + j) * d : (g + j + 1) * d]  # ... and 1/g of column j's
                logits = logits + token @ (row_weights + column_weights) / g
    return logits


def test_config_width_and_refusals():
    cfg = tiny_config(pool="flatten")
    assert cfg.pooled_dim == cfg.n_patches * cfg.d_model == 16 * 32
    assert tiny_config(pool="rowcol").pooled_dim == (4 + 4) * 32
    assert tiny_config().pooled_dim == 32
    with pytest.raises(ValueError, match="flatten"):
        tiny_config(pool="flatten", final_norm="pooled")
    with pytest.raises(ValueError, match="flatten"):
        tiny_config(pool="flatten", n_classes=0, projection_dim=8)
    with pytest.raises(ValueError, match="fixed 4x4 patch grid"):
        cfg.at_image_size(64)
    with pytest.raises(UnsupportedModelError, match="flatten"):
        timm_kwargs(cfg)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("overrides", [{}, {"n_register_tokens": 2}, {"class_token": False}])
def test_forward_equals_a_per_patch_loop(pool, overrides):
    model = flat_model(seed=1, pool=pool, **overrides)
    images = seeded_images(3, 32, seed=2)
    with torch.no_grad():
        logits = model(images)
        features = model(images, return_type="features")
        expected = per_patch_logits(model, images)
    width = model.cfg.pooled_dim
    assert model.head.W_H.shape == (width, 3) and features.shape == (3, width)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert logits.abs().max() > 0.1  # a real signal, not a vacuous zero
    with torch.no_grad():
        tokens = token_layout(model).patches(model(images, return_type="tokens"), dim=1).view(3, 4, 4, 32)
    if pool == "flatten":  # patch-major: patch n's final-normed token at n * d .. (n + 1) * d
        torch.testing.assert_close(features.view(3, 4, 4, 32), tokens)
    else:  # row 1's mean, then column 2's mean
        torch.testing.assert_close(features[:, 32:64], tokens[:, 1].mean(1))
        torch.testing.assert_close(features[:, (4 + 2) * 32 : (4 + 3) * 32], tokens[:, :, 2].mean(1))


@pytest.mark.parametrize("pool", POOLS)
def test_round_trip_through_save_pretrained(tmp_path, pool):
    model = flat_model(seed=3, pool=pool)
    model.save_pretrained(tmp_path / "flat", card={"note": "x"})
    loaded = HookedViT.from_pretrained(str(tmp_path / "flat"))
    assert loaded.cfg == model.cfg and loaded.cfg.pool == pool
    images = seeded_images(2, 32, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=0, rtol=0)
    assert ViTConfig.from_dict(model.cfg.to_dict()) == model.cfg


@pytest.mark.parametrize("pool", POOLS)
def test_with_new_head_switches_the_readout_and_keeps_the_backbone(pool):
    source = tiny_model(seed=5)
    flat = with_new_head(source, 3, ["a", "b", "c"], task="regression", pool=pool)
    assert flat.cfg.pool == pool and flat.head.W_H.shape == (flat.cfg.pooled_dim, 3)
    images = seeded_images(2, 32, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(flat(images, return_type="tokens"), source(images, return_type="tokens"))
        assert flat(images).abs().max() == 0  # a zero head
    kept = with_new_head(flat, 2)
    assert kept.cfg.pool == pool


@pytest.mark.parametrize("pool", POOLS)
def test_head_sweep_equals_the_naive_loop_on_a_positional_readout(pool):
    model = flat_model(seed=7, pool=pool)
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
