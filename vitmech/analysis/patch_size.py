"""Two ViTs that differ in patch size, compared on the same images (docs/explanations.md#patch-size).

The models see the same pixels but cut them into different grids (224 px: 14 x 14 patches of 16 px,
7 x 7 of 32 px), so nothing is compared token by token:

- maps: every map is resampled to one pixel grid (`common_grid`: bilinear, align_corners=False, as
  `vitmech.analysis.explain` puts token-grid maps on the image), then scored against the same masks;
- attention metrics are defined so a number means the same at both patch sizes: mean attention distance
  is in pixels; the CLS entropy is also given relative to its maximum ln N (N patches); the top-k
  concentration counts the same pixel area in both models (`equal_area_k`: k patches of the coarsest
  model, k (p_max / p)^2 of a model of patch p);
- every per-image number is paired across the two models (`paired_table`: paired t-test, bootstrap CI of
  the mean difference, Holm over the table) and a direction word is given only where the Holm-adjusted
  p < 0.05.

    k = equal_area_k([16, 32], 8)                                   # [32, 8]
    frame = layer_attention(model, images, k=32)                    # image x layer x metric
    table = paired_table(long_frame, ["layer", "metric"], ("p16", "p32"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float
from torch import Tensor

from vitmech.analysis.explain import to_image_grid
from vitmech.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model.hooked_vit import HookedViT

SIGNIFICANCE = 0.05
"""Holm-adjusted p below which a difference gets a direction word; otherwise "no significant difference"."""
ATTENTION_METRICS = ("cls_entropy", "cls_entropy_relative", "cls_top_k_equal_area", "mean_distance_px")
"""Per layer, from each image's head-mean CLS map (entropy, top-k) and the head mean of the distances."""


def common_grid(maps: Float[Tensor, "batch gh gw"], size: tuple[int, int]) -> Float[Tensor, "batch height width"]:
    """Maps resampled to one [height, width] grid: bilinear interpolation, align_corners=False (torch's
    `F.interpolate`; each output pixel reads the input at ((i + 0.5) * gh / height - 0.5, ...), edges
    clamped). Identity for maps already on that grid."""
    if maps.ndim != 3:
        raise InputError(f"maps must be [batch, height, width], got shape {list(maps.shape)}")
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"size must be (height, width) of positive ints, got {size!r}")
    return to_image_grid(maps, (int(size[0]), int(size[1])))


