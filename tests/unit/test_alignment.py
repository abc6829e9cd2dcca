"""Alignment metrics: closed forms, a naive per-image per-head pixel loop, region constructors, map sources."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.helpers.models import randomize_hooked_, tiny_config
from tests.helpers.typecheck import runtime_checks_off
from vitmech import HookedViT
from vitmech.analysis.alignment import (
    RegionMasks,
    alignment_scores,
    cls_attention_grid,
    head_mean_grid,
    rollout_grid,
)
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.rollout import rollout


def _regions(masks: torch.Tensor, names: tuple[str, ...] | None = None) -> RegionMasks:
    names = names or tuple(f"r{i}" for i in range(masks.shape[1]))
    return RegionMasks(masks, names)


def _naive(map_: torch.Tensor, mask: torch.Tensor, q: float | None, upsample: str) -> tuple[float, float, float]:
    """Pixel-level IoU / energy / pointing of one map [g, g] against one mask [H, W] (ties shared evenly)."""
    h, w = mask.shape
    kwargs = {"align_corners": False} if upsample == "bilinear" else {}
    up = F.interpolate(map_.double()[None, None], size=(h, w), mode=upsample, **kwargs)[0, 0].flatten()
    region = mask.flatten()
    n, area = up.numel(), int(region.sum())
    k = area if q is None else max(1, round(q * n))
    if area == 0:
        return math.nan, math.nan, math.nan
    threshold = torch.sort(up, descending=True, stable=True).values[k - 1]
    above, tied = up > threshold, up == threshold
    overlap = float((above & region).sum()) + (k - int(above.sum())) * float((tied & region).sum()) / int(tied.sum())
    iou = overlap / (k + area - overlap)
    positive = up.clamp_min(0)
    energy = float(positive[region].sum() / positive.sum())
    top = up == up.max()
    pointing = float((top & region).sum()) / int(top.sum())
    return iou, energy, pointing


def _random_case(seed: int, batch=3, units=(2, 3), grid=4, size=16, n_regions=2):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, *units, grid, grid, generator=g)
    masks = torch.rand(batch, n_regions, size, size, generator=g) > 0.6
    return maps, _regions(masks)


# ----------------------------------------------------------------------------------------- closed forms


def test_map_equal_to_mask_gives_iou_and_energy_one() -> None:
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[0, 0, 8:24, 0:16] = True  # patches (1..2, 0..1) of a 4 x 4 grid of 8 px
    maps = F.avg_pool2d(mask.float(), 8)[:, 0]  # [1, 4, 4], 1 inside, 0 outside
    result = alignment_scores(maps, _regions(mask))
    assert result.iou.item() == pytest.approx(1.0, abs=1e-12)
    assert result.energy.item() == pytest.approx(1.0, abs=1e-12)
    assert result.pointing.item() == pytest.approx(1.0, abs=1e-12)


def test_uniform_map_energy_equals_area_share_and_iou_equals_chance() -> None:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 3, 28, 28, generator=g) > 0.7
    result = alignment_scores(torch.full((4, 7, 7), 0.3), _regions(masks))
    share = masks.flatten(2).double().mean(-1)
    assert torch.allclose(result.energy[:, :], share, atol=1e-12)
    assert torch.allclose(result.area_share, share)
    assert torch.allclose(result.pointing, share, atol=1e-12)  # every pixel ties for the maximum
    assert torch.allclose(result.iou, result.iou_chance, atol=1e-12)
    a = share
    assert torch.allclose(result.iou_chance, a / (2 - a), atol=1e-12)  # k = |R|: a^2 N / (2 a N - a^2 N)


def test_pointing_game_on_one_hot_maps() -> None:
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[:, 0, :8, :8] = True  # top-left patch of a 2 x 2 grid
    maps = torch.zeros(2, 2, 2)
    maps[0, 0, 0] = 1.0  # inside
    maps[1, 1, 1] = 1.0  # outside
    result = alignment_scores(maps, _regions(mask))
    assert result.pointing[:, 0].tolist() == [1.0, 0.0]
    assert result.iou[:, 0].tolist() == [1.0, 0.0]


def test_iou_is_invariant_to_map_scaling_and_energy_to_positive_scaling() -> None:
    maps, regions = _random_case(2)
    base = alignment_scores(maps, regions, q=0.25)
    for factor in (1e-3, 7.0, 1e4):
        scaled = alignment_scores(maps * factor, regions, q=0.25)
        for name in ("iou", "energy", "pointing"):
            assert torch.allclose(scaled.metric(name), base.metric(name), atol=1e-12), name


def test_empty_region_gives_nan_and_explicit_q_sets_k() -> None:
    masks = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, :4] = True
    result = alignment_scores(torch.rand(1, 4, 4), _regions(masks), q=0.5)
    assert math.isnan(result.iou[0, 1]) and math.isnan(result.energy[0, 1]) and math.isnan(result.iou_chance[0, 1])
    assert result.k[0].tolist() == [128.0, 128.0]


def test_iou_with_ties_keeps_the_count_exact() -> None:
    """A map constant on half the grid: the top k = N/4 pixels all tie; the overlap is the tied pixels' share."""
    maps = torch.zeros(1, 2, 2)
    maps[0, 0] = 1.0  # top row of patches
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, :, :8] = True  # left half
    result = alignment_scores(maps, _regions(mask), q=0.25)
    k, area = 64, 128
    overlap = k * 0.5  # half of the tied top row lies in the left half
    assert result.iou.item() == pytest.approx(overlap / (k + area - overlap))


