"""Activation patching: the batched suffix engine against a one-forward-per-site loop, the 100% / 0%
fixed points for every site kind, metrics, grids and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.ablation.metrics import class_logit, cross_entropy, logit_diff
from vitmech.analysis.patching import (
    Site,
    activation_patching,
    head_sites,
    layer_sites,
    patched_outputs,
    position_sites,
    resolve_positions,
)
from vitmech.errors import PatchingError
from vitmech.tokens import token_layout

B = 3


def every_kind(model):
    """Every site kind: layers (all positions), heads (all, class token, patches, one patch), positions."""
    one_patch = token_layout(model).n_prefix + 5
    return (
        layer_sites(model)
        + head_sites(model, "all")
        + head_sites(model, "cls")
        + head_sites(model, "patches")
        + head_sites(model, [one_patch], layers=[1])
        + position_sites(model, "resid_pre", layers=[1])
        + position_sites(model, "mlp_out", layers=[2])
        + position_sites(model, "head", layers=[0], head=1)
    )


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=1)
    clean, corrupted = seeded_images(B, 32, seed=1), seeded_images(B, 32, seed=2)
    return model, clean, corrupted, every_kind(model)


def test_batched_engine_equals_the_naive_loop(setup):
    model, clean, corrupted, sites = setup
    exact = patched_outputs(model, clean, corrupted, sites, max_rows=7)  # chunks of 2 sites, mixed kinds
    naive = patched_outputs(model, clean, corrupted, sites, engine="naive")
    assert exact.shape == (len(sites), B, model.cfg.n_classes)
    torch.testing.assert_close(exact, naive, atol=1e-5, rtol=0)
    assert (naive - model(corrupted)).abs().max() > 1e-2  # and patching changed something


@pytest.mark.parametrize("engine", ["exact", "naive"])
def test_clean_into_clean_restores_all_and_corrupted_into_corrupted_nothing(setup, engine):
    model, clean, corrupted, sites = setup
    metric = logit_diff(0, 1)
    full = activation_patching(model, clean, corrupted, metric, sites, source="clean", target="clean", engine=engine)
    none = activation_patching(
        model, clean, corrupted, metric, sites, source="corrupted", target="corrupted", engine=engine
    )
    assert abs(full.gap) > 0.1
    kinds = {s.kind for s in sites}
    assert kinds == {"resid_pre", "attn_out", "mlp_out", "head"}
    torch.testing.assert_close(full.restored, torch.ones(len(sites)), atol=1e-5, rtol=0)
    torch.testing.assert_close(none.restored, torch.zeros(len(sites)), atol=1e-5, rtol=0)


def test_denoising_restored_fraction_matches_its_definition(setup):
    model, clean, corrupted, sites = setup
    result = activation_patching(model, clean, corrupted, "cross_entropy", sites[:6], targets=torch.tensor([0, 1, 2]))
    naive = patched_outputs(model, clean, corrupted, sites[:6], engine="naive")
    ce = torch.nn.functional.cross_entropy
    labels = torch.tensor([0, 1, 2])
    m_clean, m_bad = ce(model(clean), labels), ce(model(corrupted), labels)
    expected = torch.stack([(ce(o, labels) - m_bad) / (m_clean - m_bad) for o in naive])
    torch.testing.assert_close(result.restored, expected, atol=1e-5, rtol=0)
    frame = result.to_frame()
    assert list(frame["site"])[:3] == ["resid_pre:L0", "attn_out:L0", "mlp_out:L0"]
    assert np.isfinite(frame["restored_se"]).all()


def test_the_whole_residual_stream_restores_everything(setup):
    model, clean, corrupted, _ = setup
    result = activation_patching(model, clean, corrupted, logit_diff(2, 3), layer_sites(model, ["resid_pre"]))
    torch.testing.assert_close(result.restored, torch.ones(model.cfg.n_layers), atol=1e-5, rtol=0)


def test_regression_output_metric_and_grids():
    model = tiny_model(seed=3, n_classes=3)  # a 3-output regressor's head
    clean, corrupted = seeded_images(2, 32, seed=4), seeded_images(2, 32, seed=5)
    sites = position_sites(model, "resid_pre") + head_sites(model)
    result = activation_patching(model, clean, corrupted, class_logit(2), sites)
    naive = activation_patching(model, clean, corrupted, class_logit(2), sites, engine="naive")
    torch.testing.assert_close(result.values, naive.values, atol=1e-5, rtol=0)
    grid = result.position_grid("resid_pre")
    assert grid.shape == (model.cfg.n_layers, 4, 4) and np.isfinite(grid).all()
    layout = token_layout(model)
    frame = result.to_frame().set_index("site")
    # patch k of the grid is token n_prefix + k, row-major
    assert grid[1, 2, 3] == pytest.approx(frame.loc[f"resid_pre:L1@{layout.n_prefix + 2 * 4 + 3}", "restored"])
    assert result.prefix_values("resid_pre").shape == (model.cfg.n_layers, layout.n_prefix)
    heads = result.head_grid()
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads) and np.isfinite(heads).all()


def test_positions_follow_the_token_layout():
    model = tiny_model(n_register_tokens=2)
    layout = token_layout(model)
    assert resolve_positions(model, "cls") == (0,)
    assert resolve_positions(model, "patches") == tuple(range(layout.n_prefix, layout.n_tokens))
    assert resolve_positions(model, "all") is None
    assert head_sites(model, "patches", layers=[0])[0].positions[0] == 3  # class token and two registers first
    with pytest.raises(ValueError, match="class token"):
        resolve_positions(tiny_model(class_token=False), "cls")


def test_bad_input_is_refused(tiny_vit):
    model = tiny_vit
    images = seeded_images(2, 32)
    with pytest.raises(PatchingError, match="no sites"):
        patched_outputs(model, images, images, [])
    with pytest.raises(PatchingError, match="head out of range"):
        patched_outputs(model, images, images, [Site("head", 0, head=9)])
    with pytest.raises(PatchingError, match="layer"):
        patched_outputs(model, images, images, [Site("mlp_out", 7)])
    with pytest.raises(PatchingError, match="positions"):
        resolve_positions(model, [99])
    with runtime_checks_off(), pytest.raises(PatchingError, match="pair up"):  # the shapes disagree on purpose
        patched_outputs(model, images, seeded_images(3, 32), [Site("mlp_out", 0)])
    with runtime_checks_off(), pytest.raises(PatchingError, match="engine"):
        activation_patching(model, images, images, logit_diff(0, 1), [Site("mlp_out", 0)], engine="fast")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    layer=st.integers(0, 2),
    head=st.integers(0, 3),
    positions=st.lists(st.integers(0, 16), min_size=1, max_size=5, unique=True),
    max_rows=st.integers(1, 12),
)
def test_properties_of_random_sites(seed, layer, head, positions, max_rows):
    """Exact == naive for random sites and chunkings; source == target leaves the target run unchanged;
    patching the whole residual stream entering any layer reproduces the source run."""
    model = tiny_model(seed=seed % 3)
    clean, corrupted = seeded_images(2, 32, seed=seed), seeded_images(2, 32, seed=seed + 1)
    sites = [
        Site("head", layer, head=head, positions=tuple(positions)),
        Site("mlp_out", layer, positions=tuple(positions)),
        Site("attn_out", layer),
        Site("resid_pre", layer),
    ]
    exact = patched_outputs(model, clean, corrupted, sites, max_rows=max_rows)
    torch.testing.assert_close(
        exact, patched_outputs(model, clean, corrupted, sites, engine="naive"), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(exact[-1], model(clean), atol=1e-5, rtol=0)
    same = patched_outputs(model, corrupted, corrupted, sites, max_rows=max_rows)
    torch.testing.assert_close(same, model(corrupted).expand_as(same), atol=1e-5, rtol=0)


def test_cross_entropy_builtin_name_and_metric_object_agree(setup):
    model, clean, corrupted, sites = setup
    labels = torch.tensor([4, 0, 2])
    a = activation_patching(model, clean, corrupted, "cross_entropy", sites[:4], targets=labels)
    b = activation_patching(model, clean, corrupted, cross_entropy(), sites[:4], targets=labels)
    torch.testing.assert_close(a.restored, b.restored)
