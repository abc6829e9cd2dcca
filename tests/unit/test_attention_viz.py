"""Attention plots draw what they are given (headless) and reject malformed input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.typecheck import runtime_checks_off
from vitmech.viz import attention as viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_head_grid_is_one_mosaic_with_each_map_in_its_tile():
    maps = torch.zeros(3, 4, 2, 2)
    maps[1, 2, 0, 1] = 1.0  # one hot cell in layer 1, head 2
    fig = viz.plot_head_grid(maps, layers=[0, 5, 11])
    ax, colorbar = fig.axes
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (3 * 3 - 1, 4 * 3 - 1, 3)  # 2 px tiles + 1 px gaps
    hot = matplotlib.colormaps[viz.MAP_CMAP](1.0)[:3]
    assert np.allclose(mosaic[3, 2 * 3 + 1], hot)  # row 1 tile starts at 3; head 2 tile at 6, column 1
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "5", "11"]
    over_image = viz.plot_head_grid(maps, image=np.full((8, 8, 3), 255, np.uint8), tile=8)
    assert over_image.axes[0].images[0].get_array().shape == (3 * 9 - 1, 4 * 9 - 1, 3)
    with runtime_checks_off(), pytest.raises(ValueError, match="layer, head, g, g"):
        viz.plot_head_grid(torch.zeros(4, 2, 2))


def test_overlays_progression_rollout_and_curves():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    maps = {"a": torch.rand(4, 4), "b": torch.rand(4, 4)}
    fig = viz.plot_overlays(image, maps)
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == "a"  # image, two maps, colour bar
    fig = viz.plot_layer_progression(image, {"before": {0: maps["a"], 5: maps["b"]}, "after": {0: maps["b"]}})
    assert len(fig.axes) == 5 and fig.axes[0].get_title() == "before: layer 0"
    fig = viz.plot_rollout_vs_last_layer({"x": image}, {"x": maps["a"]}, {"x": maps["b"]})
    assert [ax.get_title() for ax in fig.axes][:2] == ["x: last layer", "x: rollout"]
    frame = pd.DataFrame({"layer": [0, 1], "cls_entropy_mean": [5.0, 4.0], "cls_entropy_std": [0.1, 0.2]})
    fig = viz.plot_metric_by_layer({"before": frame}, "cls_entropy", reference=5.278)
    assert list(fig.axes[0].lines[0].get_ydata()) == [5.0, 4.0]
    with pytest.raises(KeyError, match="top10_mean"):
        viz.plot_metric_by_layer({"before": frame}, "top10")
    fig = viz.plot_head_heatmap(torch.tensor([[1.0, -2.0]]), "change", diverging=True)
    assert fig.axes[0].images[0].get_clim() == (-2.0, 2.0)
    fig = viz.plot_distance_by_head({"m": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}, image_size=224)
    assert fig.axes[0].collections[0].get_offsets().shape == (4, 2)


def test_upsample_denormalize_and_bad_images():
    up = viz.upsample_map(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 8)
    assert up.shape == (8, 8) and up.min() == 0 and up.max() == 1
    assert (viz.upsample_map(torch.ones(2, 2), 4) == 0).all()
    image = torch.zeros(3, 4, 4)
    shown = viz.denormalize(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert shown.shape == (4, 4, 3) and np.allclose(shown, 0.5)
    with runtime_checks_off(), pytest.raises(ValueError, match="one image"):
        viz.denormalize(torch.zeros(1, 3, 4, 4), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        viz.plot_overlays(np.zeros((3, 8, 8)), {"a": torch.rand(2, 2)})
    with pytest.raises(ValueError, match=r"\[g, g\]"):
        viz.upsample_map(torch.rand(4), 8)
