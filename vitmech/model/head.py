"""Output maps on the pooled vector: the classifier (logits = x @ W_H + b_H) and a bias-free projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint


class ClassifierHead(nn.Module):
    """W_H [d_model, n_classes], b_H [n_classes]; `hook_logits` sees [B, n_classes]."""

    def __init__(self, d_model: int, n_classes: int) -> None:
        super().__init__()
        self.W_H = nn.Parameter(torch.zeros(d_model, n_classes))
        self.b_H = nn.Parameter(torch.zeros(n_classes))
        self.hook_logits = HookPoint()

    def forward(self, cls_features: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch n_classes"]:
        return self.hook_logits(F.linear(cls_features, self.W_H.T, self.b_H))


class Projection(nn.Module):
    """W_proj [d_model, d_proj] without bias (CLIP's image projection); `hook_embeddings` sees [B, d_proj]."""

    def __init__(self, d_model: int, d_proj: int) -> None:
        super().__init__()
        self.W_proj = nn.Parameter(torch.zeros(d_model, d_proj))
        self.hook_embeddings = HookPoint()

    def forward(self, pooled: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch d_proj"]:
        return self.hook_embeddings(pooled @ self.W_proj)
