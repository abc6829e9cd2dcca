"""Small seeded models for tests, with random weights large enough that attention is far from uniform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitmech import HookedViT, ViTConfig


def tiny_config(**overrides) -> ViTConfig:
    base = dict(n_layers=3, n_heads=4, d_model=32, d_head=8, d_mlp=64, image_size=32, patch_size=8, n_classes=5)
    base.update(overrides)
    return ViTConfig(**base)


def geometry_config(grid: int, patch_size: int, **overrides) -> ViTConfig:
    """A config whose only role is its geometry (a grid x grid patch grid of patch_size px, its prefix
    tokens): what analyses of hand-made attention patterns read from "the model"."""
    return tiny_config(image_size=grid * patch_size, patch_size=patch_size, **overrides)


def _normal(shape: torch.Size, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g) * std


@torch.no_grad()
def randomize_source_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw a timm / HF model's weights by module type: Linear/Conv ~ N(0, 1.5 / fan_in), LayerNorm gain
    1 +- 0.2, biases ~ N(0, 0.2^2), remaining parameters (CLS, positions) ~ N(0, 0.5^2).

    Peaked attention and O(1) logits, so a transposed or mis-split weight cannot hide behind uniformity."""
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(_normal(module.weight.shape, (1.5 / fan_in) ** 0.5, g))
            if module.bias is not None:
                module.bias.copy_(_normal(module.bias.shape, 0.2, g))
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(1 + _normal(module.weight.shape, 0.2, g))
            module.bias.copy_(_normal(module.bias.shape, 0.2, g))
        else:
            continue
        done.update(id(p) for p in module.parameters(recurse=False))
    for p in model.parameters():
        if id(p) not in done:
            p.copy_(_normal(p.shape, 0.5, g))
    return model


@torch.no_grad()
def randomize_hooked_(model: HookedViT, seed: int = 0) -> HookedViT:
    """The same distribution for a HookedViT's own parameters (fan_in read from the TransformerLens layout)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("W_Q", "W_K", "W_V"):
            std = (1.5 / p.shape[-2]) ** 0.5
        elif leaf == "W_O":
            std = (1.5 / (p.shape[0] * p.shape[1])) ** 0.5
        elif leaf in ("W_E", "W_in", "W_out", "W_H"):
            std = (1.5 / p.shape[0]) ** 0.5
        elif leaf == "w":
            p.copy_(1 + _normal(p.shape, 0.2, g))
            continue
        elif leaf in ("W_pos", "W_cls"):
            std = 0.5
        else:
            std = 0.2
        p.copy_(_normal(p.shape, std, g))
    return model


def tiny_model(seed: int = 0, **overrides) -> HookedViT:
    return randomize_hooked_(HookedViT(tiny_config(**overrides), seed=seed), seed).eval()


def seeded_images(batch: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def write_study_inputs(root: Path) -> Path:
    """Five saved tiny models (`before`, `after`, a 2-class `binary`, a patch-16 `coarse` twin of `before`'s
    architecture, a `galaxy` model with the synthetic galaxies' class names that `vitmech patch` asks for)
    and an `images/` folder of two class sub-folders with three random 40 x 40 PNGs each, under `root`
    (returned)."""
    from vitmech.data.galaxies import GALAXY_CLASSES

    tiny_model(seed=0).save_pretrained(root / "before")
    galaxy = tiny_model(seed=4, n_classes=len(GALAXY_CLASSES))
    galaxy.class_names = list(GALAXY_CLASSES)
    galaxy.save_pretrained(root / "galaxy")
    tiny_model(seed=3, patch_size=16).save_pretrained(root / "coarse")
    tiny_model(seed=1).save_pretrained(root / "after")
    tiny_model(seed=2, n_classes=2).save_pretrained(root / "binary")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / cls / f"{i}.png")
    return root
