"""Ablation sweeps: evaluate a metric with each cell (set of heads) ablated, exactly and fast.

    result = head_sweep(model, images, "mse", targets=y)           # all heads, one at a time
    result.grid("pct_change")                                       # [n_layers, n_heads]
    table = ablation_sweep(model, images, cells, metric)            # any sets of heads

engine="exact" (default) restarts from cached clean activations at each cell's first ablated layer
and stacks several cells into one forward (see `_recompute`); engine="naive" is the reference: one
full `model.run_with_hooks` forward per cell with the hooks of `head_ablation_hooks`. They agree
within float32 rounding (tested to 1e-4).

With `store=<folder>` every finished cell is written to `<folder>/sweep-<settings hash>.jsonl` at
once; rerunning the same call resumes from it and returns the identical table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from vitmech.analysis.ablation._recompute import run_clean, run_variants
from vitmech.analysis.ablation.errors import AblationError, EmptyReferenceError, MetricError
from vitmech.analysis.ablation.heads import Cell, HeadsLike, heads_per_layer, make_cell, make_cells, single_head_cells
from vitmech.analysis.ablation.interventions import (
    AblationLike,
    BoundAblation,
    HeadAblation,
    hooks_for_bound,
    resolve_ablation,
)
from vitmech.analysis.ablation.metrics import OUTPUT_KINDS, Metric, MetricLike, OutputKind, resolve_metric
from vitmech.analysis.ablation.results import AblationTable, HeadSweepResult
from vitmech.analysis.ablation.store import JsonlStore, MemoryStore
from vitmech.batching import batch_bounds
from vitmech.device import on_model_device
from vitmech.fingerprint import module_fingerprint, settings_fingerprint, tensor_fingerprint
from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)

Engine = Literal["exact", "naive"]
CellLike = Cell | HeadsLike


def check_inputs(
    model: HookedViT,
    images: Any,
    metric: Metric,
    targets: torch.Tensor | None,
    batch_size: int,
    ablation: HeadAblation | None = None,
) -> None:
    """Clear errors for bad sweep inputs (before any compute)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise AblationError(f"images must be a non-empty batch [N, C, S, S]; got {shape}")
    model.check_images(images)
    metric.check_model(model)
    if metric.needs_targets and targets is None:
        raise MetricError(f"metric {metric.name!r} needs targets (labels or regression values): pass targets=")
    if targets is not None and (not isinstance(targets, torch.Tensor) or targets.shape[0] != images.shape[0]):
        got = targets.shape[0] if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise MetricError(f"targets must be a tensor with one row per image ({images.shape[0]}); got {got}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise AblationError(f"batch_size must be a positive int, got {batch_size!r}")
    if ablation is not None and min(images.shape[0], batch_size) < ablation.min_batch:
        raise EmptyReferenceError(
            f"{ablation.name} ablation without source images needs at least {ablation.min_batch} "
            f"images per batch; got {images.shape[0]} images in batches of {batch_size} "
            "(or pass source=reference images)"
        )


def plan_chunks(cells: Sequence[Cell], variants_per_chunk: int) -> list[list[int]]:
    """Group cell indices by start layer, then into balanced chunks of at most `variants_per_chunk`.

    The plan depends only on the cells and the chunk size, so a resumed sweep computes every chunk
    with exactly the same stacking as an uninterrupted one.
    """
    by_start: dict[int, list[int]] = {}
    for i, cell in enumerate(cells):
        by_start.setdefault(cell.start_layer, []).append(i)
    chunks = []
    for layer in sorted(by_start):
        idx = by_start[layer]
        n_chunks = math.ceil(len(idx) / variants_per_chunk)
        size = math.ceil(len(idx) / n_chunks)
        chunks += [idx[j : j + size] for j in range(0, len(idx), size)]
    return chunks


def _variant_masks(model: HookedViT, cells: Sequence[Cell]) -> dict[int, torch.Tensor]:
    counts = heads_per_layer(model)
    masks: dict[int, torch.Tensor] = {}
    for k, cell in enumerate(cells):
        for layer, head in cell.heads:
            if layer not in masks:
                masks[layer] = torch.zeros(len(cells), counts[layer], dtype=torch.bool, device=model.device)
            masks[layer][k, head] = True
    return masks


def _exact_outputs(model, state, bound, cells: Sequence[Cell], output_kind, weight_cache=None) -> list[torch.Tensor]:
    masks = _variant_masks(model, cells)
    out = run_variants(model, state, bound, cells[0].start_layer, masks, len(cells), output_kind, weight_cache)
    return list(out.reshape(len(cells), -1, *out.shape[1:]).unbind(0))


@torch.no_grad()
def _naive_outputs(model, images, ablation, bound, cells: Sequence[Cell], output_kind) -> list[torch.Tensor]:
    return [
        model.run_with_hooks(
            images, fwd_hooks=hooks_for_bound(model, cell.heads, ablation, bound), return_type=output_kind
        )
        for cell in cells
    ]


def _cell_record(batch: int, cell: Cell, values: torch.Tensor, clean_values: torch.Tensor) -> dict[str, Any]:
    v = values.double()
    return {
        "type": "cell",
        "batch": batch,
        "cell": cell.name,
        "n": int(v.shape[0]),
        "sum": float(v.sum()),
        "sum_delta_sq": float((v - clean_values.double()).pow(2).sum()),
    }


def _table(
    store: MemoryStore, cells: Sequence[Cell], n_batches: int, metric: Metric, ablation: HeadAblation
) -> AblationTable:
    clean_sum = math.fsum(store.clean[b]["sum"] for b in range(n_batches))
    n = sum(store.clean[b]["n"] for b in range(n_batches))
    ablated, se = [], []
    for cell in cells:
        records = [store.cells[(b, cell.name)] for b in range(n_batches)]
        total = math.fsum(r["sum"] for r in records)
        mean_delta = (total - clean_sum) / n
        sq = math.fsum(r["sum_delta_sq"] for r in records)
        var = max(0.0, (sq - n * mean_delta**2) / (n - 1)) if n > 1 else float("nan")
        ablated.append(total / n)
        se.append(math.sqrt(var / n))
    return AblationTable(
        cells=list(cells),
        clean=clean_sum / n,
        ablated=np.array(ablated, dtype=np.float64),
        delta_se=np.array(se, dtype=np.float64),
        n_examples=n,
        metric=metric.to_dict(),
        ablation=ablation.to_dict(),
        store_path=str(store.path) if store.path is not None else None,
    )


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's fixed settings, resolved and checked (`resolve`): its cells, metric, ablation, batching and
    engine; the chunks of cells stacked into one forward; the settings that key its resumable store."""

    cells: list[Cell]
    metric: Metric
    ablation: HeadAblation
    batch_size: int
    max_batch: int
    engine: str

    @classmethod
    def resolve(
        cls,
        model: HookedViT,
        cells: Sequence[CellLike],
        metric: MetricLike,
        ablation: AblationLike,
        batch_size: int,
        max_batch: int,
        engine: str,
    ) -> SweepPlan:
        """Cells, metric and ablation in their resolved forms; clear errors for an unknown engine or a bad max_batch."""
        metric, ablation = resolve_metric(metric), resolve_ablation(ablation)
        if engine not in ("exact", "naive"):
            raise AblationError(f"engine must be 'exact' or 'naive', got {engine!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise AblationError(f"max_batch must be a positive int, got {max_batch!r}")
        return cls(make_cells(model, cells), metric, ablation, batch_size, max_batch, engine)

    def chunks(self) -> list[list[int]]:
        """Indices of the cells evaluated in one forward: `plan_chunks` of max(1, max_batch // batch_size)
        for the exact engine, one cell at a time for the naive one."""
        if self.engine != "exact":
            return [[i] for i in range(len(self.cells))]
        return plan_chunks(self.cells, max(1, self.max_batch // self.batch_size))

    def settings(self, model: HookedViT, data_key: str, **extra: Any) -> dict[str, Any]:
        """Everything that determines the sweep's results (the model's weights and config, the data's
        fingerprint `data_key`, metric, ablation, cells, batching, engine, and `extra`), hashed into its
        store's key."""
        return {
            "model": module_fingerprint(model),
            "model_config": model.cfg.to_dict(),
            "data": data_key,
            "metric": self.metric.key(),
            "output": self.metric.output,
            "ablation": self.ablation.key(),
            "cells": [c.to_dict() for c in self.cells],
            "batch_size": self.batch_size,
            "max_batch": self.max_batch,
            "engine": self.engine,
            **extra,
        }


def _open_store(
    store: str | Path | None, model: HookedViT, images: torch.Tensor, targets: Any, plan: SweepPlan
) -> MemoryStore:
    """A MemoryStore, or the JSONL file under `store` keyed by everything that determines the results."""
    if store is None:
        return MemoryStore()
    if not plan.metric.keyable:
        raise MetricError(
            f"metric {plan.metric.name!r} is a callable object whose code cannot be fingerprinted, so stored results "
            "could be mixed up with another metric's: pass metric_from_function(fn, name='unique-name') "
            "or a Metric with a unique name"
        )
    data_key = tensor_fingerprint(images, targets)
    settings = plan.settings(model, data_key, n_images=images.shape[0], dtype=str(images.dtype))
    return JsonlStore.for_settings(store, settings_fingerprint(settings), settings)


@dataclass
class _CellSweep:
    """One sweep's fixed parts (model, plan, record sink, progress bar and the exact engine's per-head weight
    cache), run batch by batch (`ablation_sweep`, and streamed by
    `vitmech.analysis.streaming.stream_ablation_sweep`)."""

    model: HookedViT
    plan: SweepPlan
    sink: MemoryStore
    bar: Any
    weight_cache: dict = field(default_factory=dict)

    def run_batch(self, batch: torch.Tensor, batch_targets: Any, b: int, pending: list[list[int]]) -> None:
        """Evaluate the pending chunks of cells on batch number b, writing each chunk's records as it finishes."""
        model, plan = self.model, self.plan
        cells, metric, ablation, engine = plan.cells, plan.metric, plan.ablation, plan.engine
        sink, bar, weight_cache = self.sink, self.bar, self.weight_cache
        bound = ablation.bind(model, batch, b)
        if engine == "exact":
            state = run_clean(
                model, batch, {cells[c[0]].start_layer for c in pending}, metric.output, ablation.needs_values
            )
            clean_output = state.output
        else:
            with torch.no_grad():
                clean_output = model(batch, return_type=metric.output)
        clean_values = metric(clean_output, clean=clean_output, targets=batch_targets)
        if not sink.has_clean(b):
            sink.write(
                [{"type": "clean", "batch": b, "n": int(batch.shape[0]), "sum": float(clean_values.double().sum())}]
            )
        for position, chunk in enumerate(pending):
            chunk_cells = [cells[i] for i in chunk]
            if engine == "exact":
                outputs = _exact_outputs(model, state, bound, chunk_cells, metric.output, weight_cache)
            else:
                outputs = _naive_outputs(model, batch, ablation, bound, chunk_cells, metric.output)
            records = [
                _cell_record(b, cell, metric(output, clean=clean_output, targets=batch_targets), clean_values)
                for cell, output in zip(chunk_cells, outputs)
            ]
            sink.write(records)
            bar.update(len(chunk))
            layer = chunk_cells[0].start_layer
            if engine == "exact" and (
                position + 1 == len(pending) or cells[pending[position + 1][0]].start_layer != layer
            ):
                state.release(layer)  # chunks come in start-layer order: this layer's clean activations are done


def ablation_sweep(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    cells: Sequence[CellLike],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    targets: torch.Tensor | None = None,
    batch_size: int = 32,
    max_batch: int = 8,
    store: str | Path | None = None,
    progress: bool = True,
    engine: Engine = "exact",
) -> AblationTable:
    """The metric with each cell ablated, averaged over `images` (processed `batch_size` at a time).

    Args:
        cells: head sets (`Cell`s, or anything `parse_heads` takes); an empty set ablates nothing.
        metric: a Metric, a built-in name, or a function output -> [B].
        ablation: 'zero', 'resample', 'uniform_attention' or a HeadAblation (e.g. MeanAblation).
        targets: labels / regression targets aligned with images (for metrics that need them).
        max_batch: images per stacked forward; cells are stacked max(1, max_batch // batch_size) at a time.
        store: folder for the resumable results file (None: keep results in memory only).
        engine: "exact" (fast recomputation) or "naive" (a full hooked forward per cell; the reference).
    """
    plan = SweepPlan.resolve(model, cells, metric, ablation, batch_size, max_batch, engine)
    images, targets = on_model_device(model, images), on_model_device(model, targets)
    check_inputs(model, images, plan.metric, targets, batch_size, plan.ablation)
    cells, chunks = plan.cells, plan.chunks()
    bounds = batch_bounds(images.shape[0], batch_size, plan.ablation.min_batch)

    sink = _open_store(store, model, images, targets, plan)
    bar = tqdm(
        total=len(bounds) * len(cells),
        initial=sink.n_cells_done,
        disable=not progress,
        desc=f"{plan.ablation.name} ablation, {plan.metric.name}",
        unit="cell",
    )
    sweep = _CellSweep(model, plan, sink, bar)
    try:
        for b, (start, stop) in enumerate(bounds):
            pending = [chunk for chunk in chunks if not all(sink.has_cell(b, cells[i].name) for i in chunk)]
            if pending or not sink.has_clean(b):
                batch_targets = None if targets is None else targets[start:stop]
                sweep.run_batch(images[start:stop], batch_targets, b, pending)
    finally:
        bar.close()
        sink.close()
    return _table(sink, cells, len(bounds), plan.metric, plan.ablation)


def head_sweep(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    heads: HeadsLike = None,
    layers: Sequence[int] | None = None,
    **options: Any,
) -> HeadSweepResult:
    """Ablate each head on its own: all heads, the heads of `layers`, or the given `heads`; `options` are
    `ablation_sweep`'s keyword options (targets, batch_size, max_batch, store, progress, engine).

    Returns a HeadSweepResult: `to_frame()` has layer, head, clean, ablated, delta, pct_change,
    delta_se; `grid(value)` is the [n_layers, n_heads] array of the paper's heatmap.
    """
    table = ablation_sweep(model, images, single_head_cells(model, heads, layers), metric, ablation, **options)
    return HeadSweepResult(**vars(table), heads_per_layer=heads_per_layer(model))


def ablated_output(
    model: HookedViT,
    images: Float[torch.Tensor, "batch c h w"],
    heads: HeadsLike,
    ablation: AblationLike = "zero",
    *,
    output: OutputKind = "logits",
    engine: Engine = "exact",
) -> torch.Tensor:
    """The model's output on `images` with `heads` ablated together ("logits", "features" or "tokens").

    engine="exact" recomputes from the first ablated layer (from layer 0 when no heads are given);
    "naive" runs the full forward with `head_ablation_hooks`.
    """
    if output not in OUTPUT_KINDS:
        raise AblationError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
    Metric("output", lambda out, clean, targets: out, output=output).check_model(model)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise AblationError("images must be a non-empty batch [B, C, S, S]")
    images = on_model_device(model, images)
    model.check_images(images)
    ablation = resolve_ablation(ablation)
    cell = make_cell(model, heads)
    bound = ablation.bind(model, images)
    if engine == "naive":
        return _naive_outputs(model, images, ablation, bound, [cell], output)[0]
    if engine != "exact":
        raise AblationError(f"engine must be 'exact' or 'naive', got {engine!r}")
    state = run_clean(model, images, {cell.start_layer}, output, ablation.needs_values)
    return _exact_outputs(model, state, bound, [cell], output)[0]


def naive_head_sweep(
    model: HookedViT, images: torch.Tensor, metric: MetricLike, ablation: AblationLike = "zero", **kwargs: Any
) -> HeadSweepResult:
    """The reference: `head_sweep` with one full hooked forward per head."""
    return head_sweep(model, images, metric, ablation, engine="naive", **kwargs)


__all__ = [
    "BoundAblation",
    "ablated_output",
    "ablation_sweep",
    "check_inputs",
    "head_sweep",
    "naive_head_sweep",
    "plan_chunks",
]
