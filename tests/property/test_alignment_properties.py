"""Properties of the alignment metrics on random maps and masks (hypothesis)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vitmech.analysis.alignment import RegionMasks, alignment_scores


@st.composite
def cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    grid = draw(st.integers(1, 6))
    scale = draw(st.integers(1, 4))
    size = grid * scale + draw(st.integers(0, 3))
    density = draw(st.floats(0.05, 0.95))
    levels = draw(st.sampled_from([0, 2, 5]))  # 0: continuous values; else few levels (many ties)
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(2, 3, grid, grid, generator=g)
    if levels:
        maps = torch.floor(maps * levels)
    masks = torch.rand(2, 2, size, size, generator=g) < density
    masks[:, :, 0, 0] = True  # no empty region
    return maps, RegionMasks(masks, ("a", "b"))


@settings(max_examples=60, deadline=None)
@given(cases(), st.sampled_from([None, 0.01, 0.3, 1.0]), st.sampled_from(["nearest", "bilinear"]))
def test_scores_lie_in_unit_interval(case, q, upsample) -> None:
    maps, regions = case
    result = alignment_scores(maps, regions, q=q, upsample=upsample)
    for name in ("iou", "pointing"):
        values = result.metric(name)
        assert ((values >= -1e-12) & (values <= 1 + 1e-12)).all(), name
    energy = result.energy[~result.energy.isnan()]  # NaN only for an all-zero map (no mass)
    assert ((energy >= -1e-12) & (energy <= 1 + 1e-12)).all()
    assert ((result.iou_chance > 0) & (result.iou_chance <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(cases())
def test_overlap_grows_with_q(case) -> None:
    """The top-k pixels are nested in k (ties shared evenly), so |T ∩ R| never falls as q grows."""
    maps, regions = case
    previous = None
    area = regions.masks.flatten(2).sum(-1).double()[:, None]
    for q in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        result = alignment_scores(maps, regions, q=q)
        iou = result.iou
        overlap = iou * (result.k[:, None] + area) / (1 + iou)
        if previous is not None:
            assert (overlap >= previous - 1e-3).all()  # pixels; float32 rounding
        previous = overlap
    assert torch.allclose(previous, area.expand_as(previous), atol=1e-3)  # q = 1 takes every pixel


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_perfect_map_iou_rises_to_the_area_then_falls(seed, grid) -> None:
    """A map equal to the mask ranks every region pixel first: IoU = q / a below the area share a and
    a / q above it."""
    g = torch.Generator().manual_seed(seed)
    masks = F.interpolate((torch.rand(1, 1, grid, grid, generator=g) < 0.5).float(), scale_factor=4).bool()
    masks[0, 0, :4, :4] = True
    maps = F.avg_pool2d(masks.float(), 4)[:, 0]
    regions = RegionMasks(masks, ("r",))
    n = masks.numel()
    a = masks.sum().item() / n
    for q in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0):
        k = max(1, round(q * n))
        expected = k / masks.sum().item() if k <= masks.sum() else masks.sum().item() / k
        assert alignment_scores(maps, regions, q=q).iou.item() == pytest.approx(expected, abs=1e-6)
    assert alignment_scores(maps, regions).iou.item() == pytest.approx(1.0)
    assert a > 0
