"""Attention plots: results in, matplotlib figures out (headless-safe; nothing here runs a model).

fig = plot_head_grid(summary.metrics.cls_attention[0])           # L x H grid of CLS maps, one image
fig = plot_overlays(image, {"layer 11": map_11, "rollout": r})   # maps over the image
fig = plot_metric_by_layer({"before": df0, "after": df1}, "cls_entropy")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float

from vitmech.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ArrayLike = Any  # torch tensor or numpy array


def _figure(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    import matplotlib.pyplot as plt  # without a display, matplotlib falls back to Agg by itself

    return plt.subplots(*args, **kwargs)


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def denormalize(
    image: Float[torch.Tensor, "channel height width"], mean: Sequence[float], std: Sequence[float]
) -> Float[np.ndarray, "height width channel"]:
    """A preprocessed image back to displayable RGB in [0, 1] (undo mean/std normalisation)."""
    if image.ndim != 3:
        raise InputError(f"denormalize takes one image [C, H, W], got shape {list(image.shape)}")
    m = torch.as_tensor(mean, dtype=image.dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype)[:, None, None]
    return (image.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).float().numpy()


def _as_rgb(image: ArrayLike) -> np.ndarray:
    arr = np.asarray(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputError(f"images to draw on must be [H, W, 3] (uint8 or floats in [0, 1]), got shape {arr.shape}")
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)


def upsample_map(attention_map: ArrayLike, size: int, normalize: bool = True) -> np.ndarray:
    """A [g, g] map bilinearly upsampled to [size, size]; min-max scaled to [0, 1] when `normalize`."""
    grid = torch.as_tensor(_numpy(attention_map))
    if grid.ndim != 2:
        raise InputError(f"an attention map is [g, g], got shape {list(grid.shape)}")
    up = F.interpolate(grid[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    if not normalize:
        return up.numpy()
    low, high = up.min(), up.max()
    return ((up - low) / (high - low) if high > low else torch.zeros_like(up)).numpy()


MAP_CMAP = "inferno"
"""Perceptually uniform colour map for attention maps (ordered lightness, readable in grey)."""


def shared_range(maps: Sequence[ArrayLike]) -> tuple[float, float]:
    """(0, largest value) over all maps: one colour scale for every panel of a figure."""
    high = max(float(np.nanmax(_numpy(m))) for m in maps) if maps else 1.0
    return 0.0, high if high > 0 else 1.0


def draw_overlay(
    ax: Axes,
    image: ArrayLike,
    attention_map: ArrayLike,
    alpha: float = 0.55,
    cmap: str = MAP_CMAP,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """The map (upsampled) over the image on `ax`, on the colour scale [vmin, vmax] (default: the map's own
    min-max range, which the caller must then say). Returns the map's image artist (for a colour bar)."""
    rgb = _as_rgb(image)
    own_scale = vmin is None or vmax is None
    up = upsample_map(attention_map, rgb.shape[0], normalize=own_scale)
    ax.imshow(rgb)
    artist = ax.imshow(up, cmap=cmap, alpha=alpha, vmin=0 if own_scale else vmin, vmax=1 if own_scale else vmax)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return artist


def _colorbar(fig: Figure, artist: Any, axes: Any, label: str) -> None:
    fig.colorbar(artist, ax=axes, shrink=0.8, label=label)


