"""timm `Eva`: EVA-02 (`eva02_*`) and DINOv3 (`vit_*_dinov3`), the timm ViTs with rotary position embeddings.

What differs from timm's `VisionTransformer` is a config field each: rotary embeddings (`rope`, EVA-02's
`RotaryEmbeddingCat` with interleaved pairs, DINOv3's `RotaryEmbeddingDinoV3` with rotate-half pairs),
a LayerNorm inside the SwiGLU MLP (`mlp_norm`, timm `scale_mlp`), LayerScale as block-level `gamma_1` /
`gamma_2`, separate `q_bias` / `v_bias` with a fixed zero key bias, and register tokens without position
embeddings. Anything else an `Eva` can be built with is refused, by name.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families import _timm
from vitmech.loading.families._modules import is_identity
from vitmech.loading.families._timm import class_names as class_names  # from pretrained_cfg, as every timm family
from vitmech.loading.families._timm import preprocessing as preprocessing
from vitmech.loading.keymap import KeyMap, optional, rule

NAME = "timm Eva (EVA-02, DINOv3)"
SOURCE = "timm"


def matches(model: Any) -> bool:
    from timm.models.eva import Eva  # timm is a dependency of vitmech

    return type(model) is Eva


def _rope_problems(model: Any) -> list[str]:
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3

    rope = model.rope
    if rope is None:
        return []
    found = []
    if type(rope) is RotaryEmbeddingCat:
        if rope.in_pixels or rope.grid_type != "index":
            found.append("rotary embeddings in pixel units (in_pixels)")
        if rope.rotate_half:
            found.append("EVA rotary embeddings with rotate-half pairs")
    elif type(rope) is RotaryEmbeddingDinoV3:
        if rope.min_period is not None or rope.max_period is not None or rope.temperature is None:
            found.append("DINOv3 rotary embeddings with min/max periods")
        if rope.normalize_coords != "separate":
            found.append(f"DINOv3 rotary coordinates normalised by {rope.normalize_coords!r}")
        if not rope.rotate_half:
            found.append("DINOv3 rotary embeddings with interleaved pairs")
    else:
        return [f"rotary position embeddings of type {type(rope).__name__} (only EVA-02's and DINOv3's)"]
    if rope.grid_offset != 0 or rope.grid_indexing != "ij":
        found.append("rotary grid offset or 'xy' indexing")
    if rope.aug_active:
        found.append("rotary coordinate augmentation (shift / jitter / rescale)")
    return found


def unsupported(model: Any) -> list[str]:
    """Names of the features of this timm Eva that HookedViT cannot represent (empty when supported)."""
    from timm.models.eva import EvaAttention, EvaBlock

    found: list[str] = []
    if model.global_pool not in ("token", "avg", ""):
        found.append(f"global_pool={model.global_pool!r}")
    if model.global_pool == "" and not isinstance(model.head, nn.Identity):
        found.append("a head without pooling")
    if getattr(model, "rope_mixed", False):
        found.append("mixed (learned, per-layer) rotary embeddings")
    found += _rope_problems(model)
    if model.patch_drop is not None:
        found.append("patch dropout")
    if model.reg_token is not None and model.pos_embed is not None and not model.no_embed_class:
        found.append("position embeddings on register tokens")
    found += _timm.output_norm_problems(model)
    if not is_identity(model.norm_pre):
        found.append("pre-norm (use_pre_transformer_norm)")
    found += _timm.patch_embed_problems(model.patch_embed)
    found += _timm.head_problems(model)
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not EvaBlock:
            found.append(f"{where}: block type {type(blk).__name__} (e.g. post-norm blocks)")
            continue
        if (blk.gamma_1 is None) != (blk.gamma_2 is None):
            found.append(f"{where}: LayerScale on one sublayer only")
        attn: Any = blk.attn  # typed by timm as its base class
        if type(attn) is not EvaAttention:
            found.append(f"{where}: attention {type(attn).__name__}")
        else:
            found += _timm.block_problems(blk, where, "scale_attn_inner")
            if attn.num_prefix_tokens != model.num_prefix_tokens:
                found.append(f"{where}: rotary prefix count differs from the model's prefix tokens")
        found += _timm.mlp_problems(blk.mlp, where, allow_norm=True)
    return found


def _rope_fields(model: Any) -> dict[str, Any]:
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

    rope = model.rope
    if rope is None:
        return {}
    if type(rope) is RotaryEmbeddingCat:
        ref = rope.ref_feat_shape
        return {
            "rope": "eva",
            "rope_temperature": float(rope.temperature),
            "rope_half": False,
            "rope_ref_grid": None if ref is None else int(ref[0]),
        }
    return {"rope": "dinov3", "rope_temperature": float(rope.temperature), "rope_half": True}


def config(model: Any) -> ViTConfig:
    """Architecture of a supported timm Eva."""
    block = model.blocks[0]
    return ViTConfig(
        **_timm.common_config(model),
        qkv_bias=(block.attn.q_bias if block.attn.qkv is not None else block.attn.q_proj.bias) is not None,
        n_register_tokens=0 if model.reg_token is None else model.reg_token.shape[1],
        pos_embed_prefix=None if model.pos_embed is not None and not model.no_embed_class else 0,
        layer_scale=block.gamma_1 is not None,
        mlp_norm=not is_identity(getattr(block.mlp, "norm", None)),
        pool={"token": "cls", "avg": "avg", "": "none"}[model.global_pool],  # type: ignore[arg-type]
        **_rope_fields(model),
    )


def _block_rules(cfg: ViTConfig, layer: int, keys: Collection[str]) -> KeyMap:
    s = t = f"blocks.{layer}."
    h = cfg.heads_in_layer(layer)
    rules = _timm.norm_rules(cfg, s, t)
    if s + "attn.qkv.weight" in keys:  # fused weight, separate q/v biases (the key bias is a fixed zero buffer)
        qkv = rule(s + "attn.qkv.weight", [t + f"attn.W_{c}" for c in "QKV"], "(n h e) d -> n h d e", n=3, h=h)
        rules.append(qkv)
        for c, src in (("Q", "q_bias"), ("K", "k_bias"), ("V", "v_bias")):
            rules.append(optional(rule(s + f"attn.{src}", t + f"attn.b_{c}", "(h e) -> h e", h=h), (h, cfg.d_head)))
    else:  # qkv_fused=False: q_proj, k_proj (never a bias), v_proj
        for c in "QKV":
            rules += R.heads_in(s + f"attn.{c.lower()}_proj", c, t + "attn", cfg, h, bias=None)
    return rules + _timm.block_output_rules(cfg, s, t, h, keys, layer_scale=("gamma_1", "gamma_2"))


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """timm Eva keys <-> HookedViT keys."""
    rules = _timm.token_rules(cfg)
    for layer in range(cfg.n_layers):
        rules += _block_rules(cfg, layer, keys)
    return rules + _timm.output_rules(cfg)
