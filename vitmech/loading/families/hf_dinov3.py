"""HuggingFace DINOv3 (`DINOv3ViTModel`; Simeoni et al. 2025, arXiv:2508.10104).

A class token, register tokens and the patches, with no absolute position embeddings: the patch tokens'
queries and keys are rotated instead (rotate-half pairs, patch centres in [-1, 1], period base
`rope_theta`, the core's `rope="dinov3"`, as timm's `vit_*_dinov3`). LayerScale on both sublayers, an MLP
or a SwiGLU (`use_gated_mlp`), biases each optional (`query_bias`, `key_bias` off by default, ...), the final
LayerNorm on every token, and the class token as the pooled output (`pooler_output`).
The training-time coordinate augmentation (`pos_embed_shift` / `jitter` / `rescale`) runs only in training
mode and is not part of the port; the mask token is used only for masked inputs and is left out.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families.hf_vit import HF_ACTS, encoder_fields, processor_defaults
from vitmech.loading.keymap import KeyMap, Rule, optional, rule
from vitmech.preprocessing import Preprocessing

NAME = "HuggingFace DINOv3"
SOURCE = "hf"

CLASS = "DINOv3ViTModel"


def _side(size: Any) -> int | None:
    """The side of a square size (an int or a pair), None when not square."""
    if isinstance(size, int):
        return size
    pair = tuple(size)
    return int(pair[0]) if len(pair) == 2 and pair[0] == pair[1] else None


def matches(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "dinov3_vit"


def unsupported(model: Any) -> list[str]:
    cfg = model.config
    found = []
    if type(model).__name__ != CLASS:
        found.append(f"model class {type(model).__name__} (supported: {CLASS})")
    if cfg.hidden_act not in HF_ACTS:
        found.append(f"activation {cfg.hidden_act!r}")
    if _side(cfg.image_size) is None or _side(cfg.patch_size) is None:
        found.append(f"non-square image or patch size ({cfg.image_size}, {cfg.patch_size})")
    if (cfg.hidden_size // cfg.num_attention_heads) % 4:
        found.append("rotary embeddings with a head width not divisible by 4")
    return found


def config(model: Any) -> ViTConfig:
    cfg = model.config
    return ViTConfig(
        **encoder_fields(cfg),
        image_size=_side(cfg.image_size),  # type: ignore[arg-type]
        patch_size=_side(cfg.patch_size),  # type: ignore[arg-type]
        qkv_bias=bool(cfg.query_bias or cfg.key_bias or cfg.value_bias),
        n_register_tokens=int(cfg.num_register_tokens),
        pos_embed=False,
        pos_embed_prefix=0,  # no learned positions (as timm's `vit_*_dinov3` port reads it)
        layer_scale=True,
        gated_mlp=bool(cfg.use_gated_mlp),
        rope="dinov3",
        rope_temperature=float(cfg.rope_theta),
        rope_half=True,
        pool="cls",
        final_norm="tokens",
    )


def _layer_rules(cfg: ViTConfig, layer: int) -> KeyMap:
    s, t, h = f"model.layer.{layer}.", f"blocks.{layer}.", cfg.heads_in_layer(layer)
    rules = R.layer_norm(s + "norm1", t + "ln1") + R.layer_norm(s + "norm2", t + "ln2")
    for c in "QKV":  # each bias optional (key_bias is off by default): zero-filled when absent
        rules += R.heads_in(f"{s}attention.{c.lower()}_proj", c, t + "attn", cfg, h, bias=None)
    rules.append(rule(s + "attention.o_proj.weight", t + "attn.W_O", "m (h e) -> h e m", h=h))
    rules.append(optional(rule(s + "attention.o_proj.bias", t + "attn.b_O"), (cfg.d_model,)))
    rules += [
        rule(s + "layer_scale1.lambda1", t + "attn.ls.gamma"),
        rule(s + "layer_scale2.lambda1", t + "mlp.ls.gamma"),
    ]
    if cfg.gated_mlp:
        rules += R.linear(s + "mlp.gate_proj", t + "mlp.W_gate", t + "mlp.b_gate", bias_optional_shape=cfg.d_mlp)
    rules += R.linear(s + "mlp.up_proj", t + "mlp.W_in", t + "mlp.b_in", bias_optional_shape=cfg.d_mlp)
    rules += R.linear(s + "mlp.down_proj", t + "mlp.W_out", t + "mlp.b_out", bias_optional_shape=cfg.d_model)
    return rules


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """HF DINOv3ViTModel keys <-> HookedViT keys."""
    rules: KeyMap = R.patch_embed("embeddings.patch_embeddings.weight", "embeddings.patch_embeddings.bias", cfg)
    rules.append(R.vector("embeddings.cls_token", "cls_token.W_cls"))
    if cfg.n_register_tokens:
        rules.append(R.rows("embeddings.register_tokens", "registers.W_reg"))
    elif "embeddings.register_tokens" in keys:
        rules.append(Rule.unused("embeddings.register_tokens", "empty: the model has no register tokens"))
    if "embeddings.mask_token" in keys:
        rules.append(Rule.unused("embeddings.mask_token", "used only for masked-image-modelling inputs"))
    for layer in range(cfg.n_layers):
        rules += _layer_rules(cfg, layer)
    rules += R.layer_norm("norm", "ln_final")
    return rules


def preprocessing(model: Any, cfg: ViTConfig) -> Preprocessing:
    """DINOv3ViTImageProcessor defaults (a hub id or directory reads its own processor instead)."""
    return processor_defaults("dinov3_vit", cfg.image_size, "DINOv3ViTImageProcessor defaults")