def plot_overlays(
    image: ArrayLike,
    maps: Mapping[str, ArrayLike],
    ncols: int | None = None,
    alpha: float = 0.55,
    title: str | None = None,
    per_map_scale: bool = False,
) -> Figure:
    """The image, then each named [g, g] map over it, all on one colour scale [0, max] with a colour bar
    (`per_map_scale`: each map min-max scaled to its own range instead, and the figure says so)."""
    n = len(maps) + 1
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = _figure(nrows, ncols, figsize=(2.6 * ncols + 0.8, 2.7 * nrows), squeeze=False)
    flat = axes.ravel()
    flat[0].imshow(_as_rgb(image))
    flat[0].set_title("image", fontsize=9)
    flat[0].set_axis_off()
    vmin, vmax = (None, None) if per_map_scale else shared_range(list(maps.values()))
    artist = None
    for ax, (name, attention_map) in zip(flat[1:], maps.items()):
        artist = draw_overlay(ax, image, attention_map, alpha=alpha, title=name, vmin=vmin, vmax=vmax)
    for ax in flat[n:]:
        ax.set_axis_off()
    note = "each map scaled to its own range (per-map scale)" if per_map_scale else "one shared colour scale"
    fig.suptitle(f"{title}: {note}" if title else note, fontsize=10)
    if artist is not None:
        _colorbar(
            fig,
            artist,
            axes.ravel().tolist(),
            "relative (0 = min, 1 = max of each map)" if per_map_scale else "attention weight",
        )
    return fig


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each [..., a, b] map to [0, 1] (a constant map becomes 0)."""
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)


def plot_head_grid(
    maps: Float[ArrayLike, "layer head g g"],
    layers: Sequence[int] | None = None,
    title: str | None = None,
    image: ArrayLike | None = None,
    tile: int = 56,
    alpha: float = 0.6,
    cmap: str = MAP_CMAP,
    per_tile: bool = False,
) -> Figure:
    """Per-head CLS attention of one image: a layer x head mosaic (12 x 12 for ViT-B/16), blended over the
    image (resized to `tile` px) when one is given. All tiles share one colour scale [0, max over heads]
    with a colour bar, so a near-uniform head looks flat; `per_tile` scales each map to its own range
    instead (then the title says so). One imshow, so 144 heads draw in a fraction of a second."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    grid = _numpy(maps)
    if grid.ndim != 4:
        raise InputError(f"plot_head_grid takes maps [layer, head, g, g] of one image, got shape {grid.shape}")
    n_layers, n_heads, g, _ = grid.shape
    layers = list(layers) if layers is not None else list(range(n_layers))
    colour = matplotlib.colormaps[cmap]
    size = tile if image is not None else g
    up = torch.as_tensor(grid.reshape(-1, 1, g, g))
    if size != g:
        up = F.interpolate(up, size=(size, size), mode="bilinear", align_corners=False)
    values = up[:, 0].numpy()
    vmin, vmax = shared_range([grid])
    scaled = _scaled(values) if per_tile else np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    tiles = colour(scaled)[..., :3].reshape(n_layers, n_heads, size, size, 3)
    if image is not None:
        rgb = torch.as_tensor(_as_rgb(image)).permute(2, 0, 1)[None]
        thumb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        tiles = (1 - alpha) * thumb + alpha * tiles
    gap = max(1, size // 16)
    padded = np.pad(tiles, ((0, 0), (0, 0), (0, gap), (0, gap), (0, 0)), constant_values=1.0)
    mosaic = np.clip(rearrange(padded, "l h y x c -> (l y) (h x) c")[:-gap, :-gap], 0.0, 1.0)
    fig, ax = _figure(figsize=(0.8 * n_heads + 2.0, 0.8 * n_layers + 1.0))
    ax.imshow(mosaic, interpolation="nearest")
    centres = np.arange(n_heads) * (size + gap) + size / 2 - 0.5
    ax.set_xticks(centres, labels=[str(h) for h in range(n_heads)], fontsize=7)
    ax.set_yticks(np.arange(n_layers) * (size + gap) + size / 2 - 0.5, labels=[str(x) for x in layers], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    scale_note = "each map scaled to its own range (per-tile scale)" if per_tile else "one shared colour scale"
    ax.set_title(f"{title or 'CLS attention per head'}\n{scale_note}", fontsize=10)
    norm = Normalize(0, 1) if per_tile else Normalize(vmin, vmax)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap=colour),
        ax=ax,
        shrink=0.8,
        label="relative (0 = min, 1 = max of each tile)" if per_tile else "attention weight",
    )
    return fig


def plot_layer_progression(
    image: ArrayLike | Mapping[str, ArrayLike],
    maps: Mapping[str, Mapping[int, ArrayLike]],
    alpha: float = 0.55,
    title: str | None = None,
) -> Figure:
    """Rows: models (or any named set); columns: layers. maps[row][layer] is a [g, g] map, all on one
    colour scale with a colour bar. `image` is one image, or one per row (when the rows preprocess
    differently)."""
    rows = list(maps)
    layers = sorted({layer for row in maps.values() for layer in row})
    vmin, vmax = shared_range([m for row in maps.values() for m in row.values()])
    fig, axes = _figure(len(rows), len(layers), figsize=(2.6 * len(layers) + 0.8, 2.7 * len(rows)), squeeze=False)
    artist = None
    for r, row in enumerate(rows):
        img = image[row] if isinstance(image, Mapping) else image
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            if layer in maps[row]:
                artist = draw_overlay(
                    ax, img, maps[row][layer], alpha=alpha, title=f"{row}: layer {layer}", vmin=vmin, vmax=vmax
                )
            else:
                ax.set_axis_off()
    fig.suptitle((title or "CLS attention (head mean) by layer") + ": one shared colour scale", fontsize=10)
    if artist is not None:
        _colorbar(fig, artist, axes.ravel().tolist(), "attention weight")
    return fig


