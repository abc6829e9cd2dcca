"""Patch embedding, class token and position embedding: three small modules, one concern each."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import nn


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
    """The learned CLS embedding W_cls [d], prepended at position 0."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W_cls = nn.Parameter(torch.zeros(d_model))

    def forward(
        self, patch_embeddings: Float[torch.Tensor, "batch n_patches d_model"]
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        cls = self.W_cls.expand(patch_embeddings.shape[0], 1, -1)
        return torch.cat([cls, patch_embeddings], dim=1)


class PosEmbed(nn.Module):
    """Learned absolute position embeddings W_pos [P, d] (position 0 is the CLS token)."""

    def __init__(self, n_tokens: int, d_model: int) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(n_tokens, d_model))

    def forward(self, batch_size: int) -> Float[torch.Tensor, "batch pos d_model"]:
        # a copy, not an expanded view: a hook that edits hook_pos_embed in place must not write into W_pos
        return self.W_pos.expand(batch_size, -1, -1).clone()
