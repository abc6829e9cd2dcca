"""The architecture of vitmech's embedded models: 12 layers x 12 heads on a 14 x 14 patch grid, narrow.

Same depth, head count, grid (224 px / patch 16) and token layout as ViT-B/16, so every 144-head
experiment runs on it unchanged; d_model 96 (d_head 8, d_mlp 384) keeps it trainable on a laptop CPU
(1.4 M parameters, 5.8 MB in float32). Preprocessing as google/vit-base-patch16-224: squash to the
model size, bilinear, mean = std = 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitmech.config import ViTConfig
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


def mini_config(n_classes: int, image_size: int = 224, **overrides: int) -> ViTConfig:
    """The embedded models' config with a head of `n_classes`; overrides for tests (e.g. n_layers=2)."""
    arch = {**MINI_ARCH, "image_size": image_size, **overrides}
    return ViTConfig(n_classes=n_classes, ln_eps=1e-6, act_fn="gelu", **arch)


def mini_vit(
    n_classes: int, class_names: Sequence[str] | None = None, image_size: int = 224, seed: int = 0, **overrides: int
) -> HookedViT:
    """A seeded random-init (timm-style) mini ViT."""
    cfg = mini_config(n_classes, image_size, **overrides)
    return HookedViT(cfg, preprocessing=mini_preprocessing(cfg.image_size), class_names=class_names, seed=seed)


__all__ = ["MINI_ARCH", "mini_config", "mini_preprocessing", "mini_vit"]
