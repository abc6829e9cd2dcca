"""Alignment plots: the study's tables in, matplotlib figures out (nothing here runs a model).

fig = plot_delta_iou(study.comparisons, "last_layer_mean")    # change in IoU by tier and model, 95% CIs
fig = plot_iou_by_layer(study.by_layer)                        # IoU by layer, before and after each tier
fig = plot_head_delta_grid(study.by_head, model)               # layer x head change in IoU, one panel per tier
fig = plot_region_overlays(image, masks, {"before": m0, "full": m1})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from vitmech.viz.attention import _as_rgb, _figure, upsample_map

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def plot_delta_iou(comparisons: pd.DataFrame, map_name: str, stamp: str | None = None) -> Figure:
    """Mean change in IoU (after - before) with its bootstrap 95% CI, grouped by model, one bar per tier;
    bars of Holm-significant comparisons are filled, others hatched. The attention-supervised tier is
    trained on the measure (its bars are labelled so)."""
    rows = comparisons[comparisons["map"] == map_name]
    models = list(dict.fromkeys(rows["model"]))
    tiers = list(dict.fromkeys(rows["tier"]))
    from matplotlib.patches import Patch

    fig, ax = _figure(figsize=(3.8 + 1.2 * len(models), 3.6))
    handles = []
    width = 0.8 / max(1, len(tiers))
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for j, tier in enumerate(tiers):
        part = rows[rows["tier"] == tier].set_index("model").reindex(models)
        x = np.arange(len(models)) + (j - (len(tiers) - 1) / 2) * width
        y = part["delta_iou"].to_numpy(float)
        err = np.vstack([y - part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float) - y])
        label = tier + (" (trained on the measure)" if tier == "attention_supervised" else "")
        for xi, yi, significant in zip(x, y, part["holm_significant"].to_numpy(bool)):
            ax.bar(
                xi,
                yi,
                width,
                color=colours[j % len(colours)],
                hatch=None if significant else "//",
                alpha=0.9,
                edgecolor="black",
                linewidth=0.5,
            )
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        handles.append(Patch(facecolor=colours[j % len(colours)], edgecolor="black", linewidth=0.5, label=label))
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(len(models)), labels=[m.replace("vitmech/", "") for m in models], fontsize=8)
    ax.set_ylabel("change in IoU (after - before)")
    title = f"Change in IoU with the annotated regions ({map_name}); 95% bootstrap CI; hatched: not Holm-significant"
    ax.set_title(title + (f"\n{stamp}" if stamp else ""), fontsize=8)
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def plot_iou_by_layer(by_layer: pd.DataFrame, chance: float | None = None, region: str = "union") -> Figure:
    """IoU of each layer's head-mean map with `region`, before and after each tier, one panel per model."""
    models = list(dict.fromkeys(by_layer["model"]))
    fig, axes = _figure(1, len(models), figsize=(3.4 * len(models), 3.2), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        part = by_layer[by_layer["model"] == model]
        for tier in dict.fromkeys(part["tier"]):
            rows = part[part["tier"] == tier]
            style = {"color": "black", "linewidth": 2} if tier == "before" else {"linewidth": 1}
            ax.plot(rows["layer"], rows["iou"], marker="o", markersize=3, label=tier, **style)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", label="chance (random ranking)")
        ax.set_title(model.replace("vitmech/", ""), fontsize=9)
        ax.set_xlabel("layer")
    axes[0, 0].set_ylabel(f"IoU, head-mean map vs {region} (mean over images)")
    axes[0, -1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_head_delta_grid(by_head: pd.DataFrame, model: str, region: str = "union") -> Figure:
    """Layer x head grid of the mean change in IoU (with `region`) for one model, one panel per tier;
    one symmetric colour scale across the panels."""
    part = by_head[by_head["model"] == model]
    tiers = list(dict.fromkeys(part["tier"]))
    n_layers, n_heads = int(part["layer"].max()) + 1, int(part["head"].max()) + 1
    limit = float(np.nanmax(np.abs(part["delta_iou"].to_numpy(float)))) or 1.0
    fig, axes = _figure(1, len(tiers), figsize=(2.9 * len(tiers) + 0.8, 3.0), squeeze=False)
    image = None
    for ax, tier in zip(axes[0], tiers):
        rows = part[part["tier"] == tier]
        grid = np.full((n_layers, n_heads), np.nan)
        grid[rows["layer"].to_numpy(int), rows["head"].to_numpy(int)] = rows["delta_iou"].to_numpy(float)
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(tier, fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="change in IoU (descriptive)")
    fig.suptitle(f"{model}: change in IoU with {region} per head (mean over images)", fontsize=9)
    return fig


def plot_region_overlays(
    image: Any, masks: Mapping[str, Any], maps: Mapping[str, Any], title: str | None = None
) -> Figure:
    """The image with the regions' outlines, then each named [g, g] map over it with the same outlines."""
    rgb = _as_rgb(image)
    n = len(maps) + 1
    fig, axes = _figure(1, n, figsize=(2.5 * n, 2.8), squeeze=False)
    colours = ["#ffffff", "#ffdd00", "#00ffcc", "#ff44ff", "#ff8800"]

    def outline(ax: Any) -> None:
        for j, (name, mask) in enumerate(masks.items()):
            mask = np.asarray(mask, dtype=float)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[colours[j % len(colours)]], linewidths=0.9)
                ax.plot([], [], color=colours[j % len(colours)], label=name)

    axes[0, 0].imshow(rgb)
    outline(axes[0, 0])
    axes[0, 0].set_title("image + regions", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="lower left", frameon=True, framealpha=0.5)
    for ax, (name, attention_map) in zip(axes[0, 1:], maps.items()):
        ax.imshow(rgb)
        ax.imshow(upsample_map(attention_map, rgb.shape[0]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        outline(ax)
        ax.set_title(name, fontsize=8)
    for ax in axes[0]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["plot_delta_iou", "plot_head_delta_grid", "plot_iou_by_layer", "plot_region_overlays"]
