"""The MLP sublayer, plain or gated, with hook_pre and hook_post [..., d_mlp] (blocks: [B, P, d_mlp]; attention
pooling: [B, d_mlp]).

Plain: x @ W_in + b_in -> act -> @ W_out + b_out. Gated (SwiGLU, Shazeer 2020, arXiv:2002.05202):
act(x @ W_gate + b_gate) * (x @ W_in + b_in) -> @ W_out + b_out, with hook_pre on the gate's
pre-activation and hook_pre_linear on the linear branch (TransformerLens' GatedMLP names). An optional
LayerNorm `hidden_norm` over d_mlp normalises hook_post before W_out (timm `scale_mlp`, EVA-02), and an
optional LayerScale `ls` scales the output.

The maths lives in hook-free steps (`pre_activations`, `activate`, `write`) that `forward` chains with hook
points; the exact ablation engine calls the same steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.model.layer_norm import LayerNorm
from vitmech.model.layer_scale import LayerScale


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x) (OpenAI CLIP)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_mlp: int,
        act_fn: str,
        *,
        gated: bool = False,
        layer_scale: bool = False,
        hidden_norm: bool = False,
        ln_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.act_fn = act_fn
        self._act = ACTIVATIONS[act_fn]
        self.gated = gated
        self.d_mlp = d_mlp
        if gated:
            self.W_gate = nn.Parameter(torch.empty(d_model, d_mlp))
            self.b_gate = nn.Parameter(torch.zeros(d_mlp))
            self.hook_pre_linear = HookPoint()
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hidden_norm = LayerNorm(d_mlp, ln_eps) if hidden_norm else None
        self.ls = LayerScale(d_model) if layer_scale else None
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    # ------------------------------------------------------------------ hook-free steps
    def input_weights(self) -> tuple[Float[torch.Tensor, "d_model m"], Float[torch.Tensor, " m"]]:
        """The input map(s) as one matrix: W_in (plain) or [W_gate | W_in] (gated), and its bias."""
        if not self.gated:
            return self.W_in, self.b_in
        return torch.cat([self.W_gate, self.W_in], dim=1), torch.cat([self.b_gate, self.b_in])

    def pre_activations(self, x: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch m"]:
        """x through `input_weights()` (gated: gate and linear branch concatenated on the last axis)."""
        w, b = self.input_weights()
        return F.linear(x, w.T, b)

    def activate(self, pre: Float[torch.Tensor, "*batch m"]) -> Float[torch.Tensor, "*batch d_mlp"]:
        if not self.gated:
            return self._act(pre)
        gate, linear = pre.split(self.d_mlp, dim=-1)
        return self._act(gate) * linear

    def write(self, post: Float[torch.Tensor, "*batch d_mlp"]) -> Float[torch.Tensor, "*batch d_model"]:
        """(hidden_norm(post)) @ W_out + b_out (times the LayerScale gain)."""
        if self.hidden_norm is not None:
            post = self.hidden_norm(post)
        out = F.linear(post, self.W_out.T, self.b_out)
        return out if self.ls is None else self.ls(out)

    def output_bias(self) -> Float[torch.Tensor, " d_model"]:
        """b_out as written to the residual stream (times the LayerScale gain)."""
        return self.b_out if self.ls is None else self.ls(self.b_out)

    def pure(self, x: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch d_model"]:
        return self.write(self.activate(self.pre_activations(x)))

    # ------------------------------------------------------------------ hooked forward
    def forward(self, x: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch d_model"]:
        if not self.gated:
            # F.linear on the transposed views runs x @ W + b as one fused addmm.
            pre = self.hook_pre(F.linear(x, self.W_in.T, self.b_in))
            post = self.hook_post(self.activate(pre))
        else:
            gate = self.hook_pre(F.linear(x, self.W_gate.T, self.b_gate))
            linear = self.hook_pre_linear(F.linear(x, self.W_in.T, self.b_in))
            post = self.hook_post(self._act(gate) * linear)
        return self.write(post)
