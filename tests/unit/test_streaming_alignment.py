"""Streamed alignment equals the one-batch analysis."""

from __future__ import annotations

import pytest
import torch

from vitmech import HookedViT, ViTConfig
from vitmech.analysis.alignment import RegionMasks, alignment_scores, cls_attention_grid
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.streaming_alignment import stream_alignment
from vitmech.errors import BatchSourceError


@pytest.fixture
def setting():
    cfg = ViTConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_mlp=32, image_size=32, patch_size=8, n_classes=3)
    model = HookedViT(cfg, seed=3).double().eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(7, 3, 32, 32, generator=gen, dtype=torch.float64)
    masks = torch.rand(7, 2, 32, 32, generator=gen) > 0.7
    return model, images, RegionMasks(masks, ("a", "b"))


def test_streamed_equals_one_big_batch(setting):
    model, images, regions = setting
    with torch.no_grad():
        rows = collect_patterns(model, images, rows="cls", progress=False)
    whole = alignment_scores(cls_attention_grid(model, rows, rows="cls"), regions, unit_names=("layer", "head"))
    for batch_size in (1, 3, 7):
        streamed = stream_alignment(model, images, regions, batch_size=batch_size, progress=False)
        assert streamed.iou.shape == (7, 2, 3, 2)
        for name in ("iou", "energy", "pointing", "area_share", "iou_chance", "k"):
            torch.testing.assert_close(getattr(streamed, name), getattr(whole, name), atol=1e-6, rtol=0, equal_nan=True)


def test_regions_by_function_and_count_checks(setting):
    model, images, regions = setting
    calls = []

    def regions_of(start, stop):
        calls.append((start, stop))
        return regions.subset(range(start, stop))

    streamed = stream_alignment(model, images, regions_of, batch_size=4, progress=False)
    assert calls == [(0, 4), (4, 7)]
    torch.testing.assert_close(
        streamed.iou, stream_alignment(model, images, regions, progress=False).iou, equal_nan=True
    )
    with pytest.raises(BatchSourceError, match="more images"):
        stream_alignment(model, images, regions.subset(range(5)), batch_size=4, progress=False)
