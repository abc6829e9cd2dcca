"""Per-layer attention metrics of models that differ in patch size, one panel per metric (nothing here runs
a model; the numbers come from `vitmech.analysis.patch_size.layer_attention`).

    fig = plot_layer_metrics(frame, ["p16", "p32"])   # frame: model, image, layer, metric, value
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vitmech.errors import InputError
from vitmech.viz.attention import _figure

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

METRIC_LABELS = {
    "cls_entropy": "CLS entropy (nats)",
    "cls_entropy_relative": "CLS entropy / ln N",
    "cls_top_k_equal_area": "top-k mass (same pixel area)",
    "mean_distance_px": "mean attention distance (px)",
}


def mean_and_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided t interval (mean +- t_{(1+c)/2, n-1} sd / sqrt(n)); NaN bounds for n < 2."""
    from scipy import stats

    values = values[np.isfinite(values)]
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def plot_layer_metrics(frame: pd.DataFrame, models: Sequence[str], panel_size: float = 2.6) -> Figure:
    """One panel per metric: each model's mean over images by layer, its 95% t interval shaded."""
    metrics = list(dict.fromkeys(frame["metric"]))
    if not metrics or not models:
        raise InputError("plot_layer_metrics needs at least one metric and one model")
    fig, axes = _figure(1, len(metrics), figsize=(panel_size * len(metrics), panel_size), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = frame[frame["metric"] == metric]
        for model in models:
            rows = part[part["model"] == model]
            layers = sorted(rows["layer"].unique())
            stats = [mean_and_interval(rows.loc[rows["layer"] == layer, "value"].to_numpy(float)) for layer in layers]
            mean, low, high = (np.array(column) for column in zip(*stats)) if stats else ([], [], [])
            (line,) = ax.plot(layers, mean, marker="o", markersize=3, label=model)
            ax.fill_between(layers, low, high, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["METRIC_LABELS", "mean_and_interval", "plot_layer_metrics"]
