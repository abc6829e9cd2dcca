"""Swap a HookedViT's output head (classification or regression) and change its input resolution.

Both return a new HookedViT with a new config and copy every other weight, so the result loads,
saves and exports like any other model. A regression head is the same linear map on the pooled vector as a
classifier (`W_H` [d_model, K] on the final-normalised CLS token; [cfg.pooled_dim, K] for the
position-keeping pools "flatten" and "rowcol"); its outputs are named by `class_names` (the target
names) and `card["task"] = "regression"` says how to read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from vitmech.config import Pool
from vitmech.errors import InputError
from vitmech.model.hooked_vit import HookedViT
from vitmech.preprocessing import Preprocessing
from vitmech.tokens import TokenLayout, layout_for, token_layout
from vitmech.train.errors import HeadMismatchError

HeadInit = Literal["zeros", "trunc_normal"]


def _copy_model(
    model: HookedViT, cfg, preprocessing: Preprocessing, class_names: Sequence[str] | None, skip: tuple[str, ...]
) -> HookedViT:
    new = HookedViT(cfg, preprocessing=preprocessing, class_names=class_names, seed=0).to(model.device, model.dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing_real = [k for k in missing if not k.startswith(skip)]
    if missing_real or unexpected:
        raise HeadMismatchError(f"copy does not fit: missing {missing_real[:10]}, unexpected {unexpected[:10]}")
    new.card = dict(model.card)
    new.set_attention_backend("explicit" if model.blocks[0].attn.force_explicit else "auto")
    return new


def with_new_head(
    model: HookedViT,
    n_outputs: int,
    names: Sequence[str] | None = None,
    *,
    task: Literal["classification", "regression"] = "classification",
    init: HeadInit = "zeros",
    seed: int = 0,
    pool: Pool | None = None,
) -> HookedViT:
    """A copy of `model` whose head maps the pooled features to `n_outputs` values.

    The backbone (everything but `head.*`) is copied exactly. The new head starts at zero
    (`init="zeros"`, so the first gradient step is the linear probe's) or trunc-normal std 0.02.
    `pool` gives the copy another readout (e.g. "flatten": the head reads every patch token; `ViTConfig.pool`);
    None keeps the model's. A parameterised pooling (`pool="map"`) is copied only when it is kept.
    """
    if not isinstance(n_outputs, int) or n_outputs <= 0:
        raise HeadMismatchError(f"n_outputs must be a positive int, got {n_outputs!r}")
    if names is not None and len(names) != n_outputs:
        raise HeadMismatchError(f"{len(names)} names for a head with {n_outputs} outputs")
    if init not in ("zeros", "trunc_normal"):
        raise InputError(f"init must be 'zeros' or 'trunc_normal', got {init!r}")
    pool = model.cfg.pool if pool is None else pool
    skip = ("head.",) if pool == model.cfg.pool else ("head.", "pool.")
    new = _copy_model(model, model.cfg.replace(n_classes=n_outputs, pool=pool), model.preprocessing, names, skip=skip)
    with torch.no_grad():
        new.head.b_H.zero_()
        if init == "zeros":
            new.head.W_H.zero_()
        else:
            g = torch.Generator().manual_seed(seed)
            w = torch.nn.init.trunc_normal_(torch.empty(new.head.W_H.shape), std=0.02, a=-0.04, b=0.04, generator=g)
            new.head.W_H.copy_(w)
    new.card = {k: v for k, v in model.card.items() if k not in ("metrics", "task", "targets")}
    new.card["task"] = task
    return new


def check_head(model: HookedViT, n_outputs: int, what: str = "the labels") -> None:
    """Raise HeadMismatchError unless the model has a head with exactly `n_outputs` outputs."""
    if not model.cfg.has_classifier:
        raise HeadMismatchError(
            f"the model has no head but {what} need {n_outputs} outputs; use with_new_head(model, {n_outputs})"
        )
    if model.cfg.n_classes != n_outputs:
        raise HeadMismatchError(
            f"the model's head has {model.cfg.n_classes} outputs but {what} need {n_outputs}; "
            f"swap it with vitmech.train.with_new_head(model, {n_outputs}, names)"
        )


def interpolate_positions(
    w_pos: Float[Tensor, "pos d_model"], new_grid: int, mode: str = "bicubic", layout: TokenLayout | None = None
) -> Float[Tensor, "new_pos d_model"]:
    """Resample patch position embeddings from a g x g grid to new_grid x new_grid (prefix rows kept).

    `layout` describes w_pos's rows (default: one class token + a square grid; for a model,
    `token_layout(model).for_rows(len(w_pos))`). As in DeiT/timm `resample_abs_pos_embed`: reshape to
    the grid, interpolate (align_corners=False), flatten row-major again.
    """
    layout = layout_for(len(w_pos), layout, "w_pos")
    cls, patches = layout.prefix(w_pos, 0), layout.patches(w_pos, 0)
    grid = layout.grid[0]
    if grid == new_grid:
        return w_pos.clone()
    image = rearrange(patches, "(gh gw) d -> 1 d gh gw", gh=grid)
    image = F.interpolate(image, size=(new_grid, new_grid), mode=mode, align_corners=False)
    return torch.cat([cls, rearrange(image, "1 d gh gw -> (gh gw) d")])


def with_image_size(model: HookedViT, image_size: int) -> HookedViT:
    """A copy of `model` taking `image_size` px input: same patch size, position embeddings resampled
    to the new grid (train at low resolution, then fine-tune at full resolution)."""
    cfg = model.cfg.replace(image_size=image_size)
    pre = model.preprocessing
    preprocessing = Preprocessing(
        **{**pre.to_dict(), "image_size": image_size, "mean": tuple(pre.mean), "std": tuple(pre.std)}
    )
    new = _copy_model(model, cfg, preprocessing, model.class_names, skip=("pos_embed.",))
    with torch.no_grad():
        w_pos = model.pos_embed.W_pos.detach()
        layout = token_layout(model).for_rows(len(w_pos), "W_pos")
        new.pos_embed.W_pos.copy_(interpolate_positions(w_pos, cfg.grid_size, layout=layout))
    return new


__all__ = ["check_head", "interpolate_positions", "with_image_size", "with_new_head"]


def check_labels(model: HookedViT, labels: Tensor, class_names: list[str] | None = None) -> None:
    """HeadMismatchError unless every label is a class of the model's head (0 to n_classes - 1)."""
    if class_names:
        check_head(model, len(class_names), f"the {len(class_names)} classes of the images")
    if labels.numel() == 0:
        return
    n = model.cfg.n_classes
    low, high = int(labels.min()), int(labels.max())
    if not model.cfg.has_classifier or low < 0 or high >= n:
        bad = low if low < 0 else high
        raise HeadMismatchError(
            f"label {bad} is out of range for the model's head with {n} classes (labels must be 0 to {n - 1}); "
            f"swap the head with vitmech.train.with_new_head(model, n_classes) or fix the labels"
        )
