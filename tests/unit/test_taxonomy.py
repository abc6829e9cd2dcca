"""Head taxonomy and layer ranking: the rule on maps placed on known regions, and the batched mass
computation against a naive per-pixel loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vitmech.analysis.alignment import RegionMasks
from vitmech.analysis.layer_ranking import rank_layers
from vitmech.analysis.taxonomy import (
    BACKGROUND,
    DIFFUSE,
    LABELS,
    MIN_ENRICHMENT,
    OFF_TASK,
    POLYSEMANTIC,
    TASK,
    exclusive_regions,
    head_taxonomy,
    normalised_entropy,
    region_mass,
)

SIZE, GRID = 32, 4  # 32 px images, 4 x 4 patch grid of 8 px cells


def _box(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _figure_regions(n: int = 2) -> RegionMasks:
    """A chirp-like layout: the axes box covers the middle, the chirp one cell inside it, text one cell on
    the top row, the colour bar one cell on the right column; the rest is background."""
    axes = _box(8, 8, 24, 32)
    chirp = _box(8, 8, 16, 16)
    text = _box(0, 0, 8, 8)
    colorbar = _box(24, 8, 32, 16)
    masks = torch.stack([chirp, text, axes, colorbar])[None].expand(n, -1, -1, -1).clone()
    return exclusive_regions(RegionMasks(masks, ("chirp", "text", "axis", "colorbar")))


def _cell_map(cells: dict[tuple[int, int], float]) -> torch.Tensor:
    m = torch.zeros(GRID, GRID)
    for (row, col), value in cells.items():
        m[row, col] = value
    return m


def test_exclusive_regions_partition_the_pixels_with_priority():
    regions = _figure_regions()
    assert regions.names == ("chirp", "text", "axis", "colorbar", BACKGROUND)
    assert bool((regions.masks.sum(1) == 1).all())
    # the chirp's cell is claimed by the chirp (first in priority), not by the axes box that contains it
    assert bool(regions.masks[0, 0, 8:16, 8:16].all()) and not bool(regions.masks[0, 2, 8:16, 8:16].any())


def test_each_label_is_reached_by_a_map_placed_on_known_regions():
    regions = _figure_regions(n=2)
    uniform = torch.ones(GRID, GRID)
    heads = [
        _cell_map({(1, 1): 1.0}),  # all on the chirp's cell
        _cell_map({(0, 0): 1.0}),  # all on the text cell
        _cell_map({(1, 1): 0.5, (0, 0): 0.5}),  # chirp and text
        uniform,  # every region in proportion to its area
        _cell_map({(1, 3): 1.0}),  # the colour bar
        _cell_map({(1, 1): 0.8, (2, 1): 0.1, (3, 1): 0.1}),  # the chirp, and some of the axes around it
    ]
    maps = torch.stack(heads)[None, None].expand(2, 1, -1, -1, -1)  # [B=2, L=1, H=5, g, g]
    taxonomy = head_taxonomy(maps, regions, task_regions=("chirp",))
    assert taxonomy.labels[0].tolist() == [TASK, OFF_TASK, POLYSEMANTIC, DIFFUSE, OFF_TASK, TASK]
    assert taxonomy.dominant[0, 0] == "chirp" and taxonomy.dominant[0, 1] == "text"
    assert taxonomy.dominant[0, 4] == "colorbar"
    assert set(taxonomy.counts()) == set(LABELS) and sum(taxonomy.counts().values()) == 6
    # closed forms: the chirp cell is 1/16 of the image, so all mass there is enrichment 16
    assert taxonomy.enrichment[0, 0, 0].item() == pytest.approx(16.0)
    assert taxonomy.entropy[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert taxonomy.entropy[0, 3].item() == pytest.approx(1.0, abs=1e-6)  # uniform attention
    assert torch.allclose(taxonomy.enrichment[0, 3], torch.ones(5))


def test_weak_preference_is_diffuse_and_thresholds_are_named():
    regions = _figure_regions(n=1)
    # slightly more on the chirp than uniform: enrichment below MIN_ENRICHMENT everywhere
    weak = torch.ones(GRID, GRID)
    weak[1, 1] = 1.2
    taxonomy = head_taxonomy(weak[None, None, None], regions, task_regions=("chirp",))
    assert taxonomy.labels[0, 0] == DIFFUSE
    assert taxonomy.enrichment[0, 0].max().item() < MIN_ENRICHMENT
    assert set(taxonomy.thresholds) == {
        "monosemantic_max_entropy",
        "monosemantic_min_share",
        "min_enrichment",
        "polysemantic_min_regions",
    }
    # the same map is task-relevant under a lower enrichment threshold (the threshold is what decides)
    loose = head_taxonomy(
        weak[None, None, None], regions, task_regions=("chirp",), min_enrichment=1.1, max_entropy=1, min_share=0
    )
    assert loose.labels[0, 0] == TASK


def _naive_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, unit and region: upsample each map to pixels (nearest), normalise, sum inside the mask."""
    b, u = maps.shape[:2]
    r = masks.shape[1]
    out = torch.zeros(b, u, r, dtype=torch.float64)
    cell = SIZE // GRID
    for i in range(b):
        for j in range(u):
            pixels = maps[i, j].double().repeat_interleave(cell, 0).repeat_interleave(cell, 1) / (cell * cell)
            pixels = pixels / pixels.sum()
            for k in range(r):
                out[i, j, k] = pixels[masks[i, k]].sum()
    return out


