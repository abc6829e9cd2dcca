"""A pre-norm transformer block: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

LayerScale, qk-norm and gated MLPs live inside the sublayers (chosen by the config). `attention_residual`
and `mlp_residual` are the same maths without hook points, for the exact ablation engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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
    """Hooks (all [B, P, d_model]): hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out, hook_resid_post."""

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
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)
