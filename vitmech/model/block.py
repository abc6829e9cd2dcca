"""A pre-norm transformer block: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, overload

import torch
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.config import ViTConfig
from vitmech.model.attention import Attention
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.mlp import MLP


class TransformerBlock(nn.Module):
    """Hooks (all [B, P, d_model]): hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out, hook_resid_post."""

    def __init__(self, cfg: ViTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = Attention(cfg.heads_in_layer(layer), cfg.d_model, cfg.d_head)
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid_pre: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class BlockList(nn.ModuleList):
    """The model's TransformerBlocks: an nn.ModuleList whose items type-check as TransformerBlock.

    (nn.ModuleList yields plain Modules, whose attributes torch types as `Tensor | Module`.)
    """

    if TYPE_CHECKING:

        def __iter__(self) -> Iterator[TransformerBlock]: ...

        @overload
        def __getitem__(self, idx: slice) -> BlockList: ...

        @overload
        def __getitem__(self, idx: int) -> TransformerBlock: ...

        def __getitem__(self, idx: int | slice) -> TransformerBlock | BlockList: ...
