"""Physically remove heads: a smaller HookedViT whose layers may have different head counts.

HookedViT's config has one n_heads for every layer, so the pruned model is a `PrunedViT`: a HookedViT
whose blocks hold `PrunedAttention` modules with their own head counts (smaller W_Q, W_K, W_V [H_l, d, d_head],
W_O [H_l, d_head, d]). Hooks keep their names and meaning (hook_z is [B, P, H_l, d_head]); b_O stays, so a
pruned model computes exactly what zero-ablating those heads computes. Stacked weight properties
(model.W_Q, ...) need equal head counts and raise a clear error; use model.blocks[l].attn.W_Q.

    pruned = prune_heads(model, [(0, 3), (1, 7)])
    report = measure_pruning(model, pruned, images, "mse", targets=y)   # speed-up and metric change
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
from vitmech.config import ViTConfig
from vitmech.model.attention import Attention
from vitmech.model.hooked_vit import HookedViT
from vitmech.preprocessing import Preprocessing

ATTENTION_PARAMS_BY_HEAD = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


class PrunedAttention(Attention):
    """Attention with its own head count, including zero heads (then it only adds b_O)."""

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if self.n_heads > 0:
            return super().forward(x)
        self.hook_z(x.new_zeros(*x.shape[:2], 0, self.d_head))  # an empty z, so hooks and caches still see the layer
        return torch.zeros_like(x) + self.b_O


class PrunedViT(HookedViT):
    """A HookedViT with heads removed; `kept_heads[l]` lists the original indices of layer l's heads."""

    def __init__(
        self,
        cfg: ViTConfig,
        kept_heads: Sequence[Sequence[int]],
        preprocessing: Preprocessing | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(cfg, preprocessing, class_names, seed=None)
        if len(kept_heads) != cfg.n_layers:
            raise AblationError(f"kept_heads needs one list per layer ({cfg.n_layers}), got {len(kept_heads)}")
        self.kept_heads = [list(k) for k in kept_heads]
        for block, kept in zip(self.blocks, self.kept_heads):
            if len(kept) != cfg.n_heads:
                block.attn = PrunedAttention(len(kept), cfg.d_model, cfg.d_head)
        self.setup()  # re-register hook points of the new attention modules

    @property
    def n_heads_per_layer(self) -> list[int]:
        return heads_per_layer(self)

    def _stack(self, get: Any) -> torch.Tensor:
        try:
            return super()._stack(get)
        except RuntimeError as err:
            raise ValueError(
                f"this pruned model has {self.n_heads_per_layer} heads per layer, so per-head weights cannot be "
                "stacked over layers; read them per block: model.blocks[l].attn.W_Q"
            ) from err

    def save_pretrained(self, directory: Any, card: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError(
            "saving a pruned model needs per-layer head counts in ViTConfig (not there yet); "
            "keep the original model and the list of pruned heads (model.card['pruned_heads']) instead"
        )


def prune_heads(model: HookedViT, heads: HeadsLike) -> PrunedViT:
    """A copy of `model` without `heads` (indices of this model's heads; composes with earlier pruning)."""
    removed = set(parse_heads(model, heads))
    current = [list(range(n)) for n in heads_per_layer(model)]
    original = getattr(model, "kept_heads", current)
    keep = [[h for h in range(len(current[layer])) if (layer, h) not in removed] for layer in range(len(current))]
    state = model.state_dict()
    for layer, kept in enumerate(keep):
        index = torch.tensor(kept, dtype=torch.long, device=model.device)
        for name in ATTENTION_PARAMS_BY_HEAD:
            key = f"blocks.{layer}.attn.{name}"
            state[key] = state[key].index_select(0, index)
    pruned = PrunedViT(
        model.cfg,
        [[original[layer][h] for h in kept] for layer, kept in enumerate(keep)],
        preprocessing=model.preprocessing,
        class_names=model.class_names,
    ).to(device=model.device, dtype=model.dtype)
    pruned.load_state_dict(state)
    pruned.card = {
        **model.card,
        "pruned_heads": sorted(
            [(layer, h) for layer, kept in enumerate(pruned.kept_heads) for h in range(model.cfg.n_heads) if h not in kept]
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


__all__ = ["PrunedAttention", "PrunedViT", "PruningMeasurement", "measure_pruning", "prune_heads"]
