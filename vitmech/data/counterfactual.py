"""Counterfactual images for patching on real data: the same images with one region hidden.

`masked_counterfactual(images, region, fill)` replaces a region (a box or a mask) by
- "mean": each image's per-channel mean over the pixels outside the region (no information from inside);
- "blur": a Gaussian blur of the image (sigma in pixels), inside the region only;
- "noise": Gaussian noise with each image's per-channel mean and standard deviation outside the region (seeded).

Matched pairs from the synthetic generators (one feature toggled, all else equal) are
`vitmech.data.galaxies.galaxy_counterfactual_pairs` and `vitmech.data.chirps.chirp_counterfactual_pairs`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, UInt8

from vitmech.data._io import Box
from vitmech.errors import DataError

Fill = Literal["mean", "blur", "noise"]
FILLS: tuple[str, ...] = ("mean", "blur", "noise")
Region = Box | Bool[np.ndarray, "H W"] | Bool[np.ndarray, "B H W"] | torch.Tensor


def region_mask(region: Region, batch: int, height: int, width: int) -> Bool[torch.Tensor, "batch height width"]:
    """A boolean mask [B, H, W] from a box (x0, y0, x1, y1; exclusive ends) or a mask [H, W] / [B, H, W]."""
    if isinstance(region, tuple) and len(region) == 4:
        x0, y0, x1, y1 = (int(v) for v in region)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DataError(f"box {region} is empty or outside a {width}x{height} image")
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
        mask[:, y0:y1, x0:x1] = True
        return mask
    mask = torch.as_tensor(np.asarray(region), dtype=torch.bool)
    if mask.ndim == 2:
        mask = mask.expand(batch, -1, -1)
    if tuple(mask.shape) != (batch, height, width):
        raise DataError(
            f"region mask must be [{height}, {width}] or [{batch}, {height}, {width}], got {list(mask.shape)}"
        )
    if not bool(mask.any(dim=(1, 2)).all()):
        raise DataError("the region mask is empty for at least one image")
    return mask


def patch_box(patch: int, grid: tuple[int, int], patch_size: int) -> Box:
    """The pixel box of patch `patch` (row-major on a `grid` of rows x cols) of a ViT's input."""
    rows, cols = grid
    if not 0 <= patch < rows * cols:
        raise DataError(f"patch {patch} out of range [0, {rows * cols})")
    r, c = divmod(patch, cols)
    return (c * patch_size, r * patch_size, (c + 1) * patch_size, (r + 1) * patch_size)


def _blur(x: Float[torch.Tensor, "b c h w"], sigma: float) -> Float[torch.Tensor, "b c h w"]:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def masked_counterfactual(
    images: Float[torch.Tensor, "batch channel height width"] | UInt8[np.ndarray, "batch height width 3"],
    region: Region,
    fill: Fill = "mean",
    *,
    sigma: float = 4.0,
    seed: int = 0,
) -> torch.Tensor | np.ndarray:
    """`images` with `region` filled by `fill` ("mean", "blur" or "noise"); same type, shape and dtype.

    Float tensors [B, C, H, W] (e.g. a model's preprocessed input) or uint8 arrays [B, H, W, 3].
    """
    if fill not in FILLS:
        raise DataError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "blur" and not sigma > 0:
        raise DataError(f"blur sigma must be > 0 pixels, got {sigma}")
    as_uint8 = isinstance(images, np.ndarray)
    if as_uint8:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"uint8 images must be [B, H, W, 3] uint8, got {images.dtype} {list(images.shape)}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    else:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise DataError("images must be a float tensor [B, C, H, W] or a uint8 array [B, H, W, 3]")
        x = images
    b, c, h, w = x.shape
    mask = region_mask(region, b, h, w).to(x.device)[:, None]  # [B, 1, H, W]
    outside = (~mask).expand_as(x)
    if not bool((~mask).any(dim=(1, 2, 3)).all()):
        raise DataError("the region covers a whole image: nothing outside it to take a fill from")
    count = outside.sum(dim=(2, 3), keepdim=True)
    mean = torch.where(outside, x, 0).sum(dim=(2, 3), keepdim=True) / count
    if fill == "mean":
        filler = mean.expand_as(x)
    elif fill == "blur":
        filler = _blur(x, sigma)
    else:
        var = torch.where(outside, (x - mean) ** 2, 0).sum(dim=(2, 3), keepdim=True) / count
        generator = torch.Generator().manual_seed(seed)
        filler = mean + var.sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    out = torch.where(mask, filler, x)
    if as_uint8:
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
