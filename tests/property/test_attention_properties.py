"""Properties of the attention metrics and the rollout family that must hold for any input (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.models import geometry_config
from vitmech.analysis.attention import (
    AttentionSettings,
    attention_entropy,
    attention_metrics,
    cls_attention,
    mean_attention_distance,
    top_k_concentration,
)
from vitmech.analysis.compare import CKAAccumulator, linear_cka
from vitmech.analysis.rollout import (
    discard_lowest,
    fuse_heads,
    gmar,
    residual_attention,
    rollout,
    rollout_from_fused,
)
from vitmech.analysis.stats import holm

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def row_stochastic(draw, max_layers: int = 4, max_heads: int = 3, grids=(1, 2, 3)):
    """Random patterns [B, L, H, P, P]: softmax of scaled logits (from near-uniform to one-hot), with some
    entries exactly zero."""
    b = draw(st.integers(1, 2))
    n_layers = draw(st.integers(1, max_layers))
    heads = draw(st.integers(1, max_heads))
    g = draw(st.sampled_from(grids))
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 30.0]))
    zero_fraction = draw(st.sampled_from([0.0, 0.3]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    p = 1 + g * g
    logits = torch.randn(b, n_layers, heads, p, p, generator=gen, dtype=torch.float64) * scale
    mask = torch.rand(b, n_layers, heads, p, p, generator=gen, dtype=torch.float64) < zero_fraction
    mask[..., 0] = False  # keep every row's CLS key so no row is all zeros
    return torch.softmax(logits.masked_fill(mask, -math.inf), dim=-1)


alphas = st.sampled_from([0.1, 0.5, 0.9, 1.0])
fusions = st.sampled_from(["mean", "max", "min"])
ratios = st.sampled_from([0.0, 0.2, 0.5, 0.9])


@SETTINGS
@given(row_stochastic(), alphas, fusions, ratios)
def test_rows_of_every_rollout_matrix_sum_to_one(patterns, alpha, fusion, ratio):
    fused = fuse_heads(patterns, fusion)
    layer_matrices = residual_attention(discard_lowest(fused, ratio), alpha)
    assert torch.allclose(layer_matrices.sum(-1), torch.ones(()).double(), atol=1e-12)
    assert (layer_matrices >= 0).all()
    result = rollout(patterns, alpha=alpha, head_fusion=fusion, discard_ratio=ratio)
    assert torch.allclose(result.rows.sum(-1), torch.ones(()).double(), atol=1e-10)
    cls_only = rollout(patterns, alpha=alpha, head_fusion=fusion, discard_ratio=ratio, tokens=[0])
    torch.testing.assert_close(cls_only.rows[:, 0], result.rows[:, 0])


@SETTINGS
@given(row_stochastic(), alphas, st.sampled_from(["l1", "l2"]), st.integers(0, 1000))
def test_gmar_rows_sum_to_one_and_head_weights_are_a_distribution(patterns, alpha, norm, seed):
    grads = torch.randn(patterns.shape, generator=torch.Generator().manual_seed(seed), dtype=patterns.dtype)
    result = gmar(patterns, grads, norm=norm, alpha=alpha)
    assert torch.allclose(result.rows.sum(-1), torch.ones(()).double(), atol=1e-10)
    assert torch.allclose(result.head_weights.sum(-1), torch.ones(()).double(), atol=1e-12)


@SETTINGS
@given(row_stochastic(), alphas, fusions)
def test_discard_ratio_zero_equals_plain_rollout(patterns, alpha, fusion):
    fused = fuse_heads(patterns, fusion)
    plain = residual_attention(fused, alpha)
    expected = plain[:, -1]
    for layer in range(patterns.shape[1] - 2, -1, -1):
        expected = expected @ plain[:, layer]
    result = rollout(patterns, alpha=alpha, head_fusion=fusion, discard_ratio=0.0)
    torch.testing.assert_close(result.rows, expected)
    assert torch.equal(discard_lowest(fused, 0.0), fused)


@SETTINGS
@given(row_stochastic(max_heads=1), st.integers(1, 4), fusions)
def test_fusing_identical_heads_returns_that_head(single, n_heads, fusion):
    repeated = single.expand(-1, -1, n_heads, -1, -1)
    torch.testing.assert_close(fuse_heads(repeated, fusion), single[:, :, 0])


@SETTINGS
@given(row_stochastic(grids=(2, 3, 4)), st.integers(0, 10_000), st.booleans())
def test_entropy_and_top_k_are_invariant_to_permuting_patches(patterns, seed, renormalise):
    n = patterns.shape[-1] - 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) + 1
    permuted = patterns[..., torch.cat([torch.tensor([0]), perm])]
    p, q = cls_attention(patterns, renormalise), cls_attention(permuted, renormalise)
    torch.testing.assert_close(attention_entropy(q), attention_entropy(p))
    k = min(3, n)
    torch.testing.assert_close(top_k_concentration(q, k), top_k_concentration(p, k))


@SETTINGS
@given(row_stochastic(grids=(2, 3)))
def test_entropy_of_head_mean_is_at_least_mean_of_head_entropies(patterns):
    grid = math.isqrt(patterns.shape[-1] - 1)
    metrics = attention_metrics(patterns, geometry_config(grid, 4), settings=AttentionSettings(k=1))
    assert (metrics.cls_entropy_head_mean >= metrics.cls_entropy.mean(-1) - 1e-9).all()
    assert (metrics.cls_entropy <= math.log(patterns.shape[-1] - 1) + 1e-9).all()
    assert (metrics.cls_entropy >= -1e-12).all()


@SETTINGS
@given(row_stochastic(grids=(2, 3, 4)), st.sampled_from([1, 8, 16]))
def test_mean_distance_is_between_zero_and_the_grid_diagonal(patterns, patch):
    g = math.isqrt(patterns.shape[-1] - 1)
    d = mean_attention_distance(patterns, patch)
    assert (d >= 0).all() and (d <= patch * (g - 1) * math.sqrt(2) + 1e-9).all()


@SETTINGS
@given(
    st.integers(3, 40),
    st.integers(1, 6),
    st.integers(1, 6),
    st.floats(0.01, 100) | st.floats(-100, -0.01),
    st.integers(0, 10_000),
)
def test_linear_cka_of_x_with_scaled_rotated_x_is_one(n, d, extra, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.rand(d, generator=gen, dtype=torch.float64).add(
        0.1
    )
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    y = scale * x @ q
    assert abs(linear_cka(x, y) - 1) < 1e-9
    # streamed in two batches, with a large common offset that the shifted accumulation must not lose
    offset = 1e6 * torch.randn(1, d, generator=gen, dtype=torch.float64)
    acc = CKAAccumulator()
    half = n // 2 or 1
    xs, ys = x + offset, y + offset @ q
    acc.update(xs[None, :half], ys[None, :half])
    if half < n:
        acc.update(xs[None, half:], ys[None, half:])
    assert abs(float(acc.result()[0]) - 1) < 1e-8
    # and CKA is in [0, 1] for any pair (Cauchy-Schwarz)
    z = torch.randn(n, d + extra, generator=gen, dtype=torch.float64)
    assert -1e-12 <= linear_cka(x, z) <= 1 + 1e-9


@SETTINGS
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_holm_adjusted_p_values_are_monotone_and_bounded(pvalues):
    adjusted = np.array(holm(pvalues))
    raw = np.array(pvalues)
    assert (adjusted >= raw - 1e-15).all() and (adjusted <= 1).all()
    order = np.argsort(raw, kind="stable")
    assert (np.diff(adjusted[order]) >= -1e-15).all()


@SETTINGS
@given(row_stochastic(max_layers=3), alphas)
def test_rollout_from_fused_matches_rollout_with_mean_fusion(patterns, alpha):
    torch.testing.assert_close(rollout_from_fused(patterns.mean(2), alpha).rows, rollout(patterns, alpha).rows)


def _uniform_over_patches(g: int, cls_mass: float, batch: int = 1) -> torch.Tensor:
    """[batch, P, P] patterns: every query puts cls_mass on the CLS key and the rest evenly on the patches."""
    n = g * g
    row = torch.full((n + 1,), (1.0 - cls_mass) / n, dtype=torch.float64)
    row[0] = cls_mass
    return row.expand(batch, n + 1, n + 1).clone()


@SETTINGS
@given(st.integers(1, 16), st.floats(0.0, 0.9), st.integers(1, 20))
def test_uniform_attention_gives_ln_n_entropy_and_k_over_n_concentration(g, cls_mass, k):
    """Closed forms on any grid and whatever mass the CLS key takes (renormalised away)."""
    n = g * g
    k = min(k, n)  # k > N is an error (tested in the unit tests)
    p = cls_attention(_uniform_over_patches(g, cls_mass), renormalise=True)
    assert p.shape[-1] == n
    assert float(attention_entropy(p)[0]) == pytest.approx(math.log(n), abs=1e-9)
    assert float(top_k_concentration(p, k)[0]) == pytest.approx(k / n, abs=1e-12)


@SETTINGS
@given(st.integers(1, 9), st.sampled_from([1, 8, 14, 16, 32]), st.floats(0.0, 0.9))
def test_uniform_attention_mean_distance_equals_a_naive_double_loop(g, patch, cls_mass):
    """Renormalised over the patch keys, uniform attention's mean distance is the grid's mean pairwise
    distance (computed here by plain loops over the g^2 x g^2 pairs); without renormalising it shrinks
    by the patch share."""
    cells = [(y, x) for y in range(g) for x in range(g)]
    pairwise = sum(math.dist(a, b) for a in cells for b in cells) / len(cells) ** 2 * patch
    patterns = _uniform_over_patches(g, cls_mass)
    renormalised = float(mean_attention_distance(patterns, patch, renormalise=True)[0])
    raw = float(mean_attention_distance(patterns, patch, renormalise=False)[0])
    assert renormalised == pytest.approx(pairwise, rel=1e-9, abs=1e-9)
    assert raw == pytest.approx(pairwise * (1.0 - cls_mass), rel=1e-9, abs=1e-9)


@SETTINGS
@given(st.integers(1, 12), st.sampled_from([8, 16, 32]), st.integers(1, 3))
def test_self_only_attention_has_distance_zero(g, patch, batch):
    n = g * g
    patterns = torch.eye(n + 1, dtype=torch.float64).expand(batch, n + 1, n + 1)
    assert torch.equal(mean_attention_distance(patterns, patch), torch.zeros(batch, dtype=torch.float64))
