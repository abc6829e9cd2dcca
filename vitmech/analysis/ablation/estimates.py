"""Gradient estimates of every head's ablation effect from one forward and one backward pass per batch.

- Attribution patching (on `hook_z`): effect(l, h) ~ mean over examples of
  sum_{p, e} (z'_{p,h,e} - z_{p,h,e}) * dm/dz_{p,h,e}, the first-order Taylor estimate of
  metric(ablated) - metric(clean) for the chosen ablation's replacement z' (0 for zero ablation).
- Michel et al. 2019 head importance: I(l, h) = mean over examples of |sum_{p, e} z_{p,h,e} dm/dz_{p,h,e}|
  (|A^T dL/dA| with A the head's output; the gradient of a gate on the head). Optionally divided by
  its l2 norm within each layer, as Michel et al. do.

Both are estimates: show them beside the exact sweep (`compare_estimates`, with Spearman correlations).
For `kl_to_clean` both are zero (the KL has a minimum at the clean output): use the exact sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from einops import einsum
from jaxtyping import Float
from scipy.stats import spearmanr
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.interventions import AblationLike, resolve_ablation, z_hook_name
from vitmech.analysis.ablation.metrics import MetricLike, resolve_metric
from vitmech.analysis.ablation.results import AblationMeasurement, HeadSweepResult
from vitmech.analysis.ablation.sweep import check_inputs
from vitmech.batching import batch_bounds
from vitmech.device import on_model_device
from vitmech.errors import AblationError
from vitmech.model._hooks import FwdHooks
from vitmech.model.hooked_vit import HookedViT


@dataclass
class HeadEstimates(AblationMeasurement):
    """attribution [L, H]: estimated effect (ablated - clean, metric units); michel [L, H]: importance >= 0."""

    attribution: np.ndarray
    michel: np.ndarray
    michel_normalized: bool

    @classmethod
    def from_sums(
        cls,
        attribution_sum: np.ndarray,
        michel_sum: np.ndarray,
        clean_sum: float,
        n: int,
        metric: Any,
        ablation: Any,
        normalize_michel: bool,
    ) -> HeadEstimates:
        """The estimates from their sums over `n` examples ([n_layers, n_heads] each; clean: the metric's
        sum), Michel's scores L2-normalised per layer when asked."""
        attribution = np.asarray(attribution_sum, dtype=np.float64) / n
        michel = np.asarray(michel_sum, dtype=np.float64) / n
        if normalize_michel:
            michel = michel / np.clip(np.linalg.norm(michel, axis=1, keepdims=True), 1e-30, None)
        return cls(
            attribution=attribution,
            michel=michel,
            clean=clean_sum / n,
            n_examples=n,
            metric=metric.to_dict(),
            ablation=ablation.to_dict(),
            michel_normalized=normalize_michel,
        )

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = self.attribution.shape
        return pd.DataFrame(
            {
                "layer": np.repeat(np.arange(n_layers), n_heads),
                "head": np.tile(np.arange(n_heads), n_layers),
                "attribution": self.attribution.reshape(-1),
                "michel": self.michel.reshape(-1),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "michel_normalized": self.michel_normalized,
            "attribution": self.attribution.tolist(),
            "michel": self.michel.tolist(),
        }


def estimate_head_effects(
    model: HookedViT,
    images: Float[torch.Tensor, "n c h w"],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    targets: torch.Tensor | None = None,
    batch_size: int = 32,
    normalize_michel: bool = False,
    batch_offset: int = 0,
) -> HeadEstimates:
    """Attribution-patching and Michel estimates for every head (one forward + backward per batch).

    batch_offset: the number of the first batch in a longer stream (seeds resampling ablations as the
    whole stream would; see `vitmech.analysis.streaming`)."""
    metric = resolve_metric(metric)
    ablation = resolve_ablation(ablation)
    images, targets = on_model_device(model, images), on_model_device(model, targets)
    check_inputs(model, images, metric, targets, batch_size, ablation)
    n_layers = len(model.blocks)
    if len({block.attn.n_heads for block in model.blocks}) != 1:
        raise AblationError("estimates need the same number of heads in every layer (not a pruned model)")
    n_heads = model.blocks[0].attn.n_heads
    attribution = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    michel = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    clean_sum = 0.0

    for b, (start, stop) in enumerate(batch_bounds(images.shape[0], batch_size, ablation.min_batch)):
        batch = images[start:stop]
        batch_targets = None if targets is None else targets[start:stop]
        bound = ablation.bind(model, batch, batch_offset + b)
        zs: dict[int, torch.Tensor] = {}
        probes: dict[int, torch.Tensor] = {}
        values_seen: dict[int, torch.Tensor] = {}
        leaf_z, keep_v = _probe_hook(zs, probes), _keeping_hook(values_seen)
        hooks: FwdHooks = [(z_hook_name(layer), leaf_z) for layer in range(n_layers)]
        if ablation.needs_values:
            hooks += [(get_act_name("v", layer), keep_v) for layer in range(n_layers)]
        with torch.enable_grad():
            output = model.run_with_hooks(batch, fwd_hooks=hooks, return_type=metric.output)
            values = metric(output, clean=output.detach(), targets=batch_targets)
            grads = torch.autograd.grad(values.sum(), [probes[layer] for layer in range(n_layers)])
        clean_sum += float(values.detach().double().sum())
        with torch.no_grad():
            for layer, grad in enumerate(grads):
                z = zs[layer]
                replacement = bound.replacement(layer, z, slice(None), partial(_mean_over_tokens, values_seen, layer))
                attribution[layer] += einsum((replacement - z) * grad, "b p h e -> h").double()
                michel[layer] += einsum(z * grad, "b p h e -> b h").abs().sum(0).double()

    return HeadEstimates.from_sums(
        attribution.numpy(), michel.numpy(), clean_sum, images.shape[0], metric, ablation, normalize_michel
    )


@dataclass
class EstimateComparison:
    """Exact effects beside the estimates, per head, and their Spearman rank correlations.

    spearman_attribution: exact delta vs attribution (signed); spearman_michel: |exact delta| vs Michel.
    """

    frame: pd.DataFrame
    spearman_attribution: float
    spearman_michel: float

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "spearman_attribution": self.spearman_attribution,
            "spearman_michel": self.spearman_michel,
            "n_heads": len(self.frame),
        }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def compare_estimates(sweep: HeadSweepResult, estimates: HeadEstimates) -> EstimateComparison:
    """Join an exact head sweep with the estimates on the swept heads."""
    heads = sweep.heads
    layers = np.array([h[0] for h in heads])
    head_idx = np.array([h[1] for h in heads])
    frame = pd.DataFrame(
        {
            "layer": layers,
            "head": head_idx,
            "exact_delta": sweep.delta,
            "attribution": estimates.attribution[layers, head_idx],
            "abs_exact_delta": np.abs(sweep.delta),
            "michel": estimates.michel[layers, head_idx],
        }
    )
    return EstimateComparison(
        frame=frame,
        spearman_attribution=_spearman(frame["exact_delta"].to_numpy(), frame["attribution"].to_numpy()),
        spearman_michel=_spearman(frame["abs_exact_delta"].to_numpy(), frame["michel"].to_numpy()),
    )


Hook = Callable[[torch.Tensor, Any], Any]


def _probe_hook(zs: dict[int, torch.Tensor], probes: dict[int, torch.Tensor]) -> Hook:
    """A hook_z hook returning z + a zero leaf tensor (kept in probes[layer]; z detached in zs[layer]).

    d(metric)/d(leaf) = d(metric)/dz along every downstream path (detaching z itself would cut the paths
    through later layers' attention). The dicts are bound when the hook is made, one pair per batch.
    """

    def leaf_z(z: torch.Tensor, hook: Any) -> torch.Tensor:
        layer = hook.layer()
        zs[layer] = z.detach()
        probes[layer] = torch.zeros_like(z, requires_grad=True)
        return z + probes[layer]

    return leaf_z


def _keeping_hook(seen: dict[int, torch.Tensor]) -> Hook:
    """A hook storing the detached activation in seen[layer]."""

    def keep(tensor: torch.Tensor, hook: Any) -> None:
        seen[hook.layer()] = tensor.detach()

    return keep


def _mean_over_tokens(values: dict[int, torch.Tensor], layer: int) -> torch.Tensor:
    """values[layer] [n, pos, head, d_head] averaged over positions: [n, head, d_head]."""
    return values[layer].mean(1)
