"""The attention-supervised tier: task loss + lambda * (1 - cosine(attention map, region mask)).

    from vitmech.train import TrainConfig
    from vitmech.train.attention_supervision import AttentionSupervision, fine_tune_attention_supervised
    result = fine_tune_attention_supervised(model, train, train_regions, AttentionSupervision(weight=1.0),
                                            TrainConfig(steps=200, batch_size=32))

The map is read from the explicit attention path (hooks on `hook_pattern` of the chosen layers), so the
alignment term is differentiable with respect to every backbone weight. Sources:
- "cls": the class token's attention over the patches (renormalised), averaged over the chosen heads and
  layers (HuMAL, arXiv 2502.06811, regularises the last layer, the default here);
- "rollout": the class token's row of attention rollout (Abnar & Zuidema 2020; alpha 0.5, head mean) over
  every layer, computed with autograd.
The target is the share of each patch inside the regions (the mask pooled to the patch grid). Images whose
target is empty add nothing to the alignment term. The tier trains the same parameters as "full"
(`TierConfig("full")` by default); its alignment gain is measured on the quantity it was trained on, so
report it apart from the other tiers (docs/alignment.md#attention-supervised-tier).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from vitmech.analysis.alignment import RegionMasks, grid_counts
from vitmech.errors import IndexOutOfRangeError, InputError, TrainingDataError
from vitmech.model._hooks import FwdHooks
from vitmech.model.hooked_vit import HookedViT
from vitmech.tokens import token_layout
from vitmech.train.data import ArrayDataset
from vitmech.train.finetune import FineTuneResult, fine_tune
from vitmech.train.loop import TrainConfig, task_loss
from vitmech.train.tiers import TierConfig

SUPERVISED_TIER = "attention_supervised"
MapSource = Literal["cls", "rollout"]


@dataclass(frozen=True)
class AttentionSupervision:
    """Settings of the alignment term.

    Attributes:
        weight: lambda, the alignment term's weight against the task loss.
        source: "cls" (class-token attention of `layers` x `heads`) or "rollout" (all layers).
        layers: layers whose class-token maps are averaged ("cls"); negative counts from the end.
        heads: heads averaged (None: all).
        region: the region of the masks used as the target (e.g. "union").
    """

    weight: float = 1.0
    source: MapSource = "cls"
    layers: tuple[int, ...] = (-1,)
    heads: tuple[int, ...] | None = None
    region: str = "union"
    rollout_alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise InputError(f"weight (lambda) must be >= 0, got {self.weight!r}")
        if self.source not in ("cls", "rollout"):
            raise InputError(f"source must be 'cls' or 'rollout', got {self.source!r}")
        if not self.layers:
            raise InputError("give at least one layer")
        if not 0 < self.rollout_alpha <= 1:
            raise InputError(f"rollout_alpha must be in (0, 1], got {self.rollout_alpha!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"], d["heads"] = list(self.layers), None if self.heads is None else list(self.heads)
        return d


def patch_targets(model: HookedViT, regions: RegionMasks, region: str = "union") -> Float[Tensor, "batch patch"]:
    """Share of each patch inside `region` [batch, n_patches] (row-major grid), the supervision target."""
    grid = token_layout(model).grid
    counts, cells = grid_counts(regions.select([region]).masks, grid)
    return counts[:, 0] / cells


def _layers(model: HookedViT, layers: tuple[int, ...]) -> tuple[int, ...]:
    n = model.cfg.n_layers
    for layer in layers:
        if not -n <= layer < n:
            raise IndexOutOfRangeError(f"layer {layer} out of range for a model with {n} layers")
    return tuple(sorted({layer % n for layer in layers}))


def supervised_forward(
    model: HookedViT, x: Float[Tensor, "batch channel height width"], supervision: AttentionSupervision
) -> tuple[Tensor, Float[Tensor, "batch patch"]]:
    """Logits and the supervised map [batch, n_patches] (renormalised to sum 1), differentiable."""
    layout = token_layout(model)
    cls_index = layout.require_class_token("attention supervision")
    layers = _layers(model, supervision.layers) if supervision.source == "cls" else tuple(range(model.cfg.n_layers))
    kept: dict[int, Tensor] = {}

    def keep(pattern: Tensor, hook: Any) -> Tensor:
        kept[int(hook.name.split(".")[1])] = pattern
        return pattern

    hooks: FwdHooks = [(get_act_name("pattern", layer), keep) for layer in layers]
    with model.hooks(fwd_hooks=hooks):
        logits = model(x, return_type="logits")
    if supervision.source == "cls":
        rows = []
        for layer in layers:
            pattern = kept[layer] if supervision.heads is None else kept[layer][:, list(supervision.heads)]
            row = layout.patches(pattern.select(-2, cls_index), dim=-1)  # [B, H, N]
            rows.append((row / row.sum(-1, keepdim=True).clamp_min(1e-12)).mean(1))
        attention = torch.stack(rows, 1).mean(1)
    else:
        n_tokens = layout.n_tokens
        eye = torch.eye(n_tokens, dtype=logits.dtype, device=logits.device)
        vector = eye[cls_index].expand(x.shape[0], n_tokens)
        alpha = supervision.rollout_alpha
        for layer in reversed(layers):  # row of R = A_L ... A_1: v <- v A_l from the top layer down
            fused = alpha * kept[layer].mean(1) + (1 - alpha) * eye
            fused = fused / fused.sum(-1, keepdim=True)
            vector = torch.einsum("bq,bqk->bk", vector, fused)
        attention = layout.patches(vector, dim=-1)
    attention = attention / attention.sum(-1, keepdim=True).clamp_min(1e-12)
    return logits, attention


def alignment_loss(attention: Float[Tensor, "batch patch"], target: Float[Tensor, "batch patch"]) -> Float[Tensor, ""]:
    """Mean over images with a non-empty target of 1 - cosine(attention, target) (0 when none has one)."""
    present = target.sum(-1) > 0
    if not bool(present.any()):
        return attention.sum() * 0
    cosine = F.cosine_similarity(attention[present], target[present].to(attention.dtype), dim=-1)
    return (1 - cosine).mean()


def attention_supervised_loss(
    model: HookedViT,
    x: Tensor,
    y: Tensor,
    target: Float[Tensor, "batch patch"],
    supervision: AttentionSupervision,
    task: str,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Task loss + weight * (1 - cosine(map, target)) for one batch."""
    logits, attention = supervised_forward(model, x, supervision)
    loss = task_loss(logits, y, task, label_smoothing)
    return loss + supervision.weight * alignment_loss(attention, target.to(attention.device))


