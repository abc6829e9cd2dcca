"""Plots of patching, path patching, circuits and the per-patch logit lens (results in, figures out; never
runs a model).

- `plot_restored_heads`: restored fraction per [layer, head];
- `plot_restored_positions`: restored fraction of the residual stream per patch, one grid per layer;
- `plot_path_table`: a sender x receiver table of path patching;
- `plot_circuit`: a circuit as a layered graph (networkx), edges coloured by the sign of their score;
- `plot_faithfulness_curve`: faithfulness against circuit size;
- `plot_patch_lens`: the per-patch logit lens of one class, one grid per stage.

`note` puts a line under the title (e.g. "random weights" or the number of images).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np

from vitmech.viz.ablation import _diverging_norm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitmech.analysis.circuit_discovery import Circuit, EdgeScores
    from vitmech.analysis.patch_lens import PatchLogitLens
    from vitmech.analysis.patching import PatchingResult
    from vitmech.analysis.path_patching import PathPatchingResult


def _finish(
    fig: Figure, ax: Any, title: str, note: str | None, xlabel: str | None = None, ylabel: str | None = None
) -> Figure:
    """The axis labels, the title (with `note` on a line under it) and a tight layout; returns `fig`."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_restored_heads(
    result: PatchingResult | np.ndarray, title: str | None = None, note: str | None = None
) -> Figure:
    """Heatmap of the restored fraction per head (rows layers, columns heads; 1 = fully restored)."""
    grid = np.asarray(result.head_grid() if hasattr(result, "head_grid") else result, dtype=float)
    n_layers, n_heads = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.5 * n_heads), max(3.0, 1.0 + 0.4 * n_layers)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", norm=_diverging_norm(grid), aspect="auto")
    fig.colorbar(image, ax=ax, label="restored fraction")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    return _finish(fig, ax, title or "Activation patching per head", note, xlabel="head", ylabel="layer")


def plot_restored_positions(
    grids: np.ndarray, title: str | None = None, note: str | None = None, layers: list[int] | None = None
) -> Figure:
    """Restored fraction per patch on the grid, one panel per layer: grids [n_layers, rows, cols]."""
    grids = np.asarray(grids, dtype=float)
    layers = list(range(grids.shape[0])) if layers is None else layers
    cols = min(6, len(layers))
    rows = int(np.ceil(len(layers) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.1 * rows + 0.6), squeeze=False)
    norm = _diverging_norm(grids[layers])
    image = None
    for ax, layer in zip(axes.flat, layers):
        image = ax.imshow(np.ma.masked_invalid(grids[layer]), cmap="RdBu_r", norm=norm)
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="restored fraction")
    fig.suptitle((title or "Residual stream patched at one patch") + (f"\n{note}" if note else ""), fontsize=9)
    return fig


def plot_path_table(result: PathPatchingResult, title: str | None = None, note: str | None = None) -> Figure:
    """Heatmap of the restored fraction per (sender, receiver) path; blank where no path exists."""
    table = result.restored.numpy()
    fig, ax = plt.subplots(
        figsize=(max(4.0, 1.6 + 0.45 * len(result.receivers)), max(2.5, 1.0 + 0.35 * len(result.senders)))
    )
    image = ax.imshow(np.ma.masked_invalid(table), cmap="RdBu_r", norm=_diverging_norm(table), aspect="auto")
    fig.colorbar(image, ax=ax, label="restored fraction")
    ax.set_xticks(range(len(result.receivers)), result.receivers, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(result.senders)), result.senders, fontsize=7)
    return _finish(
        fig, ax, title or "Path patching", note, xlabel=f"receiver (through {result.component})", ylabel="sender"
    )


