"""Seed 000's before/after table for a model pair: last-layer CLS attention entropy and top-10 concentration.

A small stand-in until the attention analyses (vitmech.analysis.attention) are merged; follows REFERENCE
section 2: p = the class token's row of A[l, h] over the patch keys, renormalised over the patches
(`vitmech.tokens`; the mean of the patch queries' rows for models without a class token), entropy in nats, top-k = sum of the k largest
p_i. Both averaging orders are given: mean over heads of per-head values ("per_head") and the value of
the head-averaged distribution ("head_mean").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vitmech.model.hooked_vit import HookedViT
from vitmech.tokens import TokenLayout, layout_for, token_layout


@dataclass
class ClsAttentionSummary:
    """Means over images of the CLS -> patch attention entropy (nats) and top-k concentration at one layer."""

    layer: int
    k: int
    n_images: int
    entropy_per_head: float
    entropy_head_mean: float
    topk_per_head: float
    topk_head_mean: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cls_patch_distribution(
    pattern: Float[Tensor, "batch head query key"], layout: TokenLayout | None = None
) -> Float[Tensor, "batch head patch"]:
    """Readout (CLS) row over the patch keys, renormalised to sum to 1 (`layout`: default one class token
    + a square grid)."""
    layout = layout_for(pattern.shape[-1], layout, "pattern")
    p = layout.patches(layout.readout(pattern, dim=-2), -1)
    return p / p.sum(-1, keepdim=True)


def entropy(p: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """-sum p ln p in nats (0 ln 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def topk_mass(p: Float[Tensor, "... n"], k: int) -> Float[Tensor, "..."]:
    return p.topk(k, dim=-1).values.sum(-1)


@torch.no_grad()
def cls_attention_summary(
    model: HookedViT, images: Float[Tensor, "batch c h w"], layer: int = -1, k: int = 10
) -> ClsAttentionSummary:
    """Seed 000's two numbers (and their other averaging order) for `model` on `images`."""
    layer = layer % model.cfg.n_layers
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(images, names_filter=name, return_type=None)
    p = cls_patch_distribution(cache[name].double(), token_layout(model))  # [B, H, N]
    mean_p = p.mean(1)
    return ClsAttentionSummary(
        layer=layer,
        k=k,
        n_images=len(images),
        entropy_per_head=float(entropy(p).mean()),
        entropy_head_mean=float(entropy(mean_p).mean()),
        topk_per_head=float(topk_mass(p, k).mean()),
        topk_head_mean=float(topk_mass(mean_p, k).mean()),
    )


def before_after_rows(before: ClsAttentionSummary, after: ClsAttentionSummary) -> list[dict[str, Any]]:
    """Seed 000's table: metric, before, after, change."""
    rows = []
    for label, field in (
        ("CLS attention entropy (nats), mean of per-head", "entropy_per_head"),
        ("CLS attention entropy (nats), of the head mean", "entropy_head_mean"),
        (f"Top-{before.k} patch concentration, mean of per-head", "topk_per_head"),
        (f"Top-{before.k} patch concentration, of the head mean", "topk_head_mean"),
    ):
        b, a = getattr(before, field), getattr(after, field)
        rows.append({"metric": label, "before": b, "after": a, "change": a - b})
    return rows


__all__ = [
    "ClsAttentionSummary",
    "before_after_rows",
    "cls_attention_summary",
    "cls_patch_distribution",
    "entropy",
    "topk_mass",
]
