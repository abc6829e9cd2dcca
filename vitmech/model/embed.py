"""Patch embedding, prefix tokens (class, distillation, registers) and position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import nn

from vitmech.config import ViTConfig


class PatchEmbed(nn.Module):
    """Cut the image into p x p patches and project each: [B, C, H, W] -> [B, N, d].

    W_E [C*p*p, d] right-multiplies the flattened patch, flattened in (channel, row, col) order,
    i.e. W_E = rearrange(conv_weight, "d c p1 p2 -> (c p1 p2) d") for a stride-p convolution.
    """

    def __init__(self, n_channels: int, patch_size: int, d_model: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.W_E = nn.Parameter(torch.empty(n_channels * patch_size**2, d_model))
        self.b_E = nn.Parameter(torch.zeros(d_model))

    def patches(self, images: Float[torch.Tensor, "batch c h w"]) -> Float[torch.Tensor, "batch n_patches d_patch"]:
        """Flattened patches in row-major grid order (patch k sits at row k // g, column k % g)."""
        p = self.patch_size
        return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=p, p2=p)

    def forward(self, images: Float[torch.Tensor, "batch c h w"]) -> Float[torch.Tensor, "batch n_patches d_model"]:
        return F.linear(self.patches(images), self.W_E.T, self.b_E)


class ClassToken(nn.Module):
    """The learned class embedding W_cls [d]."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W_cls = nn.Parameter(torch.zeros(d_model))

    def forward(self, batch_size: int) -> Float[torch.Tensor, "batch 1 d_model"]:
        return self.W_cls.expand(batch_size, 1, -1)


class DistillToken(nn.Module):
    """The learned distillation embedding W_dist [d] (DeiT, Touvron et al. 2021, arXiv:2012.12877)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W_dist = nn.Parameter(torch.zeros(d_model))

    def forward(self, batch_size: int) -> Float[torch.Tensor, "batch 1 d_model"]:
        return self.W_dist.expand(batch_size, 1, -1)


class RegisterTokens(nn.Module):
    """Learned register embeddings W_reg [R, d] (Darcet et al. 2024, arXiv:2309.16588)."""

    def __init__(self, n_registers: int, d_model: int) -> None:
        super().__init__()
        self.W_reg = nn.Parameter(torch.zeros(n_registers, d_model))

    def forward(self, batch_size: int) -> Float[torch.Tensor, "batch reg d_model"]:
        return self.W_reg.expand(batch_size, -1, -1)


def resample_grid(
    table: Float[torch.Tensor, "n_in d"], grid_in: int, grid_out: int, antialias: bool
) -> Float[torch.Tensor, "n_out d"]:
    """Bicubic resampling of a row-major [g*g, d] grid of embeddings to another grid (float32 maths, as
    timm `resample_abs_pos_embed` and HF `interpolate_pos_encoding` do; align_corners=False)."""
    if grid_in == grid_out:
        return table
    image = rearrange(table.float(), "(h w) d -> 1 d h w", h=grid_in)
    image = F.interpolate(image, size=(grid_out, grid_out), mode="bicubic", align_corners=False, antialias=antialias)
    return rearrange(image, "1 d h w -> (h w) d").to(table.dtype)


class PosEmbed(nn.Module):
    """Learned absolute position embeddings W_pos [n_pos_prefix + g_s**2, d].

    Rows: the leading `n_pos_prefix` prefix tokens, then the stored g_s x g_s patch grid (resampled to the
    model's grid when the two differ). Forward gives positions for every token [B, P, d], zero for
    prefix tokens without a position (registers; all prefix tokens in timm `no_embed_class` models).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.n_pos_prefix = cfg.n_pos_prefix
        self.n_unpositioned = cfg.n_prefix_tokens - cfg.n_pos_prefix
        self.stored_grid = cfg.stored_pos_grid
        self.grid = cfg.grid_size
        self.antialias = cfg.pos_resample == "bicubic_antialias"
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_pos_rows, cfg.d_model))

    def table(self) -> Float[torch.Tensor, "pos d_model"]:
        """Positions of all P tokens, [P, d]."""
        prefix, patches = self.W_pos[: self.n_pos_prefix], self.W_pos[self.n_pos_prefix :]
        patches = resample_grid(patches, self.stored_grid, self.grid, self.antialias)
        parts = [prefix, prefix.new_zeros(self.n_unpositioned, prefix.shape[-1]), patches]
        return torch.cat([p for p in parts if p.shape[0]])

    def forward(self, batch_size: int) -> Float[torch.Tensor, "batch pos d_model"]:
        # a copy, not an expanded view: a hook that edits hook_pos_embed in place must not write into W_pos
        return self.table().expand(batch_size, -1, -1).clone()
