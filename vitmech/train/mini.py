"""The architecture of vitmech's embedded models: 12 layers x 12 heads on a 14 x 14 patch grid, narrow.

Same depth, head count, grid (224 px / patch 16) and token layout as ViT-B/16, so every 144-head
experiment runs on it unchanged; d_model 96 (d_head 8, d_mlp 384) keeps it trainable on a laptop CPU
(1.4 M parameters, 5.8 MB in float32). Preprocessing as google/vit-base-patch16-224: squash to the
model size, bilinear, mean = std = 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vitmech.config import ViTConfig
from vitmech.errors import InputError
from vitmech.model.hooked_vit import HookedViT
from vitmech.preprocessing import Preprocessing

MINI_ARCH = dict(n_layers=12, n_heads=12, d_model=96, d_head=8, d_mlp=384, image_size=224, patch_size=16)


def mini_preprocessing(image_size: int = 224) -> Preprocessing:
    return Preprocessing(
        image_size=image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bilinear",
        resize_mode="squash",
        crop_pct=1.0,
        source="vitmech mini models (as google/vit-base-patch16-224)",
    )


def mini_config(n_classes: int, image_size: int = 224, **overrides: Any) -> ViTConfig:
    """The embedded models' config with a head of `n_classes`; overrides for tests (e.g. n_layers=2)."""
    arch: dict[str, Any] = {**MINI_ARCH, "image_size": image_size, **overrides}
    return ViTConfig(n_classes=n_classes, ln_eps=1e-6, act_fn="gelu", **arch)


@torch.no_grad()
def scaled_init_(model: HookedViT, seed: int = 0, pos_std: float = 0.05) -> HookedViT:
    """Fan-in init for narrow models, in place: W_E, W_Q, W_K, W_V, W_in ~ N(0, 1/fan_in); the residual
    writers W_O, W_out ~ N(0, 1/(2 L fan_in)) (GPT-2's depth scaling); W_pos ~ N(0, pos_std^2); head,
    biases, CLS and LayerNorms as HookedViT's timm-style init.

    timm's fixed std 0.02 is about 1/sqrt(d) at d = 768, but 5x too small at d = 96: a 12-layer, d 96 ViT
    so initialised stayed at chance for 300 AdamW steps on the procedural task (measured), while this
    init starts learning within 100.
    """
    g = torch.Generator().manual_seed(seed)
    depth = 2 * model.cfg.n_layers
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("W_E", "W_Q", "W_K", "W_V", "W_in"):
            fan_in = param.shape[-2]
            param.copy_(torch.randn(param.shape, generator=g) / math.sqrt(fan_in))
        elif leaf in ("W_O", "W_out"):
            fan_in = param.shape[0] * param.shape[1] if leaf == "W_O" else param.shape[0]
            param.copy_(torch.randn(param.shape, generator=g) / math.sqrt(fan_in * depth))
        elif leaf == "W_pos":
            param.copy_(torch.randn(param.shape, generator=g) * pos_std)
    return model


def mini_vit(
    n_classes: int,
    class_names: Sequence[str] | None = None,
    image_size: int = 224,
    seed: int = 0,
    init: str = "scaled",
    **overrides: int,
) -> HookedViT:
    """A seeded random-init mini ViT: `init="scaled"` (`scaled_init_`, default) or "timm" (std 0.02)."""
    if init not in ("scaled", "timm"):
        raise InputError(f"init must be 'scaled' or 'timm', got {init!r}")
    cfg = mini_config(n_classes, image_size, **overrides)
    model = HookedViT(cfg, preprocessing=mini_preprocessing(cfg.image_size), class_names=class_names, seed=seed)
    return scaled_init_(model, seed) if init == "scaled" else model


__all__ = ["MINI_ARCH", "mini_config", "mini_preprocessing", "mini_vit", "scaled_init_"]
