"""The hooked Vision Transformer and its components."""

from vitmech.model.attention import Attention
from vitmech.model.block import TransformerBlock
from vitmech.model.embed import ClassToken, PatchEmbed, PosEmbed
from vitmech.model.head import ClassifierHead
from vitmech.model.hooked_vit import HookedViT
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.mlp import MLP

__all__ = [
    "Attention",
    "ClassToken",
    "ClassifierHead",
    "HookedViT",
    "LayerNorm",
    "MLP",
    "PatchEmbed",
    "PosEmbed",
    "TransformerBlock",
]
