"""Plots of the head taxonomy and the layer ranking (results in, matplotlib figures out; never runs a model).

- `plot_taxonomy`: the [layer, head] grid of taxonomy labels (colour: label; letter: the dominant region),
  with the head-ablation heatmap of the same heads beside it when a sweep is given;
- `plot_top_layers`: per image, the maps of its three most-focused layers over the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import ListedColormap

from vitmech.analysis.taxonomy import DIFFUSE, LABELS, OFF_TASK, POLYSEMANTIC, TASK
from vitmech.viz.ablation import _diverging_norm, within_two_se
from vitmech.viz.attention import _figure, draw_overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitmech.analysis.ablation.results import HeadSweepResult
    from vitmech.analysis.layer_ranking import LayerRanking
    from vitmech.analysis.taxonomy import HeadTaxonomy

LABEL_COLOURS = {TASK: "#1b9e77", OFF_TASK: "#d95f02", POLYSEMANTIC: "#7570b3", DIFFUSE: "#e0e0e0"}
"""Colour of each taxonomy label (colour-blind safe Dark2 entries; diffuse light grey)."""


def _region_letters(names: Sequence[str]) -> dict[str, str]:
    """A short, distinct tag per region name (first letters, lengthened until distinct)."""
    for width in range(1, max(len(n) for n in names) + 1):
        tags = {n: n[:width] for n in names}
        if len(set(tags.values())) == len(names):
            return tags
    return {n: n for n in names}


def plot_taxonomy(
    taxonomy: HeadTaxonomy,
    ablation: HeadSweepResult | np.ndarray | None = None,
    value: str = "pct_change",
    title: str | None = None,
) -> Figure:
    """Taxonomy grid (rows: layers, 0 at the top; columns: heads), each cell coloured by its label and tagged
    with its dominant region; with `ablation`, the sweep's heatmap of `value` on the same grid beside it
    (cells within 2 standard errors of zero hatched)."""
    from matplotlib.patches import Patch, Rectangle

    labels = np.asarray(taxonomy.labels)
    n_layers, n_heads = labels.shape
    codes = np.vectorize(LABELS.index)(labels)
    panels = 2 if ablation is not None else 1
    width = max(4.5, 1.5 + 0.5 * n_heads)
    fig, axes = _figure(1, panels, figsize=(width * panels, max(3.4, 1.8 + 0.42 * n_layers)), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(codes, cmap=ListedColormap([LABEL_COLOURS[label] for label in LABELS]), vmin=0, vmax=len(LABELS) - 1)
    tags = _region_letters(taxonomy.region_names)
    for (layer, head), label in np.ndenumerate(labels):
        if label in (TASK, OFF_TASK):
            ax.text(head, layer, tags[taxonomy.dominant[layer, head]], ha="center", va="center", fontsize=6)
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    counts = taxonomy.counts()
    handles = [Patch(color=LABEL_COLOURS[label], label=f"{label} ({counts[label]})") for label in LABELS]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7, frameon=False)
    thresholds = taxonomy.thresholds
    ax.set_title(
        f"Head taxonomy over {taxonomy.n_images} images\n"
        f"tag: dominant region ({', '.join(f'{v}={k}' for k, v in tags.items())}); "
        f"attended: mass/area >= {thresholds.get('min_enrichment')}; monosemantic: H <= "
        f"{thresholds.get('monosemantic_max_entropy')}, share >= {thresholds.get('monosemantic_min_share')}",
        fontsize=8,
    )
    if ablation is not None:
        grid = np.asarray(ablation.grid(value) if hasattr(ablation, "grid") else ablation, dtype=float)
        right = axes[0, 1]
        artist = right.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", norm=_diverging_norm(grid))
        fig.colorbar(artist, ax=right, shrink=0.8, label=value.replace("_", " "))
        uncertain = within_two_se(ablation)
        for layer, head in zip(*np.nonzero(uncertain)):
            right.add_patch(
                Rectangle((head - 0.5, layer - 0.5), 1, 1, facecolor="lightgrey", edgecolor="grey", hatch="//", lw=0)
            )
        right.set_xticks(range(grid.shape[1]))
        right.set_yticks(range(grid.shape[0]))
        right.set_xlabel("head")
        right.set_ylabel("layer")
        right.set_title(
            f"Head ablation ({value.replace('_', ' ')})\ngrey hatched: within 2 SE of zero ({int(uncertain.sum())})",
            fontsize=8,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_top_layers(
    images: Sequence[Any],
    maps: Any,
    ranking: LayerRanking,
    k: int = 3,
    max_images: int = 4,
    title: str | None = None,
) -> Figure:
    """One row per image: the image, then the maps ([batch, layer, g, g]) of its k most-focused layers
    over it, each titled with its layer and focus (share of the map on the object; chance: its area share).
    Each map is drawn on its own min-max scale."""
    n = min(len(images), max_images)
    top = ranking.top(k)
    fig, axes = _figure(n, k + 1, figsize=(2.2 * (k + 1), 2.3 * n), squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(np.asarray(images[row]))
        axes[row, 0].set_axis_off()
        axes[row, 0].set_title(f"image {row}\n{ranking.region} area {float(ranking.area_share[row]):.2f}", fontsize=8)
        for col in range(k):
            layer = int(top[row, col])
            index = ranking.layers.index(layer)
            focus = float(ranking.focus[row, index])
            draw_overlay(
                axes[row, col + 1],
                images[row],
                maps[row, index],
                title=f"#{col + 1}: layer {layer}\nfocus {focus:.2f}",
            )
    fig.suptitle(title or f"Most-focused layers (share of the map on {ranking.region}; own scale per map)", fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["LABEL_COLOURS", "plot_taxonomy", "plot_top_layers"]
