"""Rotary position embeddings (RoPE; Su et al. 2021, arXiv:2104.09864) in their 2-D axial ViT form.

Each patch token's query and key are rotated, pair of channels by pair of channels, by angles that depend on
its (row, column) in the patch grid; prefix tokens (class, registers) are not rotated. With d_head = e, the
e/2 angles of a patch are [row * f_0 .. row * f_{e/4-1}, col * f_0 .. col * f_{e/4-1}] for e/4 frequencies f_i.
Two variants, as the sources define them:

- "eva" (EVA-02, Fang et al. 2023, arXiv:2303.11331; timm `RotaryEmbeddingCat`, `in_pixels=False`):
  integer coordinates (rescaled to `ref_grid` patches per side when given), f_i = T^(-i / (e/4)).
- "dinov3" (Simeoni et al. 2025, arXiv:2508.10104; timm `RotaryEmbeddingDinoV3`, HF `DINOv3ViTRopePositionEmbedding`):
  patch centres normalised to [-1, 1], f_i = 2 pi / T^(i / (e/4)).

Layout: `half` pairs channel j with j + e/2 (rotate-half, DINOv3), else channel 2j with 2j + 1 (interleaved,
EVA-02). All tables are computed in float32, as the sources compute them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange, repeat
from jaxtyping import Float
from torch import nn

from vitmech.errors import InputError
from vitmech.tokens import TokenLayout

RotaryKind = Literal["eva", "dinov3"]
Table = Float[torch.Tensor, "n_patches d_head"]


def rotary_tables(
    kind: RotaryKind, d_head: int, grid: int, temperature: float, half: bool, ref_grid: int | None = None
) -> tuple[Table, Table]:
    """sin and cos [g*g, d_head] for a g x g grid of patches (row-major), in the channel layout `half` names."""
    n_bands = d_head // 4
    steps = torch.arange(n_bands, dtype=torch.float32) / n_bands
    if kind == "eva":
        coords = torch.arange(grid, dtype=torch.float32)
        if ref_grid is not None:
            coords = coords / grid * ref_grid
        freqs = 1.0 / (temperature**steps)
    elif kind == "dinov3":
        coords = 2.0 * (torch.arange(0.5, grid, dtype=torch.float32) / grid) - 1.0
        freqs = None
    else:
        raise InputError(f"rotary kind must be 'eva' or 'dinov3', got {kind!r}")
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    grid_xy = torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # [N, 2]
    if freqs is not None:
        angles = grid_xy[:, :, None] * freqs
    else:
        angles = 2 * math.pi * grid_xy[:, :, None] / (temperature**steps)
    angles = rearrange(angles, "n ax band -> n (ax band)")
    if half:
        sin, cos = torch.cat([angles.sin()] * 2, dim=-1), torch.cat([angles.cos()] * 2, dim=-1)
    else:
        sin, cos = repeat(angles.sin(), "n a -> n (a two)", two=2), repeat(angles.cos(), "n a -> n (a two)", two=2)
    return sin, cos


def rotate_pairs(x: Float[torch.Tensor, "... d"], half: bool) -> Float[torch.Tensor, "... d"]:
    """The 90-degree turn of each channel pair: (x_a, x_b) -> (-x_b, x_a)."""
    if half:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([-second, first], dim=-1)
    pairs = rearrange(x, "... (a two) -> ... a two", two=2)
    return rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1), "... a two -> ... (a two)")


def apply_rotary(
    x: Float[torch.Tensor, "batch n_patches head d_head"], sin: Table, cos: Table, half: bool
) -> Float[torch.Tensor, "batch n_patches head d_head"]:
    """x * cos + turn(x) * sin per patch position (tables broadcast over batch and heads), in x's dtype."""
    sin, cos = sin[:, None, :], cos[:, None, :]
    return (x * cos + rotate_pairs(x, half) * sin).to(x.dtype)


class Rotary(nn.Module):
    """Rotates the patch tokens of [B, P, H, d_head] queries or keys; prefix tokens pass unchanged.
    No parameters: the tables are a function of the configuration and the grid, cached per device."""

    def __init__(
        self,
        kind: RotaryKind,
        d_head: int,
        layout: TokenLayout,
        temperature: float,
        half: bool,
        ref_grid: int | None = None,
    ) -> None:
        super().__init__()
        if d_head % 4 != 0:
            raise InputError(f"rotary embeddings need d_head divisible by 4 (two axes x pairs), got {d_head}")
        self.kind, self.d_head, self.layout = kind, d_head, layout
        self.temperature, self.rotate_half, self.ref_grid = temperature, half, ref_grid
        self._tables: dict[torch.device, tuple[Table, Table]] = {}

    def tables(self, device: torch.device) -> tuple[Table, Table]:
        if device not in self._tables:
            rows, cols = self.layout.grid
            if rows != cols:
                raise InputError(f"rotary embeddings are built for square patch grids, got {rows} x {cols}")
            sin, cos = rotary_tables(self.kind, self.d_head, rows, self.temperature, self.rotate_half, self.ref_grid)
            self._tables[device] = (sin.to(device), cos.to(device))
        return self._tables[device]

    def forward(self, x: Float[torch.Tensor, "batch pos head d_head"]) -> Float[torch.Tensor, "batch pos head d_head"]:
        sin, cos = self.tables(x.device)
        patches = apply_rotary(self.layout.patches(x, dim=1), sin, cos, self.rotate_half)
        return torch.cat([self.layout.prefix(x, dim=1), patches], dim=1)
