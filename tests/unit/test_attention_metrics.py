"""Attention metrics: reference values, naive-loop references, the hand-recomputed pattern, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from einops import einsum

from tests.helpers.models import geometry_config, seeded_images, tiny_model
from vitmech.analysis.attention import (
    AttentionMetrics,
    AttentionSettings,
    attention_entropy,
    attention_metrics,
    cls_attention,
    cls_attention_maps,
    collect_patterns,
    mean_attention_distance,
    patch_distances,
    stack_patterns,
    to_grid,
    token_attention,
    top_k_concentration,
)


def uniform(grid: int, over_patches: bool = True, batch: int = 1, heads: int = 2) -> torch.Tensor:
    """Patterns [B, 1, H, P, P] uniform over the patches (CLS key 0) or over all tokens."""
    p = 1 + grid * grid
    a = torch.zeros(batch, 1, heads, p, p, dtype=torch.float64)
    if over_patches:
        a[..., 1:] = 1.0 / (p - 1)
    else:
        a[:] = 1.0 / p
    return a


def shifted(grid: int, dy: int, dx: int) -> torch.Tensor:
    """Each patch attends to the patch (dy, dx) away (clamped at the border): [1, 1, 1, P, P]."""
    p = 1 + grid * grid
    a = torch.zeros(1, 1, 1, p, p, dtype=torch.float64)
    a[..., 0, 0] = 1
    for y in range(grid):
        for x in range(grid):
            ty, tx = min(max(y + dy, 0), grid - 1), min(max(x + dx, 0), grid - 1)
            a[..., 1 + y * grid + x, 1 + ty * grid + tx] = 1
    return a


# ----------------------------------------------------------------------------------- reference values


@pytest.mark.parametrize(("grid", "patch", "expected"), [(14, 16, 116.49), (7, 32, 115.50)])
def test_uniform_attention_gives_ln_n_top10_and_the_reference_distance(grid, patch, expected):
    n = grid * grid
    m = attention_metrics(uniform(grid), geometry_config(grid, patch), AttentionSettings(k=10))
    assert torch.allclose(m.cls_entropy, torch.tensor(math.log(n), dtype=torch.float64))
    assert torch.allclose(m.cls_entropy_head_mean, torch.tensor(math.log(n), dtype=torch.float64))
    assert torch.allclose(m.cls_top_k, torch.tensor(10 / n, dtype=torch.float64))
    assert round(float(m.mean_distance[0, 0, 0]), 2) == expected


def test_uniform_over_all_tokens_without_renormalising_is_115_90_px():
    a = uniform(14, over_patches=False)
    assert round(float(mean_attention_distance(a, 16, renormalise=False)[0, 0, 0]), 2) == 115.90
    assert round(float(mean_attention_distance(a, 16, renormalise=True)[0, 0, 0]), 2) == 116.49
    assert math.isclose(float(attention_entropy(cls_attention(a))[0, 0, 0]), math.log(196), rel_tol=1e-12)
    assert math.isclose(float(cls_attention(a, renormalise=False).sum(-1)[0, 0, 0]), 196 / 197, rel_tol=1e-12)


def test_self_only_attention_has_distance_zero_and_nearest_neighbour_16_px():
    assert float(mean_attention_distance(shifted(14, 0, 0), 16)) == 0.0
    # right neighbour everywhere except the last column (which attends to itself): 16 px * 13/14
    assert math.isclose(float(mean_attention_distance(shifted(14, 0, 1), 16)), 16 * 13 / 14, rel_tol=1e-12)
    # a genuine nearest-neighbour-only pattern: every patch splits its attention over its 4-neighbours
    p = 1 + 14 * 14
    a = torch.zeros(1, 1, 1, p, p, dtype=torch.float64)
    for y in range(14):
        for x in range(14):
            nbrs = [
                (y + dy, x + dx)
                for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))
                if 0 <= y + dy < 14 and 0 <= x + dx < 14
            ]
            for ny, nx in nbrs:
                a[..., 1 + y * 14 + x, 1 + ny * 14 + nx] = 1 / len(nbrs)
    assert math.isclose(float(mean_attention_distance(a, 16)), 16.0, rel_tol=1e-12)


def test_patch_distances_closed_form():
    d = patch_distances(3, 10, torch.float64)
    assert d.shape == (9, 9)
    assert d[0, 8] == pytest.approx(10 * math.sqrt(8))  # corner to corner
    assert d[4, 5] == 10 and torch.equal(d, d.T) and (d.diagonal() == 0).all()


# ----------------------------------------------------------------------------------- naive references


def test_metrics_equal_naive_loops_over_heads_and_queries():
    gen = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(2, 2, 3, 10, 10, generator=gen, dtype=torch.float64) * 2, -1)
    m = attention_metrics(a, geometry_config(3, 5), settings=AttentionSettings(k=3))
    coords = [(i // 3, i % 3) for i in range(9)]
    for b in range(2):
        for layer in range(2):
            for h in range(3):
                row = a[b, layer, h, 0, 1:].tolist()
                p = [v / sum(row) for v in row]
                assert m.cls_entropy[b, layer, h] == pytest.approx(-sum(v * math.log(v) for v in p), rel=1e-12)
                assert m.cls_top_k[b, layer, h] == pytest.approx(sum(sorted(p)[-3:]), rel=1e-12)
                total = 0.0
                for i in range(9):
                    keys = a[b, layer, h, 1 + i, 1:].tolist()
                    dist = [5 * math.dist(coords[i], coords[j]) for j in range(9)]
                    total += sum(w * d for w, d in zip(keys, dist)) / sum(keys)
                assert m.mean_distance[b, layer, h] == pytest.approx(total / 9, rel=1e-12)
            mean_row = [
                sum(a[b, layer, h, 0, 1 + j] / a[b, layer, h, 0, 1:].sum() for h in range(3)) / 3 for j in range(9)
            ]
            assert m.cls_entropy_head_mean[b, layer] == pytest.approx(
                -sum(float(v) * math.log(v) for v in mean_row), rel=1e-12
            )


def test_mean_distance_chunks_give_the_same_result_as_one_pass(monkeypatch):
    import vitmech.analysis.attention as attention

    a = torch.softmax(torch.randn(3, 4, 5, 17, 17, generator=torch.Generator().manual_seed(1)), -1)
    whole = mean_attention_distance(a, 8)
    monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", 17 * 17 * 3)  # 3 matrices per chunk, ragged end
    torch.testing.assert_close(mean_attention_distance(a, 8), whole)


def test_maps_and_grid_layout_are_row_major():
    a = torch.zeros(1, 1, 1, 5, 5)
    a[..., 0, 2] = 1.0  # CLS attends to patch 1 = (row 0, column 1)
    grid = cls_attention_maps(a)
    assert grid.shape == (1, 1, 1, 2, 2) and grid[0, 0, 0, 0, 1] == 1 and grid.sum() == 1
    assert torch.equal(to_grid(torch.arange(6.0)[None, :4]), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]))
    b = torch.zeros(1, 5, 5)
    b[0, 3, 4] = 2.0
    b[0, 3, 1] = 2.0
    assert torch.equal(token_attention(b, 3), torch.tensor([[0.5, 0.0, 0.0, 0.5]]))


# ----------------------------------------------------------------------------------- on a model


def test_entropy_from_hook_pattern_equals_entropy_of_attention_recomputed_by_hand():
    model = tiny_model(seed=3)
    images = seeded_images(3, 32, seed=4)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            images, names_filter=lambda n: n.endswith(("ln1.hook_normalized", "hook_pattern"))
        )
    patterns = collect_patterns(model, images, batch_size=2, progress=False)
    metrics = attention_metrics(patterns, model)
    for layer in range(model.cfg.n_layers):
        attn = model.blocks[layer].attn
        ln1 = model.blocks[layer].ln1
        x = cache[f"blocks.{layer}.ln1.hook_normalized"] * ln1.w + ln1.b  # the hook is before gain and bias
        q = einsum(x, attn.W_Q, "b p d, h d e -> b h p e") + attn.b_Q[None, :, None]
        k = einsum(x, attn.W_K, "b p d, h d e -> b h p e") + attn.b_K[None, :, None]
        by_hand = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(model.cfg.d_head), dim=-1)
        p = by_hand[:, :, 0, 1:] / by_hand[:, :, 0, 1:].sum(-1, keepdim=True)
        entropy = -(p * p.log()).sum(-1)
        torch.testing.assert_close(metrics.cls_entropy[:, layer], entropy, atol=1e-5, rtol=1e-5)
    assert metrics.cls_entropy.std() > 0.05, "the tiny model's heads should differ"


def test_collect_patterns_equals_the_cache_in_any_batching():
    model = tiny_model(seed=1)
    images = seeded_images(5, 32, seed=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_pattern"))
    stacked = stack_patterns(cache)
    assert stacked.shape == (5, 3, 4, 17, 17)
    torch.testing.assert_close(collect_patterns(model, images, batch_size=2, progress=False), stacked)
    cls_rows = collect_patterns(model, images, batch_size=3, rows="cls", layers=[-1, 0], progress=False)
    torch.testing.assert_close(cls_rows, stacked[:, [2, 0], :, 0])


def test_metrics_tables_and_concatenation():
    a = torch.softmax(torch.randn(4, 2, 3, 10, 10, generator=torch.Generator().manual_seed(5)), -1)
    cfg = geometry_config(3, 4)
    m = attention_metrics(a, cfg, AttentionSettings(k=2), layers=[3, 7], keep_cls_attention=True)
    frame = m.to_frame()
    assert list(frame["layer"]) == [3, 3, 3, 7, 7, 7] and list(frame["head"]) == [0, 1, 2] * 2
    assert frame["cls_entropy_mean"].iloc[4] == pytest.approx(float(m.cls_entropy[:, 1, 1].mean()))
    assert frame["cls_top2_std"].iloc[0] == pytest.approx(float(m.cls_top_k[:, 0, 0].std()))
    layers = m.layer_frame()
    assert layers["mean_distance_mean"].iloc[1] == pytest.approx(float(m.mean_distance[:, 1].mean()))
    assert len(m.image_frame()) == 4 * 2 * 3
    joined = AttentionMetrics.concat(
        [
            attention_metrics(a[:1], cfg, AttentionSettings(k=2), [3, 7], True),
            attention_metrics(a[1:], cfg, AttentionSettings(k=2), [3, 7], True),
        ]
    )
    torch.testing.assert_close(joined.cls_entropy, m.cls_entropy)
    torch.testing.assert_close(joined.cls_attention, m.cls_attention)
    assert m.to_dict()["settings"] == {
        "renormalise": True,
        "k": 2,
        "distance_renormalise": True,
        "entropy_unit": "nats",
        "distance_unit": "pixels",
    }


# ----------------------------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors(tiny_vit, unchecked_types):
    model = tiny_vit
    good = torch.softmax(torch.randn(1, 1, 1, 17, 17), -1)
    with pytest.raises(ValueError, match="stack_patterns"):
        attention_metrics(good[0], model)  # one layer from a cache: [B, H, P, P]
    with pytest.raises(ValueError, match="patterns has 16 tokens, but the layout has 17"):
        attention_metrics(torch.rand(1, 1, 1, 16, 16), model)  # not this model's patterns
    with pytest.raises(ValueError, match="square grid"):
        mean_attention_distance(torch.rand(1, 1, 1, 16, 16), 8)  # no model: the formula assumes a square grid
    with pytest.raises(ValueError, match="square"):
        cls_attention(torch.rand(2, 17, 16))
    with pytest.raises(TypeError, match="float tensor"):
        cls_attention(torch.ones(17, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds"):
        attention_metrics(good, model, AttentionSettings(k=17))
    with pytest.raises(ValueError, match="k must be"):
        AttentionSettings(k=0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 16\]"):
        top_k_concentration(torch.rand(16), 20)
    with pytest.raises(IndexError, match="out of range"):
        token_attention(good, 17)
    with pytest.raises(ValueError, match="batch_size"):
        collect_patterns(model, seeded_images(2, 32), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="rows"):
        collect_patterns(model, seeded_images(2, 32), rows="query", progress=False)
    with pytest.raises(IndexError, match="out of range"):
        collect_patterns(model, seeded_images(2, 32), layers=[3], progress=False)
    with pytest.raises(Exception, match="expected images"):
        collect_patterns(model, torch.randn(2, 3, 16, 16), progress=False)
    with torch.no_grad():
        _, cache = model.run_with_cache(seeded_images(1, 32), names_filter=lambda n: n.endswith("hook_z"))
    with pytest.raises(KeyError, match="names_filter"):
        stack_patterns(cache)
