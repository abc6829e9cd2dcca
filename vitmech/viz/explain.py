"""The image x method figure of `vitmech.analysis.explain` (nothing here runs a model).

    fig = plot_explanations(rgb_images, {"mini-galaxy": ex_vit, "mini-cnn": ex_cnn})

One row per image, one column per (model, method); every map over a grey copy of its image in a
perceptually uniform colour map (inferno), one colour scale per column shared by all its images (its
colour bar under the column). Explanations of random weights are stamped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from vitmech.errors import InputError
from vitmech.viz.attention import MAP_CMAP, _as_rgb, _figure
from vitmech.viz.stamp import RANDOM_WEIGHTS, stamp_random

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitmech.analysis.explain import Explanation


def _resized(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[B, h, w] maps bilinearly resized to the displayed image's [H, W]."""
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps.float().numpy()


def method_label(model_name: str, method: str, several: bool) -> str:
    return f"{model_name}\n{method}" if several else method


def plot_explanations(
    images: Sequence[Any] | np.ndarray,
    explanations: Mapping[str, Explanation],
    *,
    methods: Mapping[str, Sequence[str]] | None = None,
    row_titles: Sequence[str] | None = None,
    columns: Literal["model", "method"] = "model",
    cmap: str = MAP_CMAP,
    alpha: float = 0.65,
    stamp: bool | None = None,
    panel_size: float = 1.7,
) -> Figure:
    """Image x method grid.

    Args:
        images: the displayed images, [H, W, 3] uint8 or floats in [0, 1] (one per row).
        explanations: model name -> its Explanation of those images (same order).
        methods: model name -> methods to show (default: all of that explanation's maps).
        row_titles: one line per image (default: each model's target and prediction).
        columns: "model" (each model's methods together) or "method" (each method's maps of every model
            next to each other).
        stamp: write "RANDOM WEIGHTS" across the figure (default: when any explanation is of random weights).
    """
    if columns not in ("model", "method"):
        raise InputError(f"columns must be 'model' or 'method', got {columns!r}")
    rgb = [_as_rgb(image) for image in images]
    panels = [
        (name, method)
        for name, ex in explanations.items()
        for method in (methods or {}).get(name, list(ex.maps))
        if method in ex.maps
    ]
    if columns == "method":
        order = list(dict.fromkeys(method for _, method in panels))
        panels = sorted(panels, key=lambda panel: order.index(panel[1]))  # stable: model order kept per method
    if not rgb or not panels:
        raise InputError("plot_explanations needs at least one image and one map")
    several = len(explanations) > 1
    n_rows, n_cols = len(rgb), len(panels) + 1
    fig, axes = _figure(
        n_rows,
        n_cols,
        figsize=(panel_size * n_cols, panel_size * n_rows + 0.9),
        squeeze=False,
        constrained_layout=True,
    )
    for r, image in enumerate(rgb):
        ax = axes[r, 0]
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        if row_titles is not None:
            ax.set_ylabel(row_titles[r], fontsize=7)
        else:
            lines = []
            for name, ex in explanations.items():
                target, predicted = int(ex.targets[r]), int(ex.predicted[r])
                lines.append(f"{name}: {ex.class_name(predicted)}" + ("" if target == predicted else f" (t {target})"))
            ax.set_ylabel("\n".join(lines), fontsize=6)
        if r == 0:
            ax.set_title("image", fontsize=8)
    for c, (name, method) in enumerate(panels, start=1):
        ex = explanations[name]
        values = ex.maps[method][: len(rgb)]
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1.0
        artist = None
        for r, image in enumerate(rgb):
            grey = image.mean(-1)
            shown = _resized(values[r : r + 1], grey.shape[:2])[0]
            ax = axes[r, c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            artist = ax.imshow(shown, cmap=cmap, alpha=alpha, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(method_label(name, method, several), fontsize=7)
        assert artist is not None
        fig.colorbar(artist, ax=axes[:, c].tolist(), location="bottom", shrink=0.9, aspect=12, pad=0.01).ax.tick_params(
            labelsize=5
        )
    random = any(ex.random_weights for ex in explanations.values()) if stamp is None else stamp
    if random:
        fig.suptitle(RANDOM_WEIGHTS, color="red", fontsize=12, weight="bold")
        stamp_random(fig, [name for name, ex in explanations.items() if ex.random_weights])
    return fig


__all__ = ["plot_explanations"]