def _node_position(name: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    if name == "embed":
        return ((n_heads - 1) / 2, -1.0)
    if name == "logits":
        return ((n_heads - 1) / 2, float(n_layers))
    if name.startswith("MLP"):
        return (n_heads + 0.5, int(name[3:]) + 0.5)
    layer, head = name[1:].split("H")
    return (float(head), float(layer))


def plot_circuit(
    circuit: Circuit,
    scores: EdgeScores | None = None,
    title: str | None = None,
    note: str | None = None,
    max_edges: int = 300,
) -> Figure:
    """The circuit as a layered graph: embeddings at the bottom, the logits at the top, heads by (head, layer),
    MLPs to the right between layers. Edge width ~ |score| (when given), red = corrupting it lowers the metric.
    At most `max_edges` edges are drawn (the largest |score| first); the title says when some are left out."""
    import networkx as nx

    graph = circuit.graph
    g = nx.DiGraph()
    senders, receivers = circuit.edges.nonzero(as_tuple=True)
    widths, colours = [], []
    span = 1.0
    if scores is not None:
        chosen = scores.scores[senders, receivers].abs()
        span = float(chosen.max()) if chosen.numel() and float(chosen.max()) > 0 else 1.0
        order = chosen.argsort(descending=True)[:max_edges]
        senders, receivers = senders[order], receivers[order]
    else:
        senders, receivers = senders[:max_edges], receivers[:max_edges]
    if circuit.n_edges > len(senders):
        note = f"{len(senders)} of {circuit.n_edges} edges drawn (largest |score|)" + (f"; {note}" if note else "")
    for s, r in zip(senders.tolist(), receivers.tolist()):
        u, v = graph.sender_node(s), graph.receiver_node(r)
        component = graph.receiver_names[r].split(".")[1] if "." in graph.receiver_names[r] else ""
        score = float(scores.scores[s, r]) if scores is not None else 0.0
        g.add_edge(u, v, component=component)
        widths.append(0.5 + 3.0 * abs(score) / span)
        colours.append("#b2182b" if score < 0 else "#2166ac")
    pos = {n: _node_position(n, graph.n_layers, graph.n_heads) for n in g.nodes}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * graph.n_heads + 2), max(4.0, 0.6 * graph.n_layers + 2)))
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=260, node_color="#f0f0f0", edgecolors="#444444")
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=5)
    nx.draw_networkx_edges(
        g, pos, ax=ax, width=widths or 1.0, edge_color=colours or "grey", arrows=True, arrowsize=6, alpha=0.7
    )
    ax.set_xlabel("head (MLPs at the right)")
    ax.set_ylabel("layer")
    ax.set_yticks(range(-1, graph.n_layers + 1), ["embed", *map(str, range(graph.n_layers)), "logits"])
    ax.tick_params(left=True, labelleft=True)
    return _finish(
        fig,
        ax,
        title or f"Circuit: {circuit.n_edges} edges, faithfulness {circuit.faithfulness:.2f} (measured by running it)",
        note,
    )


def plot_faithfulness_curve(circuit: Circuit, title: str | None = None, note: str | None = None) -> Figure:
    """Faithfulness of each evaluated circuit against its number of edges."""
    points = sorted(circuit.curve)
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, "o-", ms=3)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.axhline(0.0, color="grey", lw=0.5)
    return _finish(
        fig, ax, title or "Circuits evaluated while pruning", note, xlabel="edges in the circuit", ylabel="faithfulness"
    )


def plot_patch_lens(
    lens: PatchLogitLens, cls: int, image: int | None = None, title: str | None = None, note: str | None = None
) -> Figure:
    """Probability of class `cls` read at every patch, one grid per stage (mean over images unless `image`)."""
    grids = lens.probability_grid(cls)
    grids = grids.mean(0) if image is None else grids[image]
    n = grids.shape[0]
    cols = min(7, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.6), squeeze=False)
    shown = None
    for ax, stage in zip(axes.flat, range(n)):
        shown = ax.imshow(grids[stage], vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(lens.labels[stage], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.8, label="probability")
    name = lens.class_names[cls] if lens.class_names else f"class {cls}"
    which = "mean over images" if image is None else f"image {image}"
    fig.suptitle((title or f"Per-patch logit lens: {name} ({which})") + (f"\n{note}" if note else ""), fontsize=9)
    return fig
