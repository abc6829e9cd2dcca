"""Multi-head self-attention with per-head weights in TransformerLens layout.

W_Q, W_K, W_V [H, d_model, d_head]; b_Q, b_K, b_V [H, d_head]; W_O [H, d_head, d_model]; b_O [d_model].
Optional parts, chosen by the config: `q_norm` / `k_norm` (LayerNorm over d_head, qk-norm), `rotary`
(rotary position embeddings on the patch tokens' queries and keys, after qk-norm), `ls`
(LayerScale on the output, so each head's `hook_result` is what it writes to the residual stream).
Hooks: hook_q/k (after qk-norm and rotation), hook_v and hook_z [B, P, H, d_head]; hook_attn_scores and hook_pattern
[B, H, P_q, P_k]; hook_result [B, P, H, d_model] (each head's write before the sum over heads, computed
only when hooked).

Two paths give the same numbers (to ~1e-6): the fused `scaled_dot_product_attention`, used when
nothing needs the scores or the pattern, and the explicit softmax, used when hook_attn_scores or
hook_pattern is hooked (caching, pattern edits, gradients w.r.t. the pattern) or when
`force_explicit` is set.

The maths lives in hook-free steps (`qkv`, `transform_qk`, `context`, `write`) that `forward` chains
with hook points between them; the exact ablation engine calls the same steps, so both run one definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.model._hooks import is_hooked
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.layer_scale import LayerScale
from vitmech.model.rotary import Rotary

Heads = Float[torch.Tensor, "batch pos head d_head"]
QueryHeads = Float[torch.Tensor, "batch query head d_head"]
KeyHeads = Float[torch.Tensor, "batch key head d_head"]
"""Queries and keys/values apart: `Attention.pure` may keep fewer query positions than key positions."""


class AttentionWeights(nn.Module):
    """Multi-head attention weights in TransformerLens' layout: W_Q, W_K, W_V [n_heads, d_model, d_head] and
    W_O [n_heads, d_head, d_model] (uninitialised), biases b_Q, b_K, b_V [n_heads, d_head] and b_O [d_model]
    (zeros). The base of the block's `Attention` and the MAP head's `AttentionPool`."""

    W_Q: nn.Parameter
    W_K: nn.Parameter
    W_V: nn.Parameter
    W_O: nn.Parameter
    b_Q: nn.Parameter
    b_K: nn.Parameter
    b_V: nn.Parameter
    b_O: nn.Parameter

    def __init__(self, n_heads: int, d_model: int, d_head: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_head
        for name in ("W_Q", "W_K", "W_V"):
            self.register_parameter(name, nn.Parameter(torch.empty(n_heads, d_model, d_head)))
        self.register_parameter("W_O", nn.Parameter(torch.empty(n_heads, d_head, d_model)))
        for name in ("b_Q", "b_K", "b_V"):
            self.register_parameter(name, nn.Parameter(torch.zeros(n_heads, d_head)))
        self.register_parameter("b_O", nn.Parameter(torch.zeros(d_model)))


class Attention(AttentionWeights):
    def __init__(
        self,
        n_heads: int,
        d_model: int,
        d_head: int,
        *,
        qk_norm: bool = False,
        layer_scale: bool = False,
        ln_eps: float = 1e-6,
        rotary: Rotary | None = None,
    ) -> None:
        super().__init__(n_heads, d_model, d_head)
        self.q_norm = LayerNorm(d_head, ln_eps) if qk_norm else None
        self.k_norm = LayerNorm(d_head, ln_eps) if qk_norm else None
        self.ls = LayerScale(d_model) if layer_scale else None
        self.rotary = rotary
        self.force_explicit = False

        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()

    @property
    def scale(self) -> float:
        """Score scale 1 / sqrt(d_head)."""
        return 1.0 / math.sqrt(self.d_head)

    @property
    def W_O_write(self) -> Float[torch.Tensor, "head d_head d_model"]:
        """Each head's map from z to the residual stream: W_O, times the LayerScale gain when there is one."""
        return self.W_O if self.ls is None else self.W_O * self.ls.gamma

    # ------------------------------------------------------------------ hook-free steps
    def qkv(self, x: Float[torch.Tensor, "batch pos d_model"]) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values from one fused matmul; returned as views [B, P, H, d_head]."""
        w = rearrange(torch.cat([self.W_Q, self.W_K, self.W_V]), "h d e -> d (h e)")
        b = torch.cat([self.b_Q, self.b_K, self.b_V]).flatten()
        qkv = F.linear(x, w.T, b)
        qkv = rearrange(qkv, "b p (h e) -> b p h e", e=self.d_head)
        return qkv.split(self.n_heads, dim=2)

    def transform_qk(self, q: Heads, k: Heads) -> tuple[Heads, Heads]:
        """qk-norm, then rotary embeddings (each when configured): what the scores are computed from."""
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        return q, k

    def scores(self, q: Heads, k: Heads) -> Float[torch.Tensor, "batch head q_pos k_pos"]:
        return einsum(q * self.scale, k, "b q h e, b k h e -> b h q k")  # scale the smaller tensor

    def context(self, q: QueryHeads, k: KeyHeads, v: KeyHeads) -> QueryHeads:
        """z = softmax(q k^T / sqrt(d_head)) v through the fused kernel, [B, P_q, H, d_head]."""
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return z.transpose(1, 2)

    def write(self, z: Heads) -> Float[torch.Tensor, "batch pos d_model"]:
        """The sublayer output: sum_h z_h @ W_O[h] + b_O (times the LayerScale gain)."""
        z_flat = rearrange(z, "b p h e -> b p (h e)")
        out = F.linear(z_flat, rearrange(self.W_O, "h e d -> (h e) d").T, self.b_O)
        return out if self.ls is None else self.ls(out)

    def head_results(self, z: Heads) -> Float[torch.Tensor, "batch pos head d_model"]:
        """Each head's write to the residual stream (without b_O)."""
        return einsum(z, self.W_O_write, "b p h e, h e d -> b p h d")

    def output_bias(self) -> Float[torch.Tensor, " d_model"]:
        return self.b_O if self.ls is None else self.ls(self.b_O)

    def pure(
        self,
        x: Float[torch.Tensor, "batch pos d_model"],
        queries: slice | None = None,
        edit_z: Callable[[Heads, Heads], Heads] | None = None,
    ) -> Float[torch.Tensor, "batch q_pos d_model"]:
        """The sublayer without hook points: the output at query positions `queries` (all by default);
        edit_z(z, v) may replace z (the ablation engine's interventions)."""
        if self.n_heads == 0:  # every head pruned: only b_O is left
            x = x if queries is None else x[:, queries]
            return torch.zeros_like(x) + self.output_bias()
        q, k, v = self.qkv(x)
        q, k = self.transform_qk(q, k)
        if queries is not None:
            q = q[:, queries]
        z = self.context(q, k, v)
        if edit_z is not None:
            z = edit_z(z, v)
        return self.write(z)

    # ------------------------------------------------------------------ hooked forward
    def needs_explicit_pattern(self) -> bool:
        return self.force_explicit or is_hooked(self.hook_attn_scores, self.hook_pattern)

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if self.n_heads == 0:  # every head pruned: only b_O is left; hook_z still fires (empty) for caches
            self.hook_z(x.new_zeros(*x.shape[:2], 0, self.d_head))
            return torch.zeros_like(x) + self.output_bias()
        return self.attend(*self.qkv(x))

    def forward_per_head(
        self,
        q_input: Float[torch.Tensor, "batch pos head d_model"],
        k_input: Float[torch.Tensor, "batch pos head d_model"],
        v_input: Float[torch.Tensor, "batch pos head d_model"],
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """The same attention from one (normalised) input copy per head and per query/key/value
        (TransformerLens' `use_split_qkv_input` / `use_attn_in`): q[h] = q_input[:, :, h] @ W_Q[h] + b_Q[h]."""
        q = einsum(q_input, self.W_Q, "b p h d, h d e -> b p h e") + self.b_Q
        k = einsum(k_input, self.W_K, "b p h d, h d e -> b p h e") + self.b_K
        v = einsum(v_input, self.W_V, "b p h d, h d e -> b p h e") + self.b_V
        return self.attend(q, k, v)

    def attend(self, q: Heads, k: Heads, v: Heads) -> Float[torch.Tensor, "batch pos d_model"]:
        """Everything after the projections: qk-norm and rotation, hook_q/k/v, the pattern, hook_z and the output map."""
        q, k = self.transform_qk(q, k)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.needs_explicit_pattern():
            scores = self.hook_attn_scores(self.scores(q, k))
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = einsum(pattern, v, "b h q k, b k h e -> b q h e")
        else:
            z = self.context(q, k, v)
        z = self.hook_z(z)
        if is_hooked(self.hook_result):
            return self.hook_result(self.head_results(z)).sum(dim=2) + self.output_bias()
        return self.write(z)
