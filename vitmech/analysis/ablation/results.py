"""Result tables of ablation sweeps: small dataclasses with to_frame() / to_dict().

Effect = metric(ablated) - metric(clean) (means over the examples); pct_change = 100 * effect / |clean|
(the percentage of the clean metric, docs/ablation.md#metrics; |clean| keeps the sign of the effect for metrics
whose clean value is negative, such as logits; NaN when clean is 0). delta_se is the standard error of
the per-example effect (ddof 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import pandas as pd

from vitmech.analysis.ablation.heads import Cell
from vitmech.errors import UnknownNameError

GRID_VALUES = ("delta", "pct_change", "ablated", "delta_se")
"""The per-cell columns `HeadSweepResult.grid` lays out as a [layer, head] grid."""


@overload
def percent_change(delta: np.ndarray, clean: float) -> np.ndarray: ...


@overload
def percent_change(delta: float, clean: float) -> float: ...


def percent_change(delta: np.ndarray | float, clean: float) -> np.ndarray | float:
    """100 * delta / |clean| (NaN where clean is 0)."""
    delta = np.asarray(delta, dtype=np.float64)
    if clean == 0:
        return np.full(delta.shape, np.nan)
    return 100.0 * delta / abs(clean)


@dataclass
class AblationMeasurement:
    """What an ablation result was measured on, shared by the exact sweeps and the gradient estimates.

    Attributes:
        clean: metric of the clean model, mean over n_examples.
        n_examples: images averaged over.
        metric / ablation: what was measured and how heads were removed (their settings).
    """

    clean: float
    n_examples: int
    metric: dict[str, Any]
    ablation: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "n_examples": self.n_examples, "metric": self.metric, "ablation": self.ablation}


@dataclass
class AblationTable(AblationMeasurement):
    """One row per cell (a set of heads ablated together), measured as `AblationMeasurement` says.

    Attributes:
        cells: the cells, in sweep order.
        ablated: [n_cells] mean metric with each cell ablated.
        delta_se: [n_cells] standard error of the per-example effect.
        store_path: the resumable results file, if any.
    """

    cells: list[Cell]
    ablated: np.ndarray
    delta_se: np.ndarray
    store_path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> np.ndarray:
        return self.ablated - self.clean

    @property
    def pct_change(self) -> np.ndarray:
        return percent_change(self.delta, self.clean)

    def effect(self, name: str) -> float:
        """The effect (delta) of the cell with this name."""
        for i, cell in enumerate(self.cells):
            if cell.name == name:
                return float(self.delta[i])
        raise UnknownNameError(f"no cell named {name!r}")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "cell": [c.name for c in self.cells],
                "n_heads": [len(c.heads) for c in self.cells],
                "clean": self.clean,
                "ablated": self.ablated,
                "delta": self.delta,
                "pct_change": self.pct_change,
                "delta_se": self.delta_se,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "store_path": self.store_path,
            "cells": [c.to_dict() for c in self.cells],
            "rows": self.to_frame().to_dict(orient="records"),
        }


@dataclass
class HeadSweepResult(AblationTable):
    """A sweep of single heads, with the [layer, head] grid view (the paper's 12 x 12 heatmap).

    heads_per_layer gives the grid's shape (pruned models may have fewer heads in some layers: NaN there).
    """

    heads_per_layer: list[int] = field(default_factory=list)

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [c.heads[0] for c in self.cells]

    def grid(self, value: str = "pct_change") -> np.ndarray:
        """[n_layers, max_heads] array of `value` (one of GRID_VALUES); NaN where not swept."""
        if value not in GRID_VALUES:
            raise UnknownNameError(f"value must be one of {sorted(GRID_VALUES)}, got {value!r}")
        out = np.full((len(self.heads_per_layer), max(self.heads_per_layer, default=0)), np.nan)
        for (layer, head), v in zip(self.heads, getattr(self, value)):
            out[layer, head] = v
        return out

    def to_frame(self) -> pd.DataFrame:
        frame = super().to_frame()
        frame.insert(1, "layer", [h[0] for h in self.heads])
        frame.insert(2, "head", [h[1] for h in self.heads])
        return frame.drop(columns="n_heads")

    def layer_summary(self) -> pd.DataFrame:
        """Per layer: mean and std (ddof 1) over its heads of delta and pct_change, and the largest effect."""
        frame = self.to_frame()
        grouped = frame.groupby("layer")
        summary = pd.DataFrame(
            {
                "n_heads": grouped.size(),
                "mean_delta": grouped["delta"].mean(),
                "std_delta": grouped["delta"].std(ddof=1),
                "mean_pct_change": grouped["pct_change"].mean(),
                "std_pct_change": grouped["pct_change"].std(ddof=1),
                "max_abs_delta": grouped["delta"].apply(lambda d: float(np.abs(d).max())),
            }
        )
        return summary.reset_index()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["heads_per_layer"] = self.heads_per_layer
        out["grid_pct_change"] = self.grid("pct_change").tolist()
        out["grid_delta"] = self.grid("delta").tolist()
        return out
