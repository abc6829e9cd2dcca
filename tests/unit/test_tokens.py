"""vitmech.tokens and the analyses that use it, on layouts with more than one prefix token (registers, a
distillation token) and without a class token, against plain loops with the positions written out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitmech.analysis.attention import (
    AttentionSettings,
    attention_metrics,
    cls_attention,
    mean_attention_distance,
    patch_distances,
    token_attention,
)
from vitmech.analysis.circuits import PositionalQK
from vitmech.analysis.compare import _stream_rows
from vitmech.analysis.rollout import (
    attention_flow,
    discard_lowest,
    fuse_heads,
    gradient_rollout,
    max_flow_values,
    residual_attention,
    rollout,
)
from vitmech.config import ViTConfig
from vitmech.tokens import READOUT, TokenLayout, layout_for, token_layout
from vitmech.train.heads import interpolate_positions

# class + 4 registers + 3x3 patches (P = 14); DeiT class + distillation (P = 11); no class token (P = 9)
REGISTERS = TokenLayout(n_prefix=5, grid=(3, 3), class_index=0, n_registers=4)
DISTILLED = TokenLayout(n_prefix=2, grid=(3, 3), class_index=0, distill_index=1)
POOLED = TokenLayout(n_prefix=0, grid=(3, 3), class_index=None)
LAYOUTS = [REGISTERS, DISTILLED, POOLED]


def random_patterns(layout: TokenLayout, shape=(2, 3, 2), seed: int = 0) -> torch.Tensor:
    """Peaked row-stochastic patterns [*shape, P, P] in float64."""
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(*shape, layout.n_tokens, layout.n_tokens, generator=g, dtype=torch.float64)
    return scores.softmax(-1)


def config(**changes) -> ViTConfig:
    base = dict(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, image_size=32, patch_size=8)
    return ViTConfig(**{**base, **changes})


# ------------------------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    ("changes", "n_prefix", "class_index", "registers"),
    [
        ({}, 1, 0, range(1, 1)),
        ({"n_register_tokens": 4}, 5, 0, range(1, 5)),
        ({"distill_token": True}, 2, 0, range(2, 2)),
        ({"distill_token": True, "n_register_tokens": 2}, 4, 0, range(2, 4)),
        ({"class_token": False, "pool": "avg"}, 0, None, range(0, 0)),
        ({"class_token": False, "pool": "map", "n_register_tokens": 3}, 3, None, range(0, 3)),
    ],
)
def test_layout_from_config(changes, n_prefix, class_index, registers):
    cfg = config(**changes)
    layout = token_layout(cfg)
    assert layout.n_prefix == n_prefix == cfg.n_prefix_tokens
    assert layout.class_index == class_index
    assert layout.n_tokens == cfg.n_tokens and layout.grid == (4, 4)
    assert list(range(cfg.n_tokens)[layout.register_slice]) == list(registers)
    x = torch.arange(cfg.n_tokens * 2.0).reshape(1, cfg.n_tokens, 2)
    assert torch.equal(torch.cat([layout.prefix(x), layout.patches(x)], 1), x)
    assert torch.equal(layout.registers(x), x[:, registers.start : registers.stop])
    assert layout.patches(x).shape[1] == 16


def test_readout_is_the_class_token_or_the_patch_mean_and_matches_its_weights():
    x = torch.randn(2, REGISTERS.n_tokens, 3, dtype=torch.float64)
    assert torch.equal(REGISTERS.readout(x, 1), x[:, 0])
    pooled = torch.randn(2, POOLED.n_tokens, 3, dtype=torch.float64)
    torch.testing.assert_close(POOLED.readout(pooled, 1), pooled.mean(1))
    for layout, values in ((REGISTERS, x), (POOLED, pooled)):
        w = layout.readout_weights(torch.float64)
        torch.testing.assert_close(torch.einsum("t,btd->bd", w, values), layout.readout(values, 1))
    assert REGISTERS.readout_name == "class token" and POOLED.readout_name == "mean over patches"


def test_pad_prefix_inverts_patches_and_positions_count_from_the_prefix():
    block = torch.randn(4, 9, 9)
    padded = REGISTERS.pad_prefix(block, dims=(-2, -1))
    assert padded.shape == (4, 14, 14)
    assert torch.equal(padded[:, 5:, 5:], block) and not padded[:, :5].any() and not padded[:, :, :5].any()
    assert REGISTERS.patch_position(0, 0) == 5 and REGISTERS.patch_position(2, 1) == 5 + 7
    with pytest.raises(IndexError, match="outside the 3x3 grid"):
        REGISTERS.patch_position(3, 0)


def test_errors_name_what_went_wrong():
    with pytest.raises(ValueError, match="direct logit attribution reads the class token"):
        POOLED.require_class_token("direct logit attribution")
    with pytest.raises(ValueError, match="not 1 class token"):
        TokenLayout.standard(14)
    with pytest.raises(ValueError, match="has 10 tokens, but the layout has 14"):
        layout_for(10, REGISTERS)
    with pytest.raises(ValueError, match="inconsistent"):
        TokenLayout(n_prefix=3, grid=(2, 2), class_index=0, n_registers=1)
    with pytest.raises(TypeError, match="HookedViT, ViTConfig or TokenLayout"):
        token_layout("vit")
    assert layout_for(10) == TokenLayout.standard(grid_size=3)


def test_rows_of_a_position_table_that_skips_prefix_tokens():
    assert REGISTERS.for_rows(14) == REGISTERS
    assert REGISTERS.for_rows(10) == TokenLayout(n_prefix=1, grid=(3, 3))
    assert REGISTERS.for_rows(9).n_prefix == 0
    with pytest.raises(ValueError, match="12 rows"):
        REGISTERS.for_rows(12)


# ------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("layout", LAYOUTS, ids=["registers", "distilled", "pooled"])
def test_cls_attention_and_distance_against_loops(layout):
    patterns = random_patterns(layout)
    n0, n = layout.n_prefix, layout.n_patches
    got = cls_attention(patterns, layout=layout)
    if layout.class_index is not None:
        row = patterns[..., layout.class_index, n0:]
    else:
        row = sum(patterns[..., n0 + i, n0:] for i in range(n)) / n
    torch.testing.assert_close(got, row / row.sum(-1, keepdim=True))
    # mean attention distance: loop over query and key patches
    dist = patch_distances(3, 8.0, torch.float64)
    expected = torch.zeros(patterns.shape[:-2], dtype=torch.float64)
    for i in range(n):
        weights = patterns[..., n0 + i, n0:]
        expected += (weights * dist[i]).sum(-1) / weights.sum(-1) / n
    torch.testing.assert_close(mean_attention_distance(patterns, 8.0, layout=layout), expected)
    own = {  # the config with this layout: the metrics read patch size and layout from it
        REGISTERS: config(image_size=24, n_register_tokens=4),
        DISTILLED: config(image_size=24, distill_token=True),
        POOLED: config(image_size=24, class_token=False, pool="map"),
    }[layout]
    metrics = attention_metrics(patterns, own, AttentionSettings(k=3), layout=layout)
    torch.testing.assert_close(metrics.mean_distance, expected)
    assert metrics.query == layout.readout_name
    assert metrics.cls_entropy.shape == (2, 3, 2)


def test_token_attention_picks_a_register_row():
    patterns = random_patterns(REGISTERS)
    row = token_attention(patterns, 3, renormalise=False, layout=REGISTERS)
    torch.testing.assert_close(row, patterns[..., 3, 5:])
    assert torch.equal(token_attention(patterns, READOUT, layout=REGISTERS), cls_attention(patterns, layout=REGISTERS))


def test_patterns_without_their_layout_fail_clearly():
    with pytest.raises(ValueError, match="pass the model's layout"):
        cls_attention(random_patterns(REGISTERS))


def test_cls_patch_distribution_follows_the_layout():
    pattern = random_patterns(REGISTERS, shape=(2, 2))
    expected = pattern[:, :, 0, 5:] / pattern[:, :, 0, 5:].sum(-1, keepdim=True)
    torch.testing.assert_close(cls_attention(pattern, layout=REGISTERS), expected)


# ------------------------------------------------------------------------------------------- rollout


def full_rollout(patterns: torch.Tensor, alpha: float) -> torch.Tensor:
    """R = A_L ... A_1 per image by a plain loop over layers, every row."""
    b, n_layers, _, p, _ = patterns.shape
    out = torch.empty(b, p, p, dtype=patterns.dtype)
    for image in range(b):
        r = torch.eye(p, dtype=patterns.dtype)
        for layer in range(n_layers):
            a = alpha * patterns[image, layer].mean(0) + (1 - alpha) * torch.eye(p, dtype=patterns.dtype)
            r = (a / a.sum(-1, keepdim=True)) @ r
        out[image] = r
    return out


@pytest.mark.parametrize("layout", LAYOUTS, ids=["registers", "distilled", "pooled"])
def test_rollout_readout_row_is_the_class_row_or_the_mean_of_the_patch_rows(layout):
    patterns = random_patterns(layout)
    r = full_rollout(patterns, 0.5)
    n0 = layout.n_prefix
    if layout.class_index is not None:
        expected = r[:, layout.class_index]
    else:
        expected = r[:, n0:].mean(1)
    result = rollout(patterns, 0.5, tokens=[READOUT], layout=layout)
    torch.testing.assert_close(result.row(), expected)
    torch.testing.assert_close(result.map(renormalise=False), expected[:, n0:])
    assert result.grid().shape == (2, 3, 3)
    if layout.class_index is not None:  # "readout" and the class position are one row
        torch.testing.assert_close(result.row(layout.class_index), expected)
    # all rows, then the readout weights by hand
    every = rollout(patterns, 0.5, layout=layout)
    torch.testing.assert_close(every.rows, r)


def test_gradient_rollout_readout_without_a_class_token():
    patterns, gradients = random_patterns(POOLED), random_patterns(POOLED, seed=1) - 0.1
    full = gradient_rollout(patterns, gradients, layout=POOLED)
    pooled = gradient_rollout(patterns, gradients, tokens=[READOUT], layout=POOLED)
    torch.testing.assert_close(pooled.row(), full.rows.mean(1))


def test_discard_keeps_the_class_entry_at_its_position_only():
    layout = TokenLayout(n_prefix=2, grid=(2, 2), class_index=0, distill_index=1)
    fused = torch.full((1, 6, 6), 0.5)
    fused[0, 0, 0] = 0.0  # the lowest entry, kept anyway
    kept = discard_lowest(fused, 0.5, layout)
    assert kept[0, 0, 0] == 0.0 and (kept == 0).sum() == 18
    pooled = TokenLayout(n_prefix=0, grid=(2, 3), class_index=None)
    fused = torch.arange(36.0).reshape(1, 6, 6)
    assert (discard_lowest(fused, 0.5, pooled) == 0).sum() == 18  # no entry spared


def test_flow_from_the_patch_mean_against_networkx_and_a_closed_form():
    patterns = random_patterns(POOLED, shape=(1, 2, 2))
    capacities = residual_attention(fuse_heads(patterns, "mean"), 0.5)[0].numpy()
    weights = POOLED.readout_weights(torch.float64).numpy()
    scipy = max_flow_values(capacities, weights, backend="scipy")
    exact = max_flow_values(capacities, weights, backend="networkx")
    np.testing.assert_allclose(scipy, exact, atol=1e-5)
    # identity attention: each patch keeps its 1/N, nothing else moves
    identity = torch.eye(9, dtype=torch.float64).expand(1, 2, 2, 9, 9).contiguous()
    flow = attention_flow(identity, alpha=1.0, progress=False, layout=POOLED)
    torch.testing.assert_close(flow.row(), torch.full((1, 9), 1 / 9, dtype=torch.float64))
    assert flow.settings["readout"] == "mean over patches"


def test_flow_readout_with_a_class_token_is_the_class_row():
    patterns = random_patterns(REGISTERS, shape=(1, 2, 2))
    by_name = attention_flow(patterns, READOUT, progress=False, layout=REGISTERS)
    by_position = attention_flow(patterns, 0, progress=False, layout=REGISTERS)
    torch.testing.assert_close(by_name.rows, by_position.rows)


# ------------------------------------------------------------------------------------------- others


def test_cka_rows_by_layout():
    stream = torch.randn(2, 14, 4)
    assert torch.equal(_stream_rows(stream, "cls", REGISTERS), stream[:, 0])
    assert torch.equal(_stream_rows(stream, "patches", REGISTERS), stream[:, 5:].reshape(-1, 4))
    with pytest.raises(ValueError, match="CKA on the class token"):
        _stream_rows(torch.randn(2, 9, 4), "cls", POOLED)


def test_positional_queries_with_registers():
    scores = torch.randn(1, 1, 14, 14)
    pqk = PositionalQK(scores=scores, mode="raw", scaled=True, grid_size=3, patch_size=8, layout=REGISTERS)
    torch.testing.assert_close(pqk.query_grid(0, 0, "centre"), scores[0, 0, 5 + 4, 5:].reshape(3, 3))
    torch.testing.assert_close(pqk.query_grid(0, 0, (2, 0)), scores[0, 0, 5 + 6, 5:].reshape(3, 3))
    torch.testing.assert_close(pqk.query_grid(0, 0, "cls"), scores[0, 0, 0, 5:].reshape(3, 3))
    assert pqk.query_patch("centre") == 4 and pqk.query_patch("cls") is None
    assert pqk.locality().mean_distance_px.shape == (1, 1)
    pooled = PositionalQK(scores=torch.randn(1, 1, 9, 9), mode="raw", scaled=True, grid_size=3, patch_size=8)
    pooled.layout = POOLED
    with pytest.raises(ValueError, match="has none"):
        pooled.query_grid(0, 0, "cls")


@pytest.mark.parametrize("n_prefix", [0, 1, 5])
def test_interpolated_positions_keep_the_prefix_rows(n_prefix):
    layout = TokenLayout(n_prefix=n_prefix, grid=(4, 4), class_index=None, n_registers=n_prefix)
    w_pos = torch.randn(n_prefix + 16, 6)
    out = interpolate_positions(w_pos, 6, layout=layout)
    assert out.shape == (n_prefix + 36, 6)
    assert torch.equal(out[:n_prefix], w_pos[:n_prefix])
    reference = interpolate_positions(torch.cat([torch.zeros(1, 6), w_pos[n_prefix:]]), 6)  # standard layout
    torch.testing.assert_close(out[n_prefix:], reference[1:])


def test_an_average_pooled_model_with_a_class_token_reads_the_patch_mean():
    layout = TokenLayout(n_prefix=1, grid=(3, 3), mean_readout=True)
    if hasattr(ViTConfig, "pool"):  # the pooling field of the model core
        assert token_layout(config(pool="avg")).mean_readout
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    torch.testing.assert_close(layout.readout(x, 1), x[:, 1:].mean(1))
    assert layout.readout_index is None and layout.readout_name == "mean over patches"
    assert layout.require_class_token("a class-token map") == 0  # the class token is still there
    patterns = random_patterns(layout)
    result = rollout(patterns, 0.5, tokens=[READOUT], layout=layout)
    torch.testing.assert_close(result.row(), full_rollout(patterns, 0.5)[:, 1:].mean(1))
    with pytest.raises(KeyError):
        result.row(0)  # the class row was not computed: "readout" is not the class token here
