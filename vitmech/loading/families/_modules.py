"""Checks on a source model's torch modules that several converters make (timm, open_clip)."""

from __future__ import annotations

from typing import Any

from torch import nn


def is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def is_layer_norm(module: Any) -> bool:
    """A LayerNorm with a gain and a bias (what `vitmech.model.LayerNorm` holds)."""
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.bias is not None


def act_name(act: Any) -> str | None:
    """The config name of a torch / timm / open_clip activation module, None when HookedViT has no such one."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return {"QuickGELU": "quick_gelu", "ReLU": "relu", "SiLU": "silu"}.get(type(act).__name__)
