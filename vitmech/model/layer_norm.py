"""LayerNorm with TransformerLens hooks: `hook_scale` [B, P, 1] and `hook_normalized` [B, P, d]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.model._hooks import is_hooked


class LayerNorm(nn.Module):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis.

    `hook_scale` sees sqrt(var + eps) [..., 1]; `hook_normalized` sees the full output y
    (after w and b), as in TransformerLens. Without hooks it runs `F.layer_norm`.
    """

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
        if not is_hooked(self.hook_scale, self.hook_normalized):
            return F.layer_norm(x, (self.d_model,), self.w, self.b, self.eps)
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale * self.w + self.b)
