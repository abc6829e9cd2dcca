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

    `hook_scale` sees sqrt(var + eps) [..., 1]; `hook_normalized` sees (x - mean(x)) / scale, before w and b,
    as TransformerLens 4's normalization components do. Without hooks it runs `F.layer_norm`.
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
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        scale = self.hook_scale((var + self.eps).sqrt())
        # three passes over x: centre, divide by the (possibly hook-edited) scale, gain and bias
        normalized = self.hook_normalized((x - mean) / scale)
        return torch.addcmul(self.b, normalized, self.w)
