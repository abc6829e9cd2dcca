"""Multi-head self-attention with per-head weights in TransformerLens layout.

W_Q, W_K, W_V [H, d_model, d_head]; b_Q, b_K, b_V [H, d_head]; W_O [H, d_head, d_model]; b_O [d_model].
Hooks: hook_q/k/v and hook_z [B, P, H, d_head]; hook_attn_scores and hook_pattern [B, H, P_q, P_k];
hook_result [B, P, H, d_model] (each head's output before the sum over heads, computed only when hooked).

Two paths give the same numbers (to ~1e-6): the fused `scaled_dot_product_attention`, used when
nothing needs the scores or the pattern, and the explicit softmax, used when hook_attn_scores or
hook_pattern is hooked (caching, pattern edits, gradients w.r.t. the pattern) or when
`force_explicit` is set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from vitmech.model._hooks import is_hooked


class Attention(nn.Module):
    def __init__(self, n_heads: int, d_model: int, d_head: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_head
        self.W_Q = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_K = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_V = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_O = nn.Parameter(torch.empty(n_heads, d_head, d_model))
        self.b_Q = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_K = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_V = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_O = nn.Parameter(torch.zeros(d_model))
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

    def qkv(
        self, x: Float[torch.Tensor, "batch pos d_model"]
    ) -> tuple[Float[torch.Tensor, "batch pos head d_head"], ...]:
        """Queries, keys and values from one fused matmul; returned as views [B, P, H, d_head]."""
        w = rearrange(torch.cat([self.W_Q, self.W_K, self.W_V]), "h d e -> d (h e)")
        b = torch.cat([self.b_Q, self.b_K, self.b_V]).flatten()
        qkv = F.linear(x, w.T, b)
        qkv = rearrange(qkv, "b p (h e) -> b p h e", e=self.d_head)
        return qkv.split(self.n_heads, dim=2)

    def needs_explicit_pattern(self) -> bool:
        return self.force_explicit or is_hooked(self.hook_attn_scores, self.hook_pattern)

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if self.n_heads == 0:  # every head pruned: only b_O is left; hook_z still fires (empty) for caches
            self.hook_z(x.new_zeros(*x.shape[:2], 0, self.d_head))
            return torch.zeros_like(x) + self.b_O
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

    def attend(
        self,
        q: Float[torch.Tensor, "batch pos head d_head"],
        k: Float[torch.Tensor, "batch pos head d_head"],
        v: Float[torch.Tensor, "batch pos head d_head"],
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Everything after the projections: hook_q/k/v, the pattern, hook_z and the output map."""
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.needs_explicit_pattern():
            scores = einsum(q * self.scale, k, "b q h e, b k h e -> b h q k")  # scale the smaller tensor
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = einsum(pattern, v, "b h q k, b k h e -> b q h e")
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            z = z.transpose(1, 2)
        z = self.hook_z(z)
        if is_hooked(self.hook_result):
            result = self.hook_result(einsum(z, self.W_O, "b p h e, h e d -> b p h d"))
            return result.sum(dim=2) + self.b_O
        z_flat = rearrange(z, "b p h e -> b p (h e)")
        return F.linear(z_flat, rearrange(self.W_O, "h e d -> (h e) d").T, self.b_O)