def test_batched_mass_equals_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    n, layers, heads = 3, 2, 3
    masks = torch.rand(n, 3, SIZE, SIZE, generator=g) < 0.3
    regions = exclusive_regions(RegionMasks(masks, ("a", "b", "c")))
    maps = torch.rand(n, layers, heads, GRID, GRID, generator=g) ** 4
    mass, area = region_mass(maps, regions)
    naive = _naive_mass(maps.flatten(1, 2), regions.masks).view(n, layers, heads, -1)
    assert torch.allclose(mass.double(), naive, atol=1e-6)
    assert torch.allclose(area.double(), regions.masks.flatten(2).double().mean(-1))
    taxonomy = head_taxonomy(maps, regions, task_regions=("a",))
    assert torch.allclose(taxonomy.mass.double(), naive.mean(0), atol=1e-6)
    # entropy against its closed form on one head
    p = taxonomy.enrichment[1, 2] / taxonomy.enrichment[1, 2].sum()
    expected = float(-(p * p.log()).sum() / np.log(4))
    assert normalised_entropy(taxonomy.enrichment[1, 2]).item() == pytest.approx(expected, rel=1e-5)


def test_join_ablation_and_bad_input():
    regions = _figure_regions(n=1)
    maps = torch.rand(1, 2, 2, GRID, GRID)
    taxonomy = head_taxonomy(maps, regions, task_regions=("chirp",))
    ablation = pd.DataFrame(
        {"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "delta": [0.5, 0.0, -0.1, 0.01], "delta_se": [0.1] * 4}
    )
    joined = taxonomy.join_ablation(ablation)
    assert len(joined) == 4 and joined["significant"].tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="partition"):
        head_taxonomy(maps, RegionMasks(regions.masks[:, :2], regions.names[:2]), task_regions=("chirp",))
    with pytest.raises(KeyError, match="task regions"):
        head_taxonomy(maps, regions, task_regions=("bar",))
    with pytest.raises(ValueError, match="non-negative"):
        region_mass(-maps, regions)


def test_layer_ranking_equals_a_naive_ranking():
    g = torch.Generator().manual_seed(1)
    n, layers = 4, 5
    masks = torch.rand(n, 1, SIZE, SIZE, generator=g) < 0.25
    regions = RegionMasks(masks, ("object",))
    maps = torch.rand(n, layers, GRID, GRID, generator=g) ** 3
    ranking = rank_layers(maps, regions, "object")
    naive = _naive_mass(maps, masks)[..., 0]
    assert torch.allclose(ranking.focus.double(), naive, atol=1e-6)
    for i in range(n):
        expected = sorted(range(layers), key=lambda layer: (-float(naive[i, layer]), layer))
        assert ranking.order[i].tolist() == expected
        assert ranking.rank[i, expected[0]].item() == 1
    assert ranking.top(3).shape == (n, 3)
    frame = ranking.to_frame()
    assert len(frame) == n * layers and set(ranking.summary()["layer"]) == set(range(layers))
    # a map all on the cell most covered by the object reaches the highest focus possible: ranked first
    focused = maps.clone()
    obj = regions.masks[0, 0].view(GRID, SIZE // GRID, GRID, SIZE // GRID).float().mean((1, 3))
    focused[0, 3] = (obj == obj.max()).float()
    assert rank_layers(focused, regions, "object").top(1)[0].item() == 3