# ----------------------------------------------------------------------------------------- naive loop


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize("q", [None, 0.1, 0.5])
def test_batched_equals_naive_pixel_loop(upsample: str, q: float | None) -> None:
    maps, regions = _random_case(3, size=24, grid=6 if upsample == "nearest" else 4)
    maps[0, 0, 0] = torch.round(maps[0, 0, 0] * 3)  # some tied patches
    result = alignment_scores(maps, regions, q=q, upsample=upsample)  # type: ignore[arg-type]
    for b in range(maps.shape[0]):
        for layer in range(maps.shape[1]):
            for head in range(maps.shape[2]):
                for r in range(len(regions.names)):
                    iou, energy, pointing = _naive(maps[b, layer, head], regions.masks[b, r], q, upsample)
                    got = [result.metric(m)[b, layer, head, r].item() for m in ("iou", "energy", "pointing")]
                    assert got == pytest.approx([iou, energy, pointing], abs=1e-6)


def test_nearest_on_a_grid_that_does_not_divide_the_mask() -> None:
    maps, _ = _random_case(4, grid=5)
    masks = torch.rand(3, 2, 23, 23, generator=torch.Generator().manual_seed(5)) > 0.5
    regions = _regions(masks)
    result = alignment_scores(maps, regions)
    for b in range(3):
        for r in range(2):
            iou, energy, pointing = _naive(maps[b, 1, 2], masks[b, r], None, "nearest")
            assert result.iou[b, 1, 2, r].item() == pytest.approx(iou, abs=1e-6)
            assert result.energy[b, 1, 2, r].item() == pytest.approx(energy, abs=1e-6)
            assert result.pointing[b, 1, 2, r].item() == pytest.approx(pointing, abs=1e-6)


def test_untied_iou_matches_a_hard_topk_mask() -> None:
    """Without ties the IoU is that of the binary mask of torch.topk's k pixels (an independent count)."""
    maps, regions = _random_case(6, units=(3,), grid=7, size=20)
    result = alignment_scores(maps, regions, q=0.2, upsample="bilinear")
    for b in range(3):
        for u in range(3):
            up = F.interpolate(maps[b, u].double()[None, None], size=(20, 20), mode="bilinear")[0, 0].flatten()
            chosen = torch.zeros(400, dtype=torch.bool)
            top = up.topk(81).values
            assert top[79] > top[80]  # no tie at the k-th value
            chosen[up.topk(80).indices] = True
            for r in range(2):
                region = regions.masks[b, r].flatten()
                iou = float((chosen & region).sum()) / float((chosen | region).sum())
                assert result.iou[b, u, r].item() == pytest.approx(iou, abs=1e-9)


# ----------------------------------------------------------------------------------------- results


def test_frame_summary_and_dict() -> None:
    maps, regions = _random_case(7)
    result = alignment_scores(maps, regions.with_union(), source="heads")
    frame = result.to_frame()
    assert len(frame) == 3 * 2 * 3 * 3
    assert list(frame.columns[:5]) == ["source", "image", "layer", "head", "region"]
    row = frame[
        (frame["image"] == 2) & (frame["layer"] == 1) & (frame["head"] == 0) & (frame["region"] == "union")
    ].iloc[0]
    assert row.iou == pytest.approx(result.iou[2, 1, 0, 2].item())
    summary = result.summary(["layer", "region"])
    assert len(summary) == 2 * 3 and (summary.n_images == 3).all()
    assert json.dumps(result.to_dict())
    assert result.per_image("iou", "union", (1, 0)).shape == (3,)