def fine_tune_attention_supervised(
    model: HookedViT,
    train: ArrayDataset,
    regions: RegionMasks,
    supervision: AttentionSupervision,
    config: TrainConfig,
    *,
    tier: TierConfig | None = None,
    **fine_tune_options: Any,
) -> FineTuneResult:
    """Fine-tune a copy of `model` with the attention-supervised loss (`regions` align with `train`'s rows).

    `tier` picks the trained parameters (default: everything, as the "full" tier); `fine_tune_options` are
    `fine_tune`'s keyword arguments (val, checkpoint_dir, resume, card, progress, new_head), whose defaults
    apply. Augmentation would move the images away from their masks, so `config.augment` must be None."""
    if len(regions) != len(train):
        raise TrainingDataError(f"{len(regions)} images of masks for {len(train)} training images")
    if config.augment is not None:
        raise InputError("attention supervision needs config.augment=None (the masks are not augmented)")
    if regions.size != (train.image_size, train.image_size):
        raise TrainingDataError(f"masks are {regions.size} pixels, training images {train.image_size} px")
    targets = patch_targets(model, regions, supervision.region)
    smoothing = config.label_smoothing

    def loss_fn(m: HookedViT, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        return attention_supervised_loss(m, x, y, targets[rows], supervision, train.task, smoothing)

    fingerprint = {"attention_supervision": supervision.to_dict()}
    result = fine_tune(
        model,
        train,
        tier or TierConfig("full"),
        config,
        loss_fn=loss_fn,
        fingerprint_extra=fingerprint,
        **fine_tune_options,
    )
    result.extra["tier_name"] = SUPERVISED_TIER
    result.extra["attention_supervision"] = supervision.to_dict()
    return result


__all__ = [
    "SUPERVISED_TIER",
    "AttentionSupervision",
    "alignment_loss",
    "attention_supervised_loss",
    "fine_tune_attention_supervised",
    "patch_targets",
    "supervised_forward",
]
