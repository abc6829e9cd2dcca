"""Path patching: the effect of sender head(s) on the output through receiver heads' queries, keys or
values only, or directly on the logits (Wang et al. 2022, arXiv 2211.00593; Goldowsky-Dill et al. 2023,
arXiv 2304.05969).

The two-run recipe, with "source" the run whose sender activations are copied (clean by default) and
"target" the run that is patched (corrupted by default), as in `vitmech.analysis.patching`:

1. Target run with the senders' z taken from the source run and every other head's z frozen to its
   target-run value (and, with `freeze_mlps`, every MLP output too); save each receiver's q, k or v.
   Only what flows from the senders through the residual stream (and through MLPs unless frozen)
   reaches the receivers.
2. Target run with only the receivers' q, k or v replaced by the saved values; everything else recomputes.

The receiver "logits" is the direct path: the senders' change (z_source - z_target) @ W_O (times the LayerScale
gain, if any) added to the final residual stream with everything else frozen.

Both runs use the batched suffix engine (`patching.outputs_with_sources`): run 1 starts at the sender's
layer, run 2 at each receiver's layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from einops import einsum
from jaxtyping import Float
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.metrics import Metric, MetricLike, resolve_metric
from vitmech.analysis.patching import Hooks, Run, Site, check_pair, outputs_with_sources
from vitmech.errors import PatchingError
from vitmech.model.hooked_vit import HookedViT

Head = tuple[int, int]
Component = Literal["q", "k", "v"]


def _as_group(sender: Head | Sequence[Head]) -> tuple[Head, ...]:
    items = list(sender)
    if len(items) == 2 and all(isinstance(x, (int, np.integer)) for x in items):
        return ((int(cast(int, items[0])), int(cast(int, items[1]))),)
    return tuple((int(layer), int(head)) for layer, head in cast(Sequence[Head], items))


def _check_heads(model: HookedViT, heads: Sequence[Head], what: str) -> None:
    for layer, head in heads:
        if not 0 <= layer < model.cfg.n_layers or not 0 <= head < model.cfg.heads_in_layer(layer):
            raise PatchingError(f"{what} head ({layer}, {head}) is not in this model")


def _label(group: tuple[Head, ...]) -> str:
    return "+".join(f"L{layer}H{head}" for layer, head in group)


@dataclass
class PathPatchingResult:
    """Sender x receiver table of path patching.

    Attributes:
        senders: sender labels (a group of heads is joined with "+"); receivers: receiver labels.
        values: the metric per (sender, receiver, image) [S, R, B]; NaN where the receiver is not later than
            every sender.
        clean, corrupted: the metric on the two runs [B]. component: "q", "k", "v" or "logits".
    """

    senders: list[str]
    receivers: list[str]
    values: Float[torch.Tensor, "sender receiver batch"]
    clean: Float[torch.Tensor, " batch"]
    corrupted: Float[torch.Tensor, " batch"]
    component: str
    metric: dict[str, Any]
    source: str = "clean"
    target: str = "corrupted"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> Float[torch.Tensor, " batch"]:
        """The metric of the unpatched target run."""
        return self.corrupted if self.target == "corrupted" else self.clean

    @property
    def restored(self) -> Float[torch.Tensor, "sender receiver"]:
        """(mean m(path patched) - mean m(target run)) / (mean m(clean) - mean m(corrupted))."""
        gap = float(self.clean.mean() - self.corrupted.mean())
        if gap == 0:
            return torch.full(self.values.shape[:2], float("nan"))
        return (self.values.mean(-1) - self.baseline.mean()) / gap

    def to_frame(self) -> pd.DataFrame:
        """The table, one row per sender and one column per receiver (restored fraction)."""
        return pd.DataFrame(self.restored.numpy(), index=self.senders, columns=self.receivers)


@torch.no_grad()
def path_patching(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted: Float[torch.Tensor, "batch c h w"],
    metric: MetricLike,
    senders: Sequence[Head | Sequence[Head]],
    receivers: Sequence[Head] | Literal["logits"] = "logits",
    component: Component = "q",
    targets: torch.Tensor | None = None,
    source: Run = "clean",
    target: Run = "corrupted",
    freeze_mlps: bool = False,
    max_rows: int = 256,
) -> PathPatchingResult:
    """Path patching from each sender (a head, or a group of heads patched together) to each receiver.

    Args:
        model, clean, corrupted, metric, targets, source, target: as in `activation_patching`.
        senders: heads (layer, head), or groups of heads, one table row each.
        receivers: heads (one table column each, reached through `component`), or "logits" (direct path).
        component: which receiver input the path goes through: "q", "k" or "v".
        freeze_mlps: also freeze every MLP output in run 1 (then paths through MLPs do not count).
        max_rows: the suffix engine's largest stacked batch.
    """
    metric_obj: Metric = resolve_metric(metric)
    metric_obj.check_model(model)
    check_pair(model, clean, corrupted)
    if component not in ("q", "k", "v"):
        raise PatchingError(f"component must be 'q', 'k' or 'v', got {component!r}")
    groups = [_as_group(s) for s in senders]
    if not groups or any(not g for g in groups):
        raise PatchingError("give at least one sender head")
    for group in groups:
        _check_heads(model, group, "sender")
    to_logits = isinstance(receivers, str)
    receiver_heads: list[Head] = []
    if isinstance(receivers, str):
        if receivers != "logits":
            raise PatchingError(f"receivers must be heads or 'logits', got {receivers!r}")
    else:
        receiver_heads = [(int(a), int(b)) for a, b in receivers]
    _check_heads(model, receiver_heads, "receiver")
    runs = {"clean": clean, "corrupted": corrupted}
    src_images, tgt_images = runs[source], runs[target]
    kind = metric_obj.output
    n_layers = model.cfg.n_layers
    z_names = [get_act_name("z", layer) for layer in range(n_layers)]
    _, src_cache = model.run_with_cache(src_images, names_filter=z_names, return_type=None)
    tgt_names = z_names + [get_act_name(n, layer) for layer in range(n_layers) for n in ("resid_pre", "mlp_out")]
    tgt_names.append(get_act_name("resid_post", n_layers - 1))
    _, tgt_cache = model.run_with_cache(tgt_images, names_filter=tgt_names, return_type=None)
    clean_out, corrupted_out = model(clean, return_type=kind), model(corrupted, return_type=kind)

    def score(out: torch.Tensor) -> torch.Tensor:
        return metric_obj(out, clean=clean_out, targets=targets).detach().float().cpu()

    batch = clean.shape[0]
    n_receivers = 1 if to_logits else len(receiver_heads)
    values = torch.full((len(groups), n_receivers, batch), float("nan"))
    for g, group in enumerate(groups):
        if to_logits:
            resid = tgt_cache[get_act_name("resid_post", n_layers - 1)].clone()
            for layer, head in group:
                diff = src_cache[z_names[layer]][:, :, head] - tgt_cache[z_names[layer]][:, :, head]
                resid += einsum(diff, model.blocks[layer].attn.W_O_write[head], "b p e, e d -> b p d")
            values[g, 0] = score(model.unembed(resid, return_type=kind))
            continue
        first = min(layer for layer, _ in group)
        later = [i for i, (layer, _) in enumerate(receiver_heads) if layer > max(lay for lay, _ in group)]
        if not later:
            continue
        saved = _sender_run(model, tgt_images, group, src_cache, tgt_cache, first, component, freeze_mlps)
        sites = [Site(component, receiver_heads[i][0], head=receiver_heads[i][1]) for i in later]
        start = {layer: tgt_cache[get_act_name("resid_pre", layer)] for layer in {s.layer for s in sites}}
        outs = outputs_with_sources(model, tgt_images, sites, saved, output=kind, max_rows=max_rows, start_resid=start)
        for j, i in enumerate(later):
            values[g, i] = score(outs[j])
    receiver_labels = ["logits"] if to_logits else [f"L{a}H{b}.{component}" for a, b in receiver_heads]
    return PathPatchingResult(
        senders=[_label(g) for g in groups],
        receivers=receiver_labels,
        values=values,
        clean=score(clean_out),
        corrupted=score(corrupted_out),
        component="logits" if to_logits else component,
        metric=metric_obj.to_dict(),
        source=source,
        target=target,
        meta={"freeze_mlps": freeze_mlps},
    )


def _sender_run(
    model: HookedViT,
    tgt_images: torch.Tensor,
    group: tuple[Head, ...],
    src_cache: Any,
    tgt_cache: Any,
    first: int,
    component: Component,
    freeze_mlps: bool,
) -> dict[str, torch.Tensor]:
    """Run 1: the target run from the first sender's layer with the senders' z from the source run and every
    other z (and MLP output, if frozen) from the target run; returns each layer's hook_{component}."""
    n_layers = model.cfg.n_layers
    saved: dict[str, torch.Tensor] = {}

    def set_z(z: torch.Tensor, hook: Any) -> torch.Tensor:
        layer = hook.layer()
        frozen = tgt_cache[hook.name].clone()
        for sender_layer, head in group:
            if sender_layer == layer:
                frozen[:, :, head] = src_cache[hook.name][:, :, head]
        return frozen

    def keep(x: torch.Tensor, hook: Any) -> None:
        saved[hook.name] = x.detach().clone()

    def set_mlp(out: torch.Tensor, hook: Any) -> torch.Tensor:
        return tgt_cache[hook.name]

    hooks: Hooks = []
    for layer in range(first, n_layers):
        hooks.append((get_act_name(component, layer), keep))
        hooks.append((get_act_name("z", layer), set_z))
        if freeze_mlps:
            hooks.append((get_act_name("mlp_out", layer), set_mlp))
    model.run_with_hooks(
        tgt_cache[get_act_name("resid_pre", first)], start_at_layer=first, return_type=None, fwd_hooks=hooks
    )
    return saved
