"""HuggingFace CLIP and SigLIP image towers: `CLIPVisionModel`, `CLIPVisionModelWithProjection`,
`SiglipVisionModel`.

CLIP: a class embedding, no patch bias, `pre_layrnorm` (pre-norm), `post_layernorm` on the pooled class
token only (final_norm="pooled"), and optionally `visual_projection` (bias-free). SigLIP: no class token,
`post_layernorm` on every token, then the attention-pooling head (pool="map").
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families.hf_vit import HF_ACTS, encoder_fields
from vitmech.loading.keymap import KeyMap, prefixed, rule
from vitmech.preprocessing import HALF, Preprocessing

NAME = "HuggingFace CLIP / SigLIP vision"
SOURCE = "hf"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLASSES = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "SiglipVisionModel")


def _vision_config(model: Any) -> Any:
    cfg = model.config
    return getattr(cfg, "vision_config", cfg)


def _is_siglip(model: Any) -> bool:
    return "siglip" in getattr(_vision_config(model), "model_type", "")


def matches(model: Any) -> bool:
    kind = getattr(_vision_config(model), "model_type", None) if hasattr(model, "config") else None
    return kind in ("clip_vision_model", "siglip_vision_model")


def unsupported(model: Any) -> list[str]:
    cfg = _vision_config(model)
    found = []
    if type(model).__name__ not in CLASSES:
        found.append(f"model class {type(model).__name__} (supported: {', '.join(CLASSES)})")
    if cfg.hidden_act not in HF_ACTS:
        found.append(f"activation {cfg.hidden_act!r}")
    return found


def config(model: Any) -> ViTConfig:
    cfg = _vision_config(model)
    siglip = _is_siglip(model)
    proj = getattr(model, "visual_projection", None)
    uses_head = siglip and bool(getattr(cfg, "vision_use_head", True))
    return ViTConfig(
        **encoder_fields(cfg),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        pre_norm=not siglip,
        class_token=not siglip,
        pos_resample="bicubic",
        pool="map" if uses_head else ("none" if siglip else "cls"),
        final_norm="tokens" if siglip else "pooled",
        projection_dim=proj.out_features if isinstance(proj, nn.Linear) else 0,
    )


def _prefix(keys: Collection[str]) -> str:
    return "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """HF CLIP / SigLIP vision keys <-> HookedViT keys."""
    siglip = not cfg.class_token
    # CLIP's patch embedding has no bias (zero-filled here, left out again on export)
    rules: KeyMap = R.patch_embed("embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias", cfg)
    if not siglip:
        rules.append(R.vector("embeddings.class_embedding", "cls_token.W_cls", unit_axes=0))
        rules += R.layer_norm("pre_layrnorm", "ln_pre")
    rules.append(R.rows("embeddings.position_embedding.weight", "pos_embed.W_pos", unit_axes=0))
    for layer in range(cfg.n_layers):
        s, t, h = f"encoder.layers.{layer}.", f"blocks.{layer}.", cfg.heads_in_layer(layer)
        for proj, name in (("q", "Q"), ("k", "K"), ("v", "V")):
            rules += R.heads_in(f"{s}self_attn.{proj}_proj", name, t + "attn", cfg, h)
        rules += R.heads_out(s + "self_attn.out_proj", t + "attn", h)
        rules += R.layer_norm(s + "layer_norm1", t + "ln1") + R.layer_norm(s + "layer_norm2", t + "ln2")
        rules += R.linear(s + "mlp.fc1", t + "mlp.W_in", t + "mlp.b_in")
        rules += R.linear(s + "mlp.fc2", t + "mlp.W_out", t + "mlp.b_out")
    rules += R.layer_norm("post_layernorm", "ln_final" if siglip else "fc_norm")
    if cfg.pool == "map":
        rules.append(R.vector("head.probe", "pool.probe"))
        rules += R.fused_heads(
            "head.attention.in_proj", "pool", "QKV", cfg, cfg.n_heads, weight="_weight", bias="_bias"
        )
        rules += R.heads_out("head.attention.out_proj", "pool", cfg.n_heads)
        rules += R.layer_norm("head.layernorm", "pool.ln")
        rules += R.linear("head.mlp.fc1", "pool.mlp.W_in", "pool.mlp.b_in")
        rules += R.linear("head.mlp.fc2", "pool.mlp.W_out", "pool.mlp.b_out")
    rules = prefixed(rules, _prefix(keys))
    if cfg.projection_dim:
        rules.append(rule("visual_projection.weight", "proj.W_proj", "o i -> i o"))
    return rules


def preprocessing(model: Any, cfg: ViTConfig) -> Preprocessing:
    if _is_siglip(model):
        return Preprocessing(
            image_size=cfg.image_size, mean=HALF, std=HALF, interpolation="bicubic", resize_mode="squash",
            crop_pct=1.0, source="SiglipImageProcessor defaults",
        )  # fmt: skip
    return Preprocessing(
        image_size=cfg.image_size, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic",
        resize_mode="shortest_edge_crop", crop_pct=1.0, source="CLIPImageProcessor defaults",
    )  # fmt: skip
