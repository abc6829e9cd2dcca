"""Composition scores (Elhage et al. 2021) against explicit products and closed forms; the random baseline."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import FactoredMatrix

from tests.helpers.models import tiny_model
from vitmech.analysis.circuits import (
    composition_changes,
    composition_score,
    composition_scores,
    random_composition_baseline,
)


def _explicit(model) -> dict[str, torch.Tensor]:
    """[L, H, d, d] products, from the weights, by hand."""
    W_Q, W_K, W_V, W_O = (w.detach() for w in (model.W_Q, model.W_K, model.W_V, model.W_O))
    return {"QK": W_Q @ W_K.transpose(-2, -1), "OV": W_V @ W_O}


def _fro(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m.double(), "fro"))


def test_scores_equal_a_loop_over_explicit_matrices():
    model = tiny_model(seed=2)
    mats = _explicit(model)
    comp = composition_scores(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for la in range(L):
        for ha in range(H):
            ov_a = mats["OV"][la, ha]
            for lb in range(L):
                for hb in range(H):
                    if la >= lb:
                        for mode in "QKV":
                            assert math.isnan(comp.scores[mode][la, ha, lb, hb])
                        continue
                    readers = {"Q": mats["QK"][lb, hb], "K": mats["QK"][lb, hb].T, "V": mats["OV"][lb, hb]}
                    for mode, reader in readers.items():
                        expected = _fro(ov_a @ reader) / (_fro(ov_a) * _fro(reader))
                        assert comp.scores[mode][la, ha, lb, hb].item() == pytest.approx(expected, rel=1e-4)


def test_k_composition_is_not_q_composition():
    """A transposed reader would make K equal Q: on random weights they differ."""
    comp = composition_scores(tiny_model(seed=4))
    valid = ~torch.isnan(comp.scores["Q"])
    assert (comp.scores["Q"][valid] - comp.scores["K"][valid]).abs().max() > 1e-3


def test_closed_forms_projection_and_orthogonal_subspaces():
    d, dh = 16, 4
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0]
    P = basis[:, :dh]  # orthonormal columns
    proj = FactoredMatrix(P, P.T)  # rank-dh projection
    # ||P P||_F / ||P||_F^2 = sqrt(dh) / dh
    assert composition_score(proj, proj).item() == pytest.approx(1 / math.sqrt(dh), rel=1e-5)
    other = basis[:, dh : 2 * dh]
    assert composition_score(proj, FactoredMatrix(other, other.T)).item() == pytest.approx(0.0, abs=1e-6)
    rank_one = FactoredMatrix(P[:, :1], P[:, :1].T)
    assert composition_score(rank_one, rank_one).item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="must match"):
        composition_score(FactoredMatrix(torch.randn(3, 2), torch.randn(2, 5)), proj)


def test_random_baseline_is_about_one_over_sqrt_d_and_seeded():
    """For rotation-invariant random matrices E||A B||^2 = ||A||^2 ||B||^2 / d, so the score is about 1/sqrt(d)."""
    for mode in "QKV":
        value = random_composition_baseline(64, 4, mode, n_samples=128, seed=1)
        assert value == pytest.approx(1 / 8, rel=0.05)
        assert value == random_composition_baseline(64, 4, mode, n_samples=128, seed=1)
    assert random_composition_baseline(64, 4, "Q", n_samples=16, seed=1) != random_composition_baseline(
        64, 4, "Q", n_samples=16, seed=2
    )
    with pytest.raises(ValueError):
        random_composition_baseline(64, 4, "X")
    with pytest.raises(ValueError):
        random_composition_baseline(64, 4, "Q", n_samples=0)


def test_baseline_subtraction_and_tables(tiny_vit):
    model = tiny_vit
    comp = composition_scores(model, subtract_baseline=True, n_baseline_samples=32)
    assert set(comp.baselines) == {"Q", "K", "V"}
    for mode, base in comp.baselines.items():
        assert 0 < base < 1
        torch.testing.assert_close(comp.adjusted(mode), comp.scores[mode] - base, equal_nan=True)
    frame = comp.to_frame()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(frame) == 3 * H * H * L * (L - 1) // 2
    assert (frame["src_layer"] < frame["dst_layer"]).all()
    top = comp.top_pairs("V", k=5)
    assert len(top) == 5 and (top["mode"] == "V").all() and top["adjusted"].is_monotonic_decreasing
    assert top["adjusted"].iloc[0] == pytest.approx(float(torch.nan_to_num(comp.adjusted("V"), nan=-1).max()))
    with pytest.raises(ValueError, match="not computed"):
        composition_scores(model, modes=["Q"]).top_pairs("K")
    with pytest.raises(ValueError, match="subset"):
        composition_scores(model, modes=["QK"])
    assert not composition_scores(model).subtract_baseline and composition_scores(model).baselines == {}


def test_composition_changes_between_two_models():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    ca, cb = composition_scores(a), composition_scores(b)
    same = composition_changes(ca, composition_scores(a))
    assert same["change"].abs().max() == 0
    changes = composition_changes(ca, cb)
    assert changes["change"].abs().is_monotonic_decreasing
    row = changes.iloc[0]
    idx = (int(row.src_layer), int(row.src_head), int(row.dst_layer), int(row.dst_head))
    assert row.change == pytest.approx(float(cb.scores[row["mode"]][idx] - ca.scores[row["mode"]][idx]), abs=1e-6)
    with pytest.raises(ValueError, match="different architectures"):
        composition_changes(ca, composition_scores(tiny_model(n_layers=2)))
