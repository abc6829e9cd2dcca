"""LayerScale: a learned per-channel gain on a sublayer's output (Touvron et al. 2021, arXiv:2103.17239)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import nn


class LayerScale(nn.Module):
    """x * gamma, gamma [d_model]."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
        return x * self.gamma