def test_bad_inputs_are_named() -> None:
    maps, regions = _random_case(8)
    with pytest.raises(ValueError, match="q must be"):
        alignment_scores(maps, regions, q=0.0)
    with pytest.raises(ValueError, match="images of masks"):
        alignment_scores(maps[:2], regions)
    with runtime_checks_off(), pytest.raises(ValueError, match="upsample"):
        alignment_scores(maps, regions, upsample="cubic")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no regions"):
        regions.select(["bar"])


# ----------------------------------------------------------------------------------------- regions


def test_boxes_coco_and_png_folder(tmp_path) -> None:
    boxes = [{"a": [(0, 0, 4, 2)], "b": [(2, 2, 6, 6), (0, 6, 1, 8)]}, {"a": [(-3, 5, 100, 6)]}]
    regions = RegionMasks.from_boxes(boxes, 8)
    assert regions.names == ("a", "b")
    assert regions.masks[0, 0].sum() == 8 and regions.masks[0, 1].sum() == 18 and regions.masks[1, 1].sum() == 0
    assert regions.masks[1, 0, 5].all() and regions.masks[1, 0].sum() == 8

    coco = {
        "images": [{"id": 7, "width": 16, "height": 16}, {"id": 3, "width": 16, "height": 16}],
        "annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 8, 4]}],
        "categories": [{"id": 1, "name": "window"}, {"id": 2, "name": "door"}],
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    masks, records = RegionMasks.from_coco(path, size=8)
    assert [r["id"] for r in records] == [3, 7] and masks.names == ("window", "door")
    assert masks.masks[1, 0].sum() == 8 and masks.masks[0].sum() == 0

    for name, region in (("img0_bar", regions.masks[0, 1]), ("img1_arms", regions.masks[1, 0])):
        Image.fromarray(region.numpy().astype(np.uint8) * 255).save(tmp_path / f"{name}.png")
    folder = RegionMasks.from_png_folder(tmp_path)
    assert folder.names == ("arms", "bar") and len(folder) == 2
    assert torch.equal(folder.masks[0, 1], regions.masks[0, 1]) and not folder.masks[0, 0].any()


def test_generator_regions() -> None:
    from vitmech.data import generate_chirp, generate_galaxies

    batch = generate_galaxies(6, seed=0, size=64)
    regions = RegionMasks.from_galaxies(batch).with_union()
    assert regions.names == ("bar", "arms", "bulge", "union") and regions.size == (64, 64)
    assert torch.equal(regions.masks[:, 3], regions.masks[:, :3].any(1))
    assert torch.equal(regions.masks[:, 0], torch.as_tensor(batch.masks["bar"]))
    chirps = RegionMasks.from_chirps([generate_chirp(i, size=64) for i in range(2)])
    assert chirps.names == ("chirp", "text", "axis", "colorbar")
    assert chirps.area_share().gt(0).all()


# ----------------------------------------------------------------------------------------- map sources


def test_map_sources_on_a_model() -> None:
    model = randomize_hooked_(HookedViT(tiny_config()), seed=0).eval()
    images = torch.randn(2, 3, 32, 32)
    patterns = collect_patterns(model, images, progress=False)  # [B, L, H, P, P]
    maps = cls_attention_grid(model, patterns)
    assert maps.shape == (2, 3, 4, 4, 4)
    cls_rows = collect_patterns(model, images, rows="cls", progress=False)
    assert torch.allclose(cls_attention_grid(model, cls_rows, rows="cls"), maps)
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(2, 3, 4))
    expected = patterns[:, :, :, 0, 1:] / patterns[:, :, :, 0, 1:].sum(-1, keepdim=True)  # reference slice
    assert torch.allclose(maps.flatten(-2), expected)
    assert head_mean_grid(maps).shape == (2, 3, 4, 4)
    rolled = rollout_grid(model, rollout(patterns, tokens=[0]))
    assert rolled.shape == (2, 4, 4) and torch.allclose(rolled.sum((-2, -1)), torch.ones(2))
    with pytest.raises(ValueError, match="tokens"):
        cls_attention_grid(model, patterns[..., 1:])