def equal_area_k(patch_sizes: Sequence[int], k: int) -> list[int]:
    """Top-k patch counts covering the same pixel area in every model: `k` patches of the coarsest model
    (largest patch p_max), k (p_max / p)^2 patches of a model of patch p. InputError when a patch size does
    not divide p_max (no whole number of patches covers the same area)."""
    if not patch_sizes or min(patch_sizes) < 1:
        raise InputError(f"patch sizes must be positive, got {list(patch_sizes)}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    largest = max(patch_sizes)
    ks = []
    for p in patch_sizes:
        if largest % p:
            raise InputError(f"patch size {p} does not divide {largest}: no equal-area top-k for these models")
        ks.append(k * (largest // p) ** 2)
    return ks


def layer_attention(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    k: int,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """Long frame (image, layer, metric, value) of `ATTENTION_METRICS` for every image and layer, from
    `vitmech.analysis.attention.attention_metrics(patterns, model)` with top-k `k` (batches of
    `batch_size` images, so only one batch's patterns are held):

    - cls_entropy: entropy (nats) of the head-mean CLS map over the patches;
    - cls_entropy_relative: that entropy / ln N (N patches): 1 is uniform, 0 one patch;
    - cls_top_k_equal_area: attention mass of the head-mean CLS map on its k largest patches;
    - mean_distance_px: mean attention distance in pixels, mean over heads.
    """
    import pandas as pd

    from vitmech.analysis.attention import AttentionMetrics, AttentionSettings, attention_metrics, collect_patterns
    from vitmech.tokens import token_layout

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    settings = AttentionSettings(k=k)
    parts = []
    for start in range(0, images.shape[0], batch_size):
        patterns = collect_patterns(model, images[start : start + batch_size], batch_size=batch_size, progress=progress)
        parts.append(attention_metrics(patterns.float().cpu(), model, settings))
    metrics = AttentionMetrics.concat(parts)
    n_patches = token_layout(model).n_patches
    values = {
        "cls_entropy": metrics.cls_entropy_head_mean,
        "cls_entropy_relative": metrics.cls_entropy_head_mean / math.log(n_patches),
        "cls_top_k_equal_area": metrics.cls_top_k_head_mean,
        "mean_distance_px": metrics.mean_distance.mean(-1),
    }
    n_images, n_layers = metrics.cls_entropy_head_mean.shape
    frames = [
        pd.DataFrame(
            {
                "image": np.repeat(np.arange(n_images), n_layers),
                "layer": np.tile(np.asarray(metrics.layers), n_images),
                "metric": name,
                "value": value.double().flatten().numpy(),
            }
        )
        for name, value in values.items()
    ]
    return pd.concat(frames, ignore_index=True)


def map_agreement(
    maps_a: Float[Tensor, "batch height width"], maps_b: Float[Tensor, "batch height width"]
) -> Float[np.ndarray, " batch"]:
    """Pearson r between two models' maps of each image on one grid (NaN where a map is constant)."""
    if maps_a.shape != maps_b.shape:
        raise InputError(f"maps must be on one grid: {list(maps_a.shape)} vs {list(maps_b.shape)}")
    a = maps_a.flatten(1).double()
    b = maps_b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denominator = (a.norm(dim=1) * b.norm(dim=1)).numpy()
    numerator = (a * b).sum(1).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def direction(difference: float, p_holm: float, lower: str, higher: str) -> str:
    """A direction word only for a Holm-significant difference (p_holm < SIGNIFICANCE)."""
    if not p_holm < SIGNIFICANCE or difference == 0:  # NaN p is not significant
        return "no significant difference"
    return higher if difference > 0 else lower


def paired_table(
    frame: pd.DataFrame,
    keys: Sequence[str],
    models: tuple[str, str],
    *,
    value: str = "value",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per `keys` group: each model's mean, the mean paired difference (models[1] - models[0]) over
    the images both have a finite value for, its bootstrap CI, Cohen's d_z, t-test p, Holm-adjusted p over
    the whole table, and a direction word only where significant.

    frame: long format with columns "model", "image", *keys and `value`.
    """
    import pandas as pd

    from vitmech.analysis.stats import holm, paired_comparison

    first, second = models
    missing = {"model", "image", value, *keys} - set(frame.columns)
    if missing:
        raise InputError(f"frame lacks the columns {sorted(missing)}")
    rows = []
    for group, part in frame.groupby(list(keys), sort=False):
        wide = part.pivot_table(index="image", columns="model", values=value, aggfunc="first")
        if first not in wide or second not in wide:
            continue
        both = wide[[first, second]].dropna()
        key_values = group if isinstance(group, tuple) else (group,)
        row: dict[str, Any] = dict(zip(keys, key_values))
        row.update({f"mean_{first}": float(both[first].mean()), f"mean_{second}": float(both[second].mean())})
        if len(both) >= 2:
            test = paired_comparison(both[first].to_numpy(), both[second].to_numpy(), n_resamples, seed=seed)
            row.update(
                difference=test.mean_change,
                ci_low=test.ci_low,
                ci_high=test.ci_high,
                cohens_dz=test.cohens_dz,
                p=test.p,
            )
        else:
            row.update(difference=float("nan"), ci_low=float("nan"), ci_high=float("nan"), cohens_dz=float("nan"))
            row["p"] = float("nan")
        row["n_images"] = len(both)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    tested = table["p"].notna()
    table["p_holm"] = float("nan")
    table.loc[tested, "p_holm"] = holm(table.loc[tested, "p"].tolist())
    table["direction"] = [
        direction(d, p, f"lower in {second}", f"higher in {second}")
        for d, p in zip(table["difference"], table["p_holm"])
    ]
    return table


__all__ = [
    "ATTENTION_METRICS",
    "SIGNIFICANCE",
    "common_grid",
    "direction",
    "equal_area_k",
    "layer_attention",
    "map_agreement",
    "paired_table",
]
