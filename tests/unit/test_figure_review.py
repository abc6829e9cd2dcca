"""Figure review: every figure kind drawn from known inputs, checked for what an honest figure needs:
perceptually uniform (or, for signed values, diverging) colour maps, one shared colour scale with a colour
bar unless per-tile scaling is asked for (and then said), direction words only for significant changes,
and ablation cells within 2 SE of zero marked."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation import head_sweep
from vitmech.analysis.compare import _direction, compare_models
from vitmech.viz import attention as viz
from vitmech.viz.ablation import plot_head_heatmap, within_two_se

matplotlib.use("Agg")
UNIFORM = {"viridis", "inferno", "magma", "plasma", "cividis"}
DIVERGING = {"RdBu_r", "RdBu", "coolwarm", "PuOr", "PuOr_r"}


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def cmaps(fig) -> set[str]:
    return {im.get_cmap().name for ax in fig.axes for im in ax.images if im.get_array().ndim == 2}


def peaked_and_flat_maps() -> torch.Tensor:
    """[2 layers, 2 heads, 4, 4]: head 0 peaked on one patch, head 1 uniform up to a 0.03% ripple."""
    maps = torch.full((2, 2, 4, 4), 1 / 16)
    maps[:, 0] = 0.01
    maps[:, 0, 1, 2] = 1 - 0.01 * 15
    maps[:, 1, 0, 0] += 1e-4
    return maps


def test_head_grid_shares_one_scale_with_a_colour_bar_unless_per_tile_is_asked():
    maps = peaked_and_flat_maps()
    shared = viz.plot_head_grid(maps)
    assert len(colorbars(shared)) == 1 and "shared colour scale" in shared.axes[0].get_title()
    mosaic = shared.axes[0].images[0].get_array()
    flat_tile = mosaic[0:4, 5:9]  # layer 0, head 1 (4 px tiles + 1 px gap)
    assert np.ptp(flat_tile, axis=(0, 1)).max() < 0.02, "a near-uniform head must look flat"
    per_tile = viz.plot_head_grid(maps, per_tile=True)
    assert "own range" in per_tile.axes[0].get_title() and len(colorbars(per_tile)) == 1
    assert np.ptp(per_tile.axes[0].images[0].get_array()[0:4, 5:9], axis=(0, 1)).max() > 0.5
    assert viz.MAP_CMAP in UNIFORM


def test_overlays_progression_and_rollout_share_vmin_vmax_with_colour_bars():
    image = np.full((16, 16, 3), 128, np.uint8)
    flat = torch.full((4, 4), 1 / 16)
    flat[0, 0] += 1.5e-4  # entropy within 0.001 nats of uniform: must not show as a hot spot
    peaked = torch.zeros(4, 4)
    peaked[2, 2] = 1.0
    for fig in (
        viz.plot_overlays(image, {"flow": flat, "last layer": peaked}),
        viz.plot_layer_progression(image, {"m": {0: flat, 1: peaked}}),
    ):
        overlays = [ax.images[1] for ax in fig.axes if len(ax.images) == 2]
        assert len({im.get_clim() for im in overlays}) == 1, "panels must share vmin/vmax"
        assert overlays[0].get_clim() == (0.0, 1.0)
        assert len(colorbars(fig)) == 1 and cmaps(fig) <= UNIFORM
        flow = overlays[0].get_array()
        assert (flow.max() - flow.min()) / overlays[0].get_clim()[1] < 0.01
    fig = viz.plot_rollout_vs_last_layer({"m": image}, {"m": peaked}, {"m": flat})
    assert len(colorbars(fig)) == 2 and "shared colour scale" in fig._suptitle.get_text()
    per_map = viz.plot_overlays(image, {"flow": flat}, per_map_scale=True)
    assert "own range" in per_map._suptitle.get_text()


def test_heatmaps_have_colour_bars_and_honest_maps():
    fig = viz.plot_head_heatmap(torch.tensor([[1.0, -2.0], [0.5, 0.0]]), "change", diverging=True)
    assert len(colorbars(fig)) == 1 and cmaps(fig) <= DIVERGING and fig.axes[0].images[0].get_clim() == (-2.0, 2.0)
    fig = viz.plot_head_heatmap(torch.rand(2, 3), "distance", "px")
    assert len(colorbars(fig)) == 1 and cmaps(fig) <= UNIFORM


def test_ablation_heatmap_marks_cells_within_two_standard_errors():
    model = tiny_model(seed=1)
    images = seeded_images(6, 32, seed=1)
    result = head_sweep(model, images, "kl_to_clean", progress=False)
    frame = result.to_frame()
    expected = np.zeros((3, 4), dtype=bool)
    for row in frame.itertuples():
        expected[row.layer, row.head] = abs(row.delta) < 2 * row.delta_se
    assert (within_two_se(result) == expected).all()
    fig = plot_head_heatmap(result)
    hatched = [p for p in fig.axes[0].patches if p.get_hatch() == "//"]
    assert len(hatched) == expected.sum()
    assert len(colorbars(fig)) == 1
    if expected.any():
        assert "within 2 SE" in fig.axes[0].get_title()


@pytest.mark.parametrize(
    "change, p_holm, word",
    [
        (-0.3, 0.25, "no significant change"),
        (-0.3, 0.001, "more focused"),
        (0.4, 0.01, "more spread"),
        (0.4, float("nan"), "no significant change"),
    ],
)
def test_direction_words_only_for_holm_significant_changes(change, p_holm, word):
    assert _direction(change, "more focused", "more spread", p_holm) == word


def test_identical_models_read_no_significant_change(tiny_vit):
    model = tiny_vit
    images = seeded_images(4, 32, seed=2)
    table = compare_models(model, model, images, progress=False).summary_table()
    assert set(table["direction"]) == {"no significant change"}
    table = pd.DataFrame(table)
    assert (table["change"].abs() < 1e-6).all()
