"""Counterfactual pairs: generator pairs that differ in one feature only, and masked real images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.typecheck import runtime_checks_off
from vitmech.data import DataError
from vitmech.data.chirps import chirp_counterfactual_pairs
from vitmech.data.counterfactual import masked_counterfactual, patch_box, region_mask
from vitmech.data.galaxies import GALAXY_CLASSES, galaxy_counterfactual_pairs, without_feature


@pytest.mark.parametrize("feature", ["bar", "arms", "bulge"])
def test_galaxy_pairs_differ_in_one_feature_only(feature):
    with_f, without = galaxy_counterfactual_pairs(3, seed=5, feature=feature, size=64, noise=False)
    amplitude = {"bar": "bar_amp", "arms": "arms_amp", "bulge": "bulge_amp"}[feature]
    for p, q in zip(with_f.params, without.params):
        assert getattr(p, amplitude) > 0 and getattr(q, amplitude) == 0
        assert dataclasses.replace(q, **{amplitude: getattr(p, amplitude)}, cls=p.cls) == p
    diff = np.abs(with_f.images.astype(int) - without.images.astype(int)).sum(-1)
    inside = with_f.masks[feature]
    assert diff[inside].mean() > 5 * max(diff[~inside].mean(), 0.05)  # the change sits on the feature
    if feature == "bar":
        assert set(without.labels.tolist()) == {GALAXY_CLASSES.index("unbarred_spiral")}
        assert set(with_f.labels.tolist()) == {GALAXY_CLASSES.index("barred_spiral")}


def test_galaxy_pairs_keep_the_noise_draw():
    with_f, without = galaxy_counterfactual_pairs(2, seed=1, feature="bar", size=64, noise=True)
    assert [p.noise_seed for p in with_f.params] == [q.noise_seed for q in without.params]
    again, _ = galaxy_counterfactual_pairs(2, seed=1, feature="bar", size=64, noise=True)
    assert np.array_equal(again.images, with_f.images)
    with pytest.raises(DataError, match="feature"):
        galaxy_counterfactual_pairs(2, feature="halo")
    with pytest.raises(DataError, match="feature"):
        without_feature(with_f.params[0], "halo")


@pytest.mark.parametrize("element,boxes", [("text", ["title", "xlabel", "ylabel"]), ("colorbar", ["colorbar"])])
def test_chirp_pairs_toggle_one_distractor(element, boxes):
    with_e, without = chirp_counterfactual_pairs(2, seed=3, element=element, size=96)
    for a, b in zip(with_e, without):
        assert a.params == b.params and np.array_equal(a.spectrogram, b.spectrogram)
        assert not np.array_equal(a.image, b.image)
        for name in boxes:
            assert a.boxes[name] is not None and b.boxes[name] is None
    with pytest.raises(DataError, match="element"):
        chirp_counterfactual_pairs(1, element="legend")


def test_masked_fills():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    box = (8, 4, 20, 16)
    mask = region_mask(box, 2, 32, 32)[:, None].expand_as(images)
    for fill in ("mean", "blur", "noise"):
        out = masked_counterfactual(images, box, fill)
        assert torch.equal(out[~mask], images[~mask])  # outside untouched
        assert not torch.equal(out[mask], images[mask])
    mean = masked_counterfactual(images, box, "mean")
    outside_mean = torch.where(~mask, images, 0).sum((2, 3)) / (~mask[:, :1]).sum((2, 3))
    torch.testing.assert_close(mean[:, :, 4, 8], outside_mean)
    noise_a = masked_counterfactual(images, box, "noise", seed=3)
    assert torch.equal(noise_a, masked_counterfactual(images, box, "noise", seed=3))
    constant = torch.ones(1, 3, 16, 16)
    torch.testing.assert_close(masked_counterfactual(constant, (0, 0, 8, 8), "blur"), constant)  # blur of a constant


def test_masked_uint8_and_errors():
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = masked_counterfactual(images, patch_box(3, (2, 2), 8), "mean")
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.array_equal(out[:, :8], images[:, :8]) and not np.array_equal(out[:, 8:, 8:], images[:, 8:, 8:])
    with runtime_checks_off(), pytest.raises(DataError, match="fill"):
        masked_counterfactual(images, (0, 0, 4, 4), "zero")
    with pytest.raises(DataError, match="outside"):
        masked_counterfactual(images, (0, 0, 20, 20), "mean")
    with pytest.raises(DataError, match="whole image"):
        masked_counterfactual(images, (0, 0, 16, 16), "mean")
    with pytest.raises(DataError, match="patch"):
        patch_box(4, (2, 2), 8)


@settings(max_examples=20, deadline=None)
@given(x0=st.integers(0, 14), y0=st.integers(0, 14), w=st.integers(1, 8), h=st.integers(1, 8))
def test_mean_fill_keeps_the_image_mean_outside_and_sets_it_inside(x0, y0, w, h):
    """Closed form: after a mean fill the region holds exactly the outside mean, so the whole image's
    per-channel mean equals the outside mean."""
    box = (x0, y0, min(16, x0 + w), min(16, y0 + h))
    images = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(x0 * 100 + y0))
    out = masked_counterfactual(images, box, "mean")
    inside = region_mask(box, 1, 16, 16)[:, None].expand_as(images)
    outside_mean = torch.where(~inside, images, 0).sum((2, 3)) / (~inside[:, :1]).sum((2, 3))
    torch.testing.assert_close(out.mean((2, 3)), outside_mean, atol=1e-5, rtol=0)
