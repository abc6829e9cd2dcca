"""A pre-norm transformer block: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

LayerScale, qk-norm and gated MLPs live inside the sublayers (chosen by the config). `attention_residual`
and `mlp_residual` are the same maths without hook points, for the exact ablation engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, overload

import torch
import torch.nn.functional as F
from einops import repeat
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.config import ViTConfig
from vitmech.model.attention import Attention, Heads
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.mlp import MLP


def layer_norm(ln: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm's maths without its hook points."""
    return F.layer_norm(x, (ln.d_model,), ln.w, ln.b, ln.eps)


class TransformerBlock(nn.Module):
    """Hooks (all [B, P, d_model]): hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out, hook_resid_post.

    TransformerLens' switches (set through `HookedViT.set_use_split_qkv_input` etc.) add hooks without
    changing the output: `use_split_qkv_input` gives each head its own copy of resid_pre for its query, key
    and value (`hook_q_input`, `hook_k_input`, `hook_v_input` [B, P, H, d_model], before ln1, which then
    normalises each copy); `use_attn_in` one copy per head shared by q, k and v (`hook_attn_in`);
    `use_hook_mlp_in` a copy of resid_mid entering ln2 (`hook_mlp_in` [B, P, d_model]).
    """

    # transformer_lens' logit lens checks that a block's output is one residual stream.
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: ViTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = Attention(
            cfg.heads_in_layer(layer),
            cfg.d_model,
            cfg.d_head,
            qk_norm=cfg.qk_norm,
            layer_scale=cfg.layer_scale,
            ln_eps=cfg.ln_eps,
        )
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn, gated=cfg.gated_mlp, layer_scale=cfg.layer_scale)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_q_input = HookPoint()
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_attn_in = HookPoint()
        self.hook_mlp_in = HookPoint()
        self.use_split_qkv_input = False
        self.use_attn_in = False
        self.use_hook_mlp_in = False

    def attention_residual(
        self,
        resid_pre: Float[torch.Tensor, "batch pos d_model"],
        queries: slice | None = None,
        edit_z: Callable[[Heads, Heads], Heads] | None = None,
    ) -> Float[torch.Tensor, "batch q_pos d_model"]:
        """resid_mid at the query positions (all by default), without hooks; edit_z(z, v) may replace z."""
        out = self.attn.pure(layer_norm(self.ln1, resid_pre), queries, edit_z)
        return out + (resid_pre if queries is None else resid_pre[:, queries])

    def mlp_residual(
        self, resid_mid: Float[torch.Tensor, "batch pos d_model"]
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """resid_post from resid_mid, without hooks."""
        return resid_mid + self.mlp.pure(layer_norm(self.ln2, resid_mid))

    def forward(self, resid_pre: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attention(resid_pre))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def attention(
        self, resid_pre: Float[torch.Tensor, "batch pos d_model"]
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """attn(ln1(resid_pre)), through per-head input copies when a split switch is on."""
        if not (self.use_split_qkv_input or self.use_attn_in) or self.attn.n_heads == 0:
            return self.attn(self.ln1(resid_pre))

        def copies() -> Float[torch.Tensor, "batch pos head d_model"]:  # contiguous: hooks may edit in place
            return repeat(resid_pre, "b p d -> b p h d", h=self.attn.n_heads).contiguous()

        if self.use_attn_in:
            shared = self.ln1(self.hook_attn_in(copies()))
            return self.attn.forward_per_head(shared, shared, shared)
        q_in = self.ln1(self.hook_q_input(copies()))
        k_in = self.ln1(self.hook_k_input(copies()))
        v_in = self.ln1(self.hook_v_input(copies()))
        return self.attn.forward_per_head(q_in, k_in, v_in)


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