def plot_rollout_vs_last_layer(
    image: ArrayLike | Mapping[str, ArrayLike],
    rollout_maps: Mapping[str, ArrayLike],
    last_layer_maps: Mapping[str, ArrayLike],
    alpha: float = 0.55,
) -> Figure:
    """Columns: models; rows: last-layer CLS attention (head mean) and rollout, over the image; each row on
    its own shared colour scale (rollout and attention weights differ in range), with colour bars."""
    names = list(rollout_maps)
    fig, axes = _figure(2, len(names), figsize=(2.8 * len(names) + 1.0, 5.6), squeeze=False)
    for r, (label, maps) in enumerate((("last layer", last_layer_maps), ("rollout", rollout_maps))):
        vmin, vmax = shared_range([maps[n] for n in names])
        artist = None
        for c, name in enumerate(names):
            img = image[name] if isinstance(image, Mapping) else image
            artist = draw_overlay(
                axes[r, c], img, maps[name], alpha=alpha, title=f"{name}: {label}", vmin=vmin, vmax=vmax
            )
        _colorbar(fig, artist, axes[r].tolist(), f"{label} weight")
    fig.suptitle("one shared colour scale per row", fontsize=10)
    return fig


def plot_metric_by_layer(
    frames: Mapping[str, pd.DataFrame],
    metric: str,
    ylabel: str | None = None,
    title: str | None = None,
    reference: float | None = None,
    reference_label: str | None = None,
) -> Figure:
    """`<metric>_mean` against layer for each named frame (e.g. AttentionMetrics.layer_frame() before and
    after), with a +-1 std band over images from `<metric>_std` when present."""
    fig, ax = _figure(figsize=(6, 3.6))
    for name, frame in frames.items():
        if f"{metric}_mean" not in frame:
            raise UnknownNameError(f"frame {name!r} has no column {metric}_mean; columns: {list(frame.columns)}")
        layers = frame["layer"].to_numpy()
        mean = frame[f"{metric}_mean"].to_numpy(dtype=float)
        ax.plot(layers, mean, marker="o", label=name)
        if f"{metric}_std" in frame:
            std = frame[f"{metric}_std"].to_numpy(dtype=float)
            if np.isfinite(std).all():
                ax.fill_between(layers, mean - std, mean + std, alpha=0.2)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_head_heatmap(
    values: Float[ArrayLike, "layer head"],
    title: str,
    colorbar_label: str = "",
    diverging: bool = False,
    layers: Sequence[int] | None = None,
) -> Figure:
    """A layer x head heatmap (e.g. entropy change per head); `diverging` centres the colours on 0."""
    grid = _numpy(values)
    if grid.ndim != 2:
        raise InputError(f"plot_head_heatmap takes [layer, head], got shape {grid.shape}")
    fig, ax = _figure(figsize=(0.45 * grid.shape[1] + 2.2, 0.4 * grid.shape[0] + 1.4))
    if diverging:
        bound = float(np.nanmax(np.abs(grid))) or 1.0
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]), labels=[str(x) for x in (layers or range(grid.shape[0]))])
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    fig.tight_layout()
    return fig


def plot_distance_by_head(
    distances: Mapping[str, Float[ArrayLike, "layer head"]],
    image_size: int | None = None,
    title: str = "Mean attention distance per head",
) -> Figure:
    """Each head's mean attention distance (px) against its layer (Dosovitskiy et al. 2020, Fig. 7), per model."""
    fig, ax = _figure(figsize=(6, 3.8))
    markers = "os^vD"
    for i, (name, values) in enumerate(distances.items()):
        grid = _numpy(values)
        layers = np.repeat(np.arange(grid.shape[0]), grid.shape[1]) + (i - (len(distances) - 1) / 2) * 0.15
        ax.scatter(layers, grid.ravel(), s=12, alpha=0.7, marker=markers[i % len(markers)], label=name)
    if image_size:
        ax.set_ylim(0, image_size)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention distance (px)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
