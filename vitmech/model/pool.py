"""Pooling: how the token sequence becomes the one vector the head reads.

"cls": the class token; "avg": the mean over patch tokens (prefix tokens left out, as timm's
`global_pool="avg"`); "map": multi-head attention pooling with a learned probe query followed by a
residual MLP (SigLIP, Zhai et al. 2023, arXiv:2303.15343; timm `AttentionPoolLatent`, HF
`SiglipMultiheadAttentionPoolingHead`), over the patch tokens; "flatten": the patch tokens concatenated in
grid order (row-major), [B, N * d], so a linear head on it keeps each patch's position (the chirp
regressor's readout: docs/training.md#why-the-start-time-needs-a-position-keeping-readout); "rowcol": the
mean patch token of each grid row, then of each grid column, [B, (rows + columns) * d] (the shipped chirp
regressor's: its time and frequency profiles, with far fewer head weights than "flatten").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.config import ViTConfig
from vitmech.model._hooks import is_hooked
from vitmech.model.attention import AttentionWeights
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.mlp import MLP
from vitmech.tokens import TokenLayout


class TokenPool(nn.Module):
    """ "cls" or "avg" pooling (no parameters)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.mode = cfg.pool
        self.layout = TokenLayout.from_config(cfg)

    def forward(self, tokens: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch d_model"]:
        if self.mode == "cls":
            return tokens[:, self.layout.require_class_token("cls pooling")]
        return self.layout.patches(tokens, dim=1).mean(dim=1)


class FlattenPool(nn.Module):
    """ "flatten" pooling (no parameters): [B, P, d] -> the patch tokens as one vector [B, N * d], patch-major
    (features n * d .. n * d + d - 1 are patch n's, patches row-major as `vitmech.tokens` orders them)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.layout = TokenLayout.from_config(cfg)

    def forward(self, tokens: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pooled"]:
        return rearrange(self.layout.patches(tokens, dim=1), "b n d -> b (n d)")


class RowColPool(nn.Module):
    """ "rowcol" pooling (no parameters): [B, P, d] -> [B, (rows + columns) * d], the mean patch token of grid
    row 0, 1, ... (top to bottom), then of grid column 0, 1, ... (left to right), each d wide."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.layout = TokenLayout.from_config(cfg)

    def forward(self, tokens: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pooled"]:
        grid = rearrange(self.layout.patches(tokens, dim=1), "b (h w) d -> b h w d", h=self.layout.grid[0])
        rows, columns = grid.mean(dim=2), grid.mean(dim=1)  # [B, h, d], [B, w, d]
        return torch.cat([rearrange(rows, "b h d -> b (h d)"), rearrange(columns, "b w d -> b (w d)")], dim=1)


class AttentionPool(AttentionWeights):
    """MAP head: one learned query attends over the patch tokens, then x + MLP(LN(x)).

    probe [d]; W_Q, W_K, W_V [H, d, d_head]; b_Q, b_K, b_V [H, d_head]; W_O [H, d_head, d]; b_O [d];
    `ln` and `mlp` as in a block. Hooks: hook_pattern [B, H, 1, N], hook_z [B, 1, H, d_head],
    hook_attn_out [B, d] (the attention's output), hook_mlp_out [B, d].
    """

    def __init__(self, cfg: ViTConfig) -> None:
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        super().__init__(h, d, e)
        self.layout = TokenLayout.from_config(cfg)
        self.probe = nn.Parameter(torch.zeros(d))
        self.ln = LayerNorm(d, cfg.ln_eps)
        self.mlp = MLP(d, cfg.d_mlp, cfg.act_fn)
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()

    def forward(self, tokens: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch d_model"]:
        x = self.layout.patches(tokens, dim=1)
        q = einsum(self.probe, self.W_Q, "d, h d e -> h e") + self.b_Q  # [H, e], the same for every image
        k = einsum(x, self.W_K, "b n d, h d e -> b n h e") + self.b_K
        v = einsum(x, self.W_V, "b n d, h d e -> b n h e") + self.b_V
        q = q.expand(x.shape[0], 1, -1, -1)  # [B, 1, H, e]
        if is_hooked(self.hook_pattern):
            scores = einsum(q, k, "b q h e, b k h e -> b h q k") / self.d_head**0.5
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = einsum(pattern, v, "b h q k, b k h e -> b q h e")
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        z = self.hook_z(z)
        out = F.linear(rearrange(z, "b q h e -> b q (h e)"), rearrange(self.W_O, "h e d -> (h e) d").T, self.b_O)
        out = self.hook_attn_out(out[:, 0])
        return out + self.hook_mlp_out(self.mlp(self.ln(out)))
