"""Cooperative (group) ablations: whole layers, given head sets, pairs with their interaction, and a
pruning curve (the metric as heads are removed cumulatively in order of importance).

All run through `ablation_sweep`, so they are exact, batched and (with store=) resumable; keyword
arguments (targets, batch_size, max_batch, store, progress, engine) pass through to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from vitmech.analysis.ablation.errors import AblationError
from vitmech.analysis.ablation.estimates import estimate_head_effects
from vitmech.analysis.ablation.heads import (
    Cell,
    Head,
    HeadsLike,
    all_heads,
    check_layer,
    head_label,
    heads_per_layer,
    make_cells,
    parse_heads,
)
from vitmech.analysis.ablation.interventions import AblationLike
from vitmech.analysis.ablation.metrics import MetricLike
from vitmech.analysis.ablation.results import AblationTable, percent_change
from vitmech.analysis.ablation.sweep import ablation_sweep, head_sweep
from vitmech.errors import UnknownNameError
from vitmech.model.hooked_vit import HookedViT


def layer_ablation(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    layers: Sequence[int] | None = None,
    **sweep_kwargs: Any,
) -> AblationTable:
    """Ablate all heads of each layer together (cells 'layer 0', 'layer 1', ...)."""
    chosen = range(len(model.blocks)) if layers is None else [check_layer(model, layer) for layer in layers]
    cells = [Cell(f"layer {layer}", tuple(all_heads(model, [layer]))) for layer in chosen]
    return ablation_sweep(model, images, cells, metric, ablation, **sweep_kwargs)


def head_set_ablation(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    sets: Mapping[str, HeadsLike] | Sequence[HeadsLike],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    **sweep_kwargs: Any,
) -> AblationTable:
    """Ablate each given set of heads together ({name: heads} or a list of head sets)."""
    return ablation_sweep(model, images, make_cells(model, sets), metric, ablation, **sweep_kwargs)


@dataclass
class PairInteractions:
    """Pairs of heads within a layer: interaction = pair effect - (effect of a + effect of b).

    frame columns: layer, head_a, head_b, effect_a, effect_b, pair_effect, interaction (metric units).
    A negative interaction for a loss means the two heads are partly redundant (together they
    hurt less than the sum of their parts); positive means they cooperate.
    """

    frame: pd.DataFrame
    clean: float
    n_heads: int
    metric: dict[str, Any]
    ablation: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def matrix(self, layer: int, value: str = "interaction") -> np.ndarray:
        """[n_heads, n_heads] symmetric matrix of `value` for one layer (NaN on the diagonal)."""
        out = np.full((self.n_heads, self.n_heads), np.nan)
        rows = self.frame[self.frame["layer"] == layer]
        if rows.empty:
            raise UnknownNameError(f"layer {layer} was not part of this pair sweep")
        for a, b, v in zip(rows["head_a"], rows["head_b"], rows[value]):
            out[a, b] = out[b, a] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "metric": self.metric,
            "ablation": self.ablation,
            "rows": self.frame.to_dict(orient="records"),
        }


def pair_interactions(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    layers: Sequence[int] | None = None,
    **sweep_kwargs: Any,
) -> PairInteractions:
    """Every single head and every pair of heads within each layer, in one sweep."""
    chosen = range(len(model.blocks)) if layers is None else [check_layer(model, layer) for layer in layers]
    singles, pairs = [], []
    for layer in chosen:
        heads = all_heads(model, [layer])
        singles += [Cell(head_label(h), (h,)) for h in heads]
        pairs += [Cell(f"{head_label(a)}+{head_label(b)}", (a, b)) for a, b in combinations(heads, 2)]
    if not pairs:
        raise AblationError("pair interactions need layers with at least two heads")
    table = ablation_sweep(model, images, singles + pairs, metric, ablation, **sweep_kwargs)
    effect = dict(zip([c.name for c in table.cells], table.delta))
    rows = []
    for cell in pairs:
        a, b = cell.heads
        ea, eb, eab = effect[head_label(a)], effect[head_label(b)], effect[cell.name]
        rows.append(
            {
                "layer": a[0],
                "head_a": a[1],
                "head_b": b[1],
                "effect_a": ea,
                "effect_b": eb,
                "pair_effect": eab,
                "interaction": eab - (ea + eb),
            }
        )
    return PairInteractions(pd.DataFrame(rows), table.clean, max(heads_per_layer(model)), table.metric, table.ablation)


@dataclass
class PruningCurve:
    """The metric with the first k heads of `order` ablated together, for each k in n_removed.

    importance: the score that ordered the heads (|exact effect| or |estimated effect|; None if given).
    """

    order: list[Head]
    n_removed: np.ndarray
    metric_values: np.ndarray
    clean: float
    ordered_by: str
    importance: np.ndarray | None
    metric: dict[str, Any]
    ablation: dict[str, Any]

    @property
    def delta(self) -> np.ndarray:
        return self.metric_values - self.clean

    @property
    def pct_change(self) -> np.ndarray:
        return percent_change(self.delta, self.clean)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "n_removed": self.n_removed,
                "last_removed": [head_label(self.order[k - 1]) if k > 0 else "" for k in self.n_removed],
                "metric": self.metric_values,
                "delta": self.delta,
                "pct_change": self.pct_change,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "ordered_by": self.ordered_by,
            "order": [head_label(h) for h in self.order],
            "metric": self.metric,
            "ablation": self.ablation,
            "rows": self.to_frame().to_dict(orient="records"),
        }


def pruning_curve(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    order: Literal["exact", "estimate"] | Sequence[Head] = "exact",
    steps: Sequence[int] | None = None,
    targets: torch.Tensor | None = None,
    **sweep_kwargs: Any,
) -> PruningCurve:
    """Remove heads cumulatively, least important first, and evaluate the metric after each step.

    order: "exact" ranks heads by |effect| of an exact single-head sweep, "estimate" by |attribution
    patching estimate| (one backward pass), or an explicit sequence of heads (removed in that order).
    steps: numbers of removed heads to evaluate (default every k from 0 to all heads). Each step is one
    cell of a sweep starting at the earliest removed layer, so a full curve costs about one forward per step.
    """
    importance = None
    if isinstance(order, str):
        heads = all_heads(model)
        if order == "exact":
            sweep = head_sweep(model, images, metric, ablation, targets=targets, **sweep_kwargs)
            importance = np.abs(sweep.delta)
            heads = sweep.heads
        elif order == "estimate":
            kwargs = {k: v for k, v in sweep_kwargs.items() if k == "batch_size"}
            est = estimate_head_effects(model, images, metric, ablation, targets=targets, **kwargs)
            importance = np.abs(np.array([est.attribution[layer, head] for layer, head in heads]))
        else:
            raise AblationError(f"order must be 'exact', 'estimate' or a sequence of heads, got {order!r}")
        ranked = [heads[i] for i in np.argsort(importance, kind="stable")]
        importance = np.sort(importance, kind="stable")
        ordered_by = f"|{order} effect|"
    else:
        ranked = list(order)
        parsed = parse_heads(model, ranked)
        if len(parsed) != len(ranked):
            raise AblationError("order must list each head at most once")
        ranked = [tuple(h) for h in ranked]
        ordered_by = "given order"
    if steps is None:
        steps = range(len(ranked) + 1)
    steps = sorted({int(k) for k in steps})
    if not steps or steps[0] < 0 or steps[-1] > len(ranked):
        raise AblationError(f"steps must lie in [0, {len(ranked)}], got {steps}")
    cells = [Cell(f"first {k}", tuple(sorted(ranked[:k]))) for k in steps]
    table = ablation_sweep(model, images, cells, metric, ablation, targets=targets, **sweep_kwargs)
    return PruningCurve(
        order=ranked,
        n_removed=np.array(steps),
        metric_values=table.ablated,
        clean=table.clean,
        ordered_by=ordered_by,
        importance=importance,
        metric=table.metric,
        ablation=table.ablation,
    )
