"""QK/OV circuits, singular directions, OV copying score, positional QK and its locality summary."""

from __future__ import annotations

import math

import pytest
import torch
from einops import einsum

from tests.helpers.models import tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.attention import mean_attention_distance, patch_distances
from vitmech.analysis.circuits import (
    PositionalQK,
    eigenvalue_copying_score,
    ov_circuits,
    ov_copying_scores,
    positional_qk,
    qk_circuits,
    top_singular_directions,
    uniform_distance_px,
)


def test_singular_directions_match_the_explicit_svd_and_reconstruct_the_circuit(tiny_vit):
    model = tiny_vit
    ov = ov_circuits(model)
    k = model.cfg.d_head
    sd = top_singular_directions(ov, k=k, name="OV")
    explicit = ov.AB.detach()
    torch.testing.assert_close(sd.values, torch.linalg.svdvals(explicit)[..., :k], atol=1e-4, rtol=1e-4)
    rebuilt = einsum(sd.input_directions * sd.values[..., None, :], sd.output_directions, "l h d k, l h f k -> l h d f")
    torch.testing.assert_close(rebuilt, explicit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sd.input_directions.norm(dim=-2), torch.ones_like(sd.values), atol=1e-5, rtol=0)
    frame = sd.to_frame()
    assert len(frame) == model.cfg.n_layers * model.cfg.n_heads * k
    shares = frame.groupby(["layer", "head"])["share_of_norm_sq"].sum()
    torch.testing.assert_close(
        torch.tensor(shares.values), torch.ones(len(shares), dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_top_singular_directions_rejects_a_k_above_the_rank(tiny_vit):
    qk = qk_circuits(tiny_vit)
    with pytest.raises(ValueError, match="rank is at most d_head"):
        top_singular_directions(qk, k=qk.mdim + 1)
    with pytest.raises(ValueError, match="per-head FactoredMatrix"):
        top_singular_directions(qk[0, 0], k=1)


def test_copying_score_is_one_for_a_copying_head_and_minus_one_for_a_negating_head(tiny_vit):
    model = tiny_vit
    with torch.no_grad():
        attn = model.blocks[1].attn
        attn.W_O.copy_(attn.W_V.transpose(-2, -1))  # OV = W_V W_V^T: positive semi-definite
        attn.W_O[1].copy_(-attn.W_V[1].T)  # head 1: negative semi-definite
    scores = ov_copying_scores(model).scores
    assert torch.allclose(scores[1, 0], torch.tensor(1.0), atol=1e-4)
    assert torch.allclose(scores[1, 1], torch.tensor(-1.0), atol=1e-4)


def test_copying_score_equals_the_score_of_the_explicit_matrix_eigenvalues():
    model = tiny_model(seed=3)
    explicit = ov_circuits(model).AB.detach().double()
    naive = eigenvalue_copying_score(torch.linalg.eigvals(explicit))
    torch.testing.assert_close(ov_copying_scores(model).scores.double(), naive, atol=1e-4, rtol=0)
    assert len(ov_copying_scores(model).to_frame()) == model.cfg.n_layers * model.cfg.n_heads


def test_raw_positional_qk_equals_a_loop_over_position_pairs():
    model = tiny_model(seed=1)
    pqk = positional_qk(model, mode="raw", scale=False)
    attn, W_pos = model.blocks[2].attn, model.W_pos.detach()
    h = 3
    for i in range(0, model.cfg.n_tokens, 4):
        for j in range(model.cfg.n_tokens):
            q = W_pos[i] @ attn.W_Q[h] + attn.b_Q[h]
            k = W_pos[j] @ attn.W_K[h] + attn.b_K[h]
            assert torch.allclose(pqk.scores[2, h, i, j], q @ k, atol=1e-4, rtol=1e-4)
    scaled = positional_qk(model, mode="raw", scale=True)
    torch.testing.assert_close(scaled.scores, pqk.scores / math.sqrt(model.cfg.d_head))


def test_query_grid_is_the_query_row_reshaped_row_major(tiny_vit):
    model = tiny_vit
    pqk = positional_qk(model)
    g = model.cfg.grid_size
    row, col = 1, 2
    grid = pqk.query_grid(layer=1, head=2, query=(row, col))
    expected = pqk.scores[1, 2, 1 + row * g + col, 1:]
    for r in range(g):
        for c in range(g):
            assert grid[r, c] == expected[r * g + c]
    torch.testing.assert_close(pqk.query_grid(1, 2, query=row * g + col), grid)
    assert pqk.query_grid(0, 0, query="cls").shape == (g, g)
    torch.testing.assert_close(pqk.query_grid(1, 2, "centre", softmax=True).sum(), torch.tensor(1.0))
    torch.testing.assert_close(pqk.query_grids((row, col), softmax=False)[1, 2], grid)
    frame = pqk.to_frame((row, col))
    assert len(frame) == model.cfg.n_layers * model.cfg.n_heads * g * g
    pick = frame[(frame["layer"] == 1) & (frame["head"] == 2) & (frame["key_row"] == 0) & (frame["key_col"] == 3)]
    assert pick["score"].item() == pytest.approx(float(grid[0, 3]))


@pytest.mark.parametrize(
    "query, error", [((9, 0), IndexError), (16, IndexError), (-1, IndexError), ("middle", TypeError), (True, TypeError)]
)
def test_bad_queries_are_rejected(tiny_vit, query, error):
    pqk = positional_qk(tiny_vit)
    with pytest.raises(error):
        pqk.query_grid(0, 0, query=query)


def test_positional_qk_rejects_an_unknown_mode_and_layer(tiny_vit):
    model = tiny_vit
    with runtime_checks_off(), pytest.raises(ValueError, match="'ln1' or 'raw'"):
        positional_qk(model, mode="ln2")
    with pytest.raises(IndexError):
        positional_qk(model, layers=[7])
    assert positional_qk(model, layers=[-1]).scores.shape[0] == 1


def test_attention_distance_matches_the_reference_values():
    """REFERENCE §2: uniform over 14x14 patches of 16 px 116.49 px (over all 197 tokens, unrenormalised 115.90);
    self-only 0; nearest-neighbour-only 16 px; uniform over 7x7 patches of 32 px 115.50 px."""
    n = 196
    uniform = torch.full((n + 1, n + 1), 1.0 / n)
    assert mean_attention_distance(uniform, 16).item() == pytest.approx(116.49, abs=0.01)
    assert mean_attention_distance(
        torch.full((n + 1, n + 1), 1.0 / (n + 1)), 16, renormalise=False
    ).item() == pytest.approx(115.90, abs=0.01)
    assert uniform_distance_px(14, 16) == pytest.approx(116.49, abs=0.01)
    assert uniform_distance_px(7, 32) == pytest.approx(115.50, abs=0.01)
    self_only = torch.eye(n + 1)
    assert mean_attention_distance(self_only, 16).item() == 0.0
    dist = patch_distances(14, 16)
    neighbours = (dist == 16).float()
    neighbours = torch.nn.functional.pad(neighbours / neighbours.sum(-1, keepdim=True), (1, 0, 1, 0))
    assert mean_attention_distance(neighbours, 16).item() == pytest.approx(16.0)
    with pytest.raises(ValueError, match="not 1 class token \\+ a square grid"):
        mean_attention_distance(torch.ones(11, 11), 16)


def _pqk(scores: torch.Tensor, grid: int, patch: int) -> PositionalQK:
    return PositionalQK(scores=scores, mode="raw", scaled=True, grid_size=grid, patch_size=patch)


def test_locality_of_flat_positional_scores_is_the_uniform_distance():
    g, n = 14, 196
    loc = _pqk(torch.zeros(1, 2, n + 1, n + 1), g, 16).locality()
    torch.testing.assert_close(loc.mean_distance_px, torch.full((1, 2), 116.49), atol=0.01, rtol=0)
    torch.testing.assert_close(loc.locality, torch.zeros(1, 2), atol=1e-4, rtol=0)
    # softmax over all keys without renormalising: the CLS key takes 1/197 at distance 0
    unnorm = _pqk(torch.zeros(1, 1, n + 1, n + 1), g, 16).locality(renormalise=False)
    assert unnorm.mean_distance_px.item() == pytest.approx(115.90, abs=0.01)


def test_locality_of_diagonal_scores_is_zero_distance_and_one():
    g, n = 4, 16
    scores = torch.eye(n + 1)[None, None] * 100.0
    loc = _pqk(scores, g, 8).locality()
    assert loc.mean_distance_px.item() == pytest.approx(0.0, abs=1e-3)
    assert loc.locality.item() == pytest.approx(1.0, abs=1e-4)
    frame = loc.to_frame()
    assert list(frame.columns) == ["layer", "head", "positional_distance_px", "uniform_distance_px", "locality"]


def test_locality_reads_the_grid_geometry_of_the_position_embedding():
    """A head whose W_Q = W_K reads a 2-d sinusoidal position code prefers nearby patches: locality > 0."""
    model = tiny_model(d_model=32, d_head=8)
    g = model.cfg.grid_size
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], -1).float()
    freqs = torch.tensor([0.5, 1.0])
    angles = einsum(coords, freqs, "n c, f -> n c f").flatten(1)  # [N, 4]
    code = torch.cat([angles.sin(), angles.cos()], -1)  # [N, 8]
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
        model.pos_embed.W_pos[1:, :8] = code * 3
        attn = model.blocks[0].attn
        attn.W_Q.zero_()
        attn.W_Q[0, :8] = torch.eye(8) * 2
        attn.W_K.copy_(attn.W_Q)
        attn.b_Q.zero_()
        attn.b_K.zero_()
    loc = positional_qk(model, mode="raw").locality()
    assert loc.locality[0, 0] > 0.2
