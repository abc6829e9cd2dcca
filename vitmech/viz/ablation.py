"""Plots of ablation results (results in, matplotlib figures out; never runs a model).

- `plot_head_heatmap`: the [layer, head] grid of a head sweep (arXiv 2503.18762's 12 x 12 heatmap);
- `plot_layer_summary`: per-layer mean +- std over heads;
- `plot_estimates_vs_exact`: gradient estimates against exact effects, with Spearman correlations;
- `plot_pruning_curve`: the metric as heads are removed;
- `plot_pair_interactions`: a layer's head x head interaction matrix.

Layers and heads are 0-based, as everywhere in vitmech (the paper counts from 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

from vitmech.errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitmech.analysis.ablation.estimates import EstimateComparison
    from vitmech.analysis.ablation.groups import PairInteractions, PruningCurve
    from vitmech.analysis.ablation.results import HeadSweepResult

VALUE_LABELS = {
    "pct_change": "% change of the metric",
    "delta": "change of the metric",
    "ablated": "metric with the head ablated",
    "delta_se": "standard error of the change",
}


def _diverging_norm(grid: np.ndarray) -> TwoSlopeNorm | None:
    finite = grid[np.isfinite(grid)]
    if finite.size == 0:
        return None
    span = float(np.abs(finite).max()) or 1.0
    return TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)


def within_two_se(result: HeadSweepResult | np.ndarray) -> np.ndarray:
    """[layer, head] bool: cells whose change is within 2 standard errors of zero (|delta| < 2 delta_se),
    i.e. not distinguishable from no effect; all False for a bare array (no uncertainty known)."""
    if not hasattr(result, "grid"):
        return np.zeros(np.asarray(result).shape, dtype=bool)
    delta, se = result.grid("delta"), result.grid("delta_se")
    with np.errstate(invalid="ignore"):
        return np.isfinite(delta) & np.isfinite(se) & (np.abs(delta) < 2 * se)


def plot_head_heatmap(
    result: HeadSweepResult | np.ndarray,
    value: str = "pct_change",
    title: str | None = None,
    annotate: bool | None = None,
    fmt: str = ".2g",
    cmap: str = "RdBu_r",
    mark_uncertain: bool = True,
) -> Figure:
    """Heatmap of a head sweep: rows are layers (0 at the top), columns heads; red = the metric went up.

    result: a HeadSweepResult (its `grid(value)` is drawn) or a [layer, head] array. Unswept heads are blank.
    annotate: write each value in its cell (default: when the grid has at most 16 x 16 cells).
    mark_uncertain: grey out and hatch the cells within 2 standard errors of zero (`within_two_se`), so only
    effects the data resolve stand out; the title says so.
    """
    from matplotlib.patches import Rectangle

    grid = np.asarray(result.grid(value) if hasattr(result, "grid") else result, dtype=float)
    if grid.ndim != 2:
        raise InputError(f"expected a [layer, head] grid, got shape {grid.shape}")
    n_layers, n_heads = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.55 * n_heads), max(3.0, 1.3 + 0.45 * n_layers)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=_diverging_norm(grid), aspect="auto")
    fig.colorbar(image, ax=ax, label=VALUE_LABELS.get(value, value))
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    uncertain = within_two_se(result) if mark_uncertain else np.zeros(grid.shape, dtype=bool)
    for layer, head in zip(*np.nonzero(uncertain)):
        ax.add_patch(
            Rectangle(
                (head - 0.5, layer - 0.5), 1, 1, facecolor="lightgrey", edgecolor="grey", hatch="//", alpha=0.85, lw=0
            )
        )
    if annotate is None:
        annotate = n_layers <= 16 and n_heads <= 16
    if annotate:
        span = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        for (layer, head), v in np.ndenumerate(grid):
            if np.isfinite(v):
                colour = "dimgrey" if uncertain[layer, head] else "white" if abs(v) > 0.6 * span else "black"
                ax.text(head, layer, format(v, fmt), ha="center", va="center", fontsize=6, color=colour)
    heading = title or f"Head ablation: {VALUE_LABELS.get(value, value)}"
    if uncertain.any():
        heading += (
            f"\ngrey hatched: within 2 SE of zero ({int(uncertain.sum())} of {int(np.isfinite(grid).sum())} heads)"
        )
    elif mark_uncertain and hasattr(result, "grid"):
        heading += "\nevery head's change exceeds 2 SE"
    ax.set_title(heading, fontsize=10)
    fig.tight_layout()
    return fig


def plot_layer_summary(result: HeadSweepResult, value: str = "pct_change", title: str | None = None) -> Figure:
    """Per-layer mean over heads with +-1 std (ddof 1) error bars, and each head as a dot."""
    grid = result.grid(value)
    layers = np.arange(grid.shape[0])
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(grid).sum(1)
        mean = np.nanmean(np.where(counts[:, None] > 0, grid, 0.0), axis=1)
        std = np.array([np.nanstd(row, ddof=1) if n > 1 else 0.0 for row, n in zip(grid, counts)])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(layers) + 2), 3.2))
    swept = counts > 0
    ax.bar(layers[swept], mean[swept], yerr=std[swept], color="#7aa6c2", capsize=3, label="mean +- std over heads")
    for layer in layers[swept]:
        row = grid[layer][np.isfinite(grid[layer])]
        ax.scatter(np.full(row.shape, layer), row, s=8, color="#222222", zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(VALUE_LABELS.get(value, value))
    ax.set_title(title or "Ablation effect by layer")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_estimates_vs_exact(comparison: EstimateComparison, title: str | None = None) -> Figure:
    """Two scatter plots: exact effect vs attribution patching, |exact effect| vs Michel importance."""
    frame = comparison.to_frame()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.6))
    panels = [
        ("exact_delta", "attribution", f"attribution patching (Spearman {comparison.spearman_attribution:.2f})"),
        ("abs_exact_delta", "michel", f"Michel importance (Spearman {comparison.spearman_michel:.2f})"),
    ]
    for ax, (x, y, label) in zip(axes, panels):
        ax.scatter(frame[x], frame[y], c=frame["layer"], cmap="viridis", s=14)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y)
        ax.set_title(label, fontsize=9)
    lim = np.nanmax(np.abs(frame[["exact_delta", "attribution"]].to_numpy())) if len(frame) else 1.0
    axes[0].plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
    fig.suptitle(title or "Gradient estimates vs exact ablation effects (colour: layer)")
    fig.tight_layout()
    return fig


def plot_pruning_curve(curve: PruningCurve, value: str = "pct_change", title: str | None = None) -> Figure:
    """The metric change as heads are removed cumulatively (least important first)."""
    y = curve.pct_change if value == "pct_change" else curve.delta if value == "delta" else curve.metric_values
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(curve.n_removed, y, marker="o", ms=3)
    ax.axhline(0 if value != "metric" else curve.clean, color="grey", lw=0.8)
    ax.set_xlabel(f"heads removed (ordered by {curve.ordered_by})")
    ax.set_ylabel(VALUE_LABELS.get(value, value))
    ax.set_title(title or "Pruning curve")
    fig.tight_layout()
    return fig


def plot_pair_interactions(pairs: PairInteractions, layer: int, title: str | None = None, **kwargs: Any) -> Figure:
    """A layer's symmetric head x head interaction matrix (pair effect minus the two single effects)."""
    fig = plot_head_heatmap(
        pairs.matrix(layer), value="interaction", title=title or f"Pair interactions, layer {layer}", **kwargs
    )
    fig.axes[0].set_ylabel("head")
    return fig
