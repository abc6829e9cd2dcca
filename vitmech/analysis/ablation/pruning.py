"""Physically remove heads: a smaller HookedViT whose layers may have different head counts.

The pruned model is a plain HookedViT whose config says how many heads each block keeps
(`cfg.n_heads_per_layer`), with smaller W_Q, W_K, W_V [H_l, d, d_head] and W_O [H_l, d_head, d]. Hooks keep
their names and meaning (hook_z is [B, P, H_l, d_head]); b_O stays, so a pruned model computes exactly what
zero-ablating those heads computes. It saves and loads like any HookedViT; `model.card["kept_heads"]` lists
the original index of every kept head. Stacked weight properties (model.W_Q, ...) need equal head counts and
raise a clear error otherwise; use model.blocks[l].attn.W_Q.

    pruned = prune_heads(model, [(0, 3), (1, 7)])
    report = measure_pruning(model, pruned, images, "mse", targets=y)   # speed-up and metric change
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from vitmech.analysis.ablation.errors import AblationError
from vitmech.analysis.ablation.heads import Head, HeadsLike, head_label, heads_per_layer, parse_heads
from vitmech.analysis.ablation.metrics import MetricLike, resolve_metric
from vitmech.analysis.ablation.results import percent_change
from vitmech.analysis.ablation.sweep import check_inputs
from vitmech.model.hooked_vit import HookedViT

ATTENTION_PARAMS_BY_HEAD = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


def kept_heads(model: HookedViT) -> list[list[int]]:
    """Original indices of each layer's heads (all of them for an unpruned model)."""
    stored = model.card.get("kept_heads")
    return [list(k) for k in stored] if stored is not None else [list(range(n)) for n in heads_per_layer(model)]


def prune_heads(model: HookedViT, heads: HeadsLike) -> HookedViT:
    """A copy of `model` without `heads` (indices of this model's heads; composes with earlier pruning)."""
    removed = set(parse_heads(model, heads))
    original = kept_heads(model)
    keep = [[h for h in range(n) if (layer, h) not in removed] for layer, n in enumerate(heads_per_layer(model))]
    state = model.state_dict()
    for layer, kept in enumerate(keep):
        index = torch.tensor(kept, dtype=torch.long, device=model.device)
        for name in ATTENTION_PARAMS_BY_HEAD:
            key = f"blocks.{layer}.attn.{name}"
            state[key] = state[key].index_select(0, index)
    cfg = model.cfg.replace(n_heads_per_layer=tuple(len(k) for k in keep))
    pruned = HookedViT(cfg, preprocessing=model.preprocessing, class_names=model.class_names, initialize=False)
    pruned = pruned.to(device=model.device, dtype=model.dtype)
    pruned.load_state_dict(state)
    kept_original = [[original[layer][h] for h in kept] for layer, kept in enumerate(keep)]
    pruned.card = {
        **model.card,
        "kept_heads": kept_original,
        "pruned_heads": sorted(
            [layer, h] for layer, kept in enumerate(kept_original) for h in range(model.cfg.n_heads) if h not in kept
        ),
    }
    return pruned.eval()


@dataclass
class PruningMeasurement:
    """Speed and metric of a model before and after pruning.

    Forward time per image: the fastest of `repeats` alternating runs, as wall-clock and as process CPU
    time (the CPU figure is less disturbed by other jobs on a shared machine).
    """

    heads_removed: list[Head]
    n_heads_before: int
    n_heads_after: int
    params_before: int
    params_after: int
    seconds_per_image_before: float
    seconds_per_image_after: float
    cpu_seconds_per_image_before: float
    cpu_seconds_per_image_after: float
    metric_before: float
    metric_after: float
    metric: dict[str, Any]

    @property
    def speedup(self) -> float:
        """Wall time before / after (> 1 means the pruned model is faster)."""
        return self.seconds_per_image_before / self.seconds_per_image_after

    @property
    def cpu_speedup(self) -> float:
        """CPU time before / after."""
        return self.cpu_seconds_per_image_before / self.cpu_seconds_per_image_after

    @property
    def delta(self) -> float:
        return self.metric_after - self.metric_before

    @property
    def pct_change(self) -> float:
        return float(percent_change(self.delta, self.metric_before))

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads_removed": [head_label(h) for h in self.heads_removed],
            "n_heads_before": self.n_heads_before,
            "n_heads_after": self.n_heads_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "seconds_per_image_before": self.seconds_per_image_before,
            "seconds_per_image_after": self.seconds_per_image_after,
            "speedup": self.speedup,
            "cpu_seconds_per_image_before": self.cpu_seconds_per_image_before,
            "cpu_seconds_per_image_after": self.cpu_seconds_per_image_after,
            "cpu_speedup": self.cpu_speedup,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "delta": self.delta,
            "pct_change": self.pct_change,
            "metric": self.metric,
        }

    def to_frame(self) -> pd.DataFrame:
        row = self.to_dict()
        row["heads_removed"] = ";".join(row["heads_removed"])
        row["metric"] = row["metric"]["metric"]
        return pd.DataFrame([row])


@torch.no_grad()
def measure_pruning(
    model: HookedViT,
    pruned: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    metric: MetricLike,
    *,
    targets: torch.Tensor | None = None,
    batch_size: int = 32,
    repeats: int = 5,
) -> PruningMeasurement:
    """Metric of both models on `images` (the original's output is the 'clean' one for kl_to_clean) and
    their forward times, measured alternately `repeats` times in this one run (fastest run kept)."""
    metric = resolve_metric(metric)
    check_inputs(model, images, metric, targets, batch_size)
    metric.check_model(pruned)
    if repeats < 1:
        raise AblationError(f"repeats must be >= 1, got {repeats}")

    def run(m: HookedViT) -> list[torch.Tensor]:
        return [m(images[s : s + batch_size], return_type=metric.output) for s in range(0, images.shape[0], batch_size)]

    def timed(m: HookedViT) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        run(m)
        return (time.perf_counter() - wall) / images.shape[0], (time.process_time() - cpu) / images.shape[0]

    outputs_before, outputs_after = run(model), run(pruned)
    values_before, values_after = [], []
    for i, (before, after) in enumerate(zip(outputs_before, outputs_after)):
        t = None if targets is None else targets[i * batch_size : (i + 1) * batch_size]
        values_before.append(metric(before, clean=before, targets=t))
        values_after.append(metric(after, clean=before, targets=t))
    times_before, times_after = [], []
    for _ in range(repeats):
        times_before.append(timed(model))
        times_after.append(timed(pruned))
    (wall_before, cpu_before), (wall_after, cpu_after) = (np.min(times_before, axis=0), np.min(times_after, axis=0))
    removed = sorted(getattr(pruned, "card", {}).get("pruned_heads", []))
    return PruningMeasurement(
        heads_removed=[tuple(h) for h in removed],
        n_heads_before=sum(heads_per_layer(model)),
        n_heads_after=sum(heads_per_layer(pruned)),
        params_before=model.n_params,
        params_after=pruned.n_params,
        seconds_per_image_before=float(wall_before),
        seconds_per_image_after=float(wall_after),
        cpu_seconds_per_image_before=float(cpu_before),
        cpu_seconds_per_image_after=float(cpu_after),
        metric_before=float(torch.cat(values_before).double().mean()),
        metric_after=float(torch.cat(values_after).double().mean()),
        metric=metric.to_dict(),
    )


__all__ = ["PruningMeasurement", "kept_heads", "measure_pruning", "prune_heads"]
