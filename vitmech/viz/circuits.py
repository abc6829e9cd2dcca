"""Figures for circuits and attribution results (vitmech.analysis.circuits / .attribution).

Results in, `matplotlib.figure.Figure` out (no pyplot state, so headless anywhere); never runs a model.
Functions taking a mapping {model label: result} draw one series or panel per model (before/after).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure

from vitmech.analysis.attribution import DirectLogitAttribution, LogitLens
from vitmech.analysis.circuits import CompositionScores, PositionalLocality, PositionalQK

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def plot_positional_grids(
    pqk: PositionalQK,
    query: int | tuple[int, int] | str = "centre",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    softmax: bool = True,
    title: str = "",
) -> Figure:
    """One panel per (layer, head): the query's positional scores (or their softmax) on the patch grid."""
    n_layers, n_heads = pqk.scores.shape[:2]
    layers = list(range(n_layers)) if layers is None else list(layers)
    heads = list(range(n_heads)) if heads is None else list(heads)
    grids = pqk.query_grids(query, softmax=softmax)
    g = pqk.grid_size
    q_index = pqk.query_patch(query)
    fig = Figure(figsize=(1.1 * len(heads) + 0.6, 1.1 * len(layers) + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(layers), len(heads), squeeze=False))
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = axes[i, j]
            ax.imshow(grids[layer, head].numpy(), cmap="viridis")
            if q_index is not None:
                ax.plot(q_index % g, q_index // g, marker="x", color="red", markersize=4)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"H{head}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"L{layer}", fontsize=7)
    what = "softmax of positional scores" if softmax else "positional scores"
    fig.suptitle(title or f"{what} ({pqk.mode}) for query {query}", fontsize=9)
    return fig


def plot_locality(
    localities: Mapping[str, PositionalLocality],
    measured: Mapping[str, Float[torch.Tensor, "layer head"]] | None = None,
) -> Figure:
    """Per-head positional attention distance by layer for each model; with `measured` (mean attention
    distance on images, pixels, same models) a second panel compares the two per head."""
    panels = 2 if measured else 1
    fig = Figure(figsize=(5.5 * panels, 4))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    uniform = None
    for k, (label, loc) in enumerate(localities.items()):
        dist = loc.mean_distance_px
        n_layers, n_heads = dist.shape
        x = np.repeat(np.arange(n_layers), n_heads) + (k - (len(localities) - 1) / 2) * 0.15
        ax.scatter(x, dist.flatten().numpy(), s=10, color=COLOURS[k % len(COLOURS)], label=label, alpha=0.8)
        ax.plot(np.arange(n_layers), dist.mean(-1).numpy(), color=COLOURS[k % len(COLOURS)], lw=1)
        uniform = loc.uniform_distance_px
    if uniform is not None:
        ax.axhline(uniform, color="grey", ls="--", lw=1, label="uniform over patches")
    ax.set_xlabel("layer")
    ax.set_ylabel("positional attention distance (px)")
    ax.set_title("locality of positional QK (lower = more local)", fontsize=9)
    ax.legend(fontsize=7)
    if measured:
        ax = axes[1]
        for k, (label, dist) in enumerate(measured.items()):
            if label not in localities:
                continue
            ax.scatter(
                localities[label].mean_distance_px.flatten().numpy(),
                dist.flatten().numpy(),
                s=10,
                color=COLOURS[k % len(COLOURS)],
                label=label,
                alpha=0.8,
            )
        lim = [0, uniform * 1.15 if uniform else 1]
        ax.plot(lim, lim, color="grey", lw=1, ls=":")
        ax.set_xlabel("positional QK distance (px)")
        ax.set_ylabel("mean attention distance on images (px)")
        ax.set_title("positional prediction vs measured, per head", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_composition(comp: CompositionScores, mode: str, adjusted: bool = True, title: str = "") -> Figure:
    """Heatmap of one mode's scores, source heads (rows) x destination heads (columns), layer-major."""
    scores = comp.adjusted(mode) if adjusted else comp.scores[mode]
    n_layers, n_heads = scores.shape[:2]
    matrix = scores.reshape(n_layers * n_heads, n_layers * n_heads).numpy()
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    finite = matrix[np.isfinite(matrix)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    cmap = "RdBu_r" if adjusted and comp.subtract_baseline else "viridis"
    vmin = -vmax if cmap == "RdBu_r" else 0.0
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax)
    for boundary in range(1, n_layers):
        ax.axhline(boundary * n_heads - 0.5, color="white", lw=0.5)
        ax.axvline(boundary * n_heads - 0.5, color="white", lw=0.5)
    ticks = np.arange(n_layers) * n_heads + (n_heads - 1) / 2
    ax.set_xticks(ticks, [f"L{layer}" for layer in range(n_layers)], fontsize=7)
    ax.set_yticks(ticks, [f"L{layer}" for layer in range(n_layers)], fontsize=7)
    ax.set_xlabel("later head (reads)")
    ax.set_ylabel("earlier head (writes)")
    suffix = " minus random baseline" if adjusted and comp.subtract_baseline else ""
    ax.set_title(title or f"{mode}-composition{suffix}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_head_dla(dlas: Mapping[str, DirectLogitAttribution], image: int | None = None) -> Figure:
    """Bar chart of each head's direct logit attribution to the attributed class, one panel per model
    (mean over images, or one image), bars coloured by layer."""
    fig = Figure(figsize=(10, 2.6 * len(dlas)))
    axes = fig.subplots(len(dlas), 1, squeeze=False)[:, 0]
    for ax, (label, dla) in zip(axes, dlas.items()):
        heads = dla.head_attributions()
        values = heads.mean(0) if image is None else heads[image]
        n_layers, n_heads = values.shape
        colours = [COLOURS[layer % 2] for layer in range(n_layers) for _ in range(n_heads)]
        ax.bar(np.arange(n_layers * n_heads), values.flatten().numpy(), color=colours, width=0.85)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(
            np.arange(n_layers) * n_heads + (n_heads - 1) / 2, [f"L{layer}" for layer in range(n_layers)], fontsize=7
        )
        which = "mean over images" if image is None else f"image {image}"
        ax.set_title(f"{label}: direct logit attribution per head to the predicted class ({which})", fontsize=9)
        ax.set_ylabel("logit")
    fig.tight_layout()
    return fig


def plot_logit_lens(lenses: Mapping[str, LogitLens]) -> Figure:
    """Mean p(final class) and the share of images already predicting it, by layer, per model."""
    fig = Figure(figsize=(10, 3.5))
    ax_p, ax_a = fig.subplots(1, 2)
    for k, (label, lens) in enumerate(lenses.items()):
        x = np.arange(len(lens.labels))
        colour = COLOURS[k % len(COLOURS)]
        ax_p.plot(x, lens.final_class_probability.mean(0).numpy(), marker="o", ms=3, color=colour, label=label)
        ax_a.plot(x, lens.agreement.numpy(), marker="o", ms=3, color=colour, label=label)
    for ax, ylabel in ((ax_p, "mean p(final class)"), (ax_a, "share predicting the final class")):
        first = next(iter(lenses.values()))
        ax.set_xticks(np.arange(len(first.labels)), first.labels, fontsize=7, rotation=45)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("CLS residual after")
        ax.legend(fontsize=7)
    fig.suptitle("logit lens", fontsize=9)
    fig.tight_layout()
    return fig


def plot_head_change(
    before: Float[torch.Tensor, "layer head"],
    after: Float[torch.Tensor, "layer head"],
    quantity: str,
    labels: tuple[str, str] = ("before", "after"),
) -> Figure:
    """Three [layer x head] heatmaps: before, after and after - before, of one per-head quantity."""
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3)
    low, high = float(min(before.min(), after.min())), float(max(before.max(), after.max()))
    delta = after - before
    dmax = float(delta.abs().max()) or 1.0
    for ax, values, title, cmap, lim in (
        (axes[0], before, labels[0], "viridis", (low, high)),
        (axes[1], after, labels[1], "viridis", (low, high)),
        (axes[2], delta, f"{labels[1]} - {labels[0]}", "RdBu_r", (-dmax, dmax)),
    ):
        im = ax.imshow(values.numpy(), cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
        ax.set_title(f"{quantity}: {title}", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig
