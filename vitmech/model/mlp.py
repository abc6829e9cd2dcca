"""The MLP sublayer: x @ W_in + b_in -> act -> @ W_out + b_out, with hook_pre and hook_post [B, P, d_mlp]."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x) (OpenAI CLIP)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, act_fn: str) -> None:
        super().__init__()
        self.act_fn = act_fn
        self._act = ACTIVATIONS[act_fn]
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        # F.linear on the transposed views runs x @ W + b as one fused addmm.
        pre = self.hook_pre(F.linear(x, self.W_in.T, self.b_in))
        post = self.hook_post(self._act(pre))
        return F.linear(post, self.W_out.T, self.b_out)
