"""HuggingFace ViT-like encoders: `ViTModel` / `ViTForImageClassification`, DeiT (`DeiTModel`,
`DeiTForImageClassificationWithTeacher`), `ViTMAEModel`, `Dinov2Model`, `Dinov2WithRegistersModel`.

They share the embeddings (`cls_token`, `position_embeddings` over class and patches, a conv patch
embedding) and differ in a distillation token, register tokens inserted after the class token (DINOv2:
they get no position embedding), LayerScale and SwiGLU (DINOv2), and the names of the layer weights
(transformers 4 / 5 layouts).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.keymap import KeyMap, Rule, prefixed, rule
from vitmech.preprocessing import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocessing

NAME = "HuggingFace ViT / DeiT / ViTMAE / DINOv2"
SOURCE = "hf"

HF_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
VITMECH_TO_HF_ACT = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
}

# Per-layer parameter names by layout, keyed by a canonical name.
LAYER_KEYS = {
    "v4": {
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "o": "attention.output.dense",
        "ln1": "layernorm_before",
        "ln2": "layernorm_after",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
    },
    "v5": {
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "o": "attention.o_proj",
        "ln1": "layernorm_before",
        "ln2": "layernorm_after",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
    },
    "dinov2": {
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "o": "attention.o_proj",
        "ln1": "norm1",
        "ln2": "norm2",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
        "ls1": "layer_scale1.lambda1",
        "ls2": "layer_scale2.lambda1",
    },
}
LAYER_PREFIX = {"v4": "encoder.layer.{}.", "v5": "layers.{}.", "dinov2": "encoder.layer.{}."}
MODEL_TYPES = ("vit", "deit", "vit_mae", "dinov2", "dinov2_with_registers")
CLASSES = (
    "ViTModel",
    "ViTForImageClassification",
    "DeiTModel",
    "DeiTForImageClassificationWithTeacher",
    "ViTMAEModel",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
)
# the attribute holding the encoder in classifier classes, and the classifier names
ENCODER_PREFIXES = ("vit.", "deit.", "dinov2.")


def detect_layout(keys: Collection[str]) -> str:
    """'v4', 'v5' or 'dinov2' from the per-layer key names of a (prefix-stripped) state dict."""
    keys = list(keys)
    if any(k.startswith("encoder.layer.") and ".norm1." in k for k in keys):
        return "dinov2"
    if any(k.startswith("encoder.layer.") for k in keys):
        return "v4"
    if any(k.startswith("layers.") for k in keys):
        return "v5"
    from vitmech.errors import UnsupportedModelError

    raise UnsupportedModelError("no ViT encoder layers found in these HuggingFace weights")


def _encoder_prefix(keys: Collection[str]) -> str:
    for prefix in ENCODER_PREFIXES:
        if any(k.startswith(prefix + "embeddings.") for k in keys):
            return prefix
    return ""


def matches(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in MODEL_TYPES


def unsupported(model: Any) -> list[str]:
    cfg = model.config
    found = []
    name = type(model).__name__
    if name == "Dinov2ForImageClassification":
        found.append("model class Dinov2ForImageClassification: a head on the class token and the mean of the patches")
    elif name not in CLASSES:
        found.append(f"model class {name} (supported: {', '.join(CLASSES)})")
    if getattr(cfg, "hidden_act", "gelu") not in HF_ACTS:
        found.append(f"activation {cfg.hidden_act!r}")
    if not isinstance(cfg.image_size, int):
        found.append(f"non-square image size {cfg.image_size}")
    if getattr(cfg, "use_swiglu_ffn", False) and getattr(cfg, "model_type", "") not in (
        "dinov2",
        "dinov2_with_registers",
    ):
        found.append("SwiGLU outside DINOv2")
    return found


def config(model: Any) -> ViTConfig:
    cfg = model.config
    kind = cfg.model_type
    d_model = cfg.hidden_size
    head = getattr(model, "classifier", None) or getattr(model, "cls_classifier", None)
    n_classes = head.out_features if isinstance(head, nn.Linear) else 0
    dinov2 = kind in ("dinov2", "dinov2_with_registers")
    swiglu = dinov2 and bool(getattr(cfg, "use_swiglu_ffn", False))
    d_mlp = cfg.intermediate_size if not dinov2 else int(d_model * cfg.mlp_ratio)
    if swiglu:
        d_mlp = (int(d_mlp * 2 / 3) + 7) // 8 * 8
    return ViTConfig(
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        d_model=d_model,
        d_head=getattr(cfg, "head_dim", None) or d_model // cfg.num_attention_heads,
        d_mlp=d_mlp,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0],
        n_channels=cfg.num_channels,
        n_classes=n_classes,
        ln_eps=cfg.layer_norm_eps,
        act_fn="silu" if swiglu else HF_ACTS[cfg.hidden_act],  # type: ignore[arg-type]
        qkv_bias=bool(getattr(cfg, "qkv_bias", True)),
        distill_token=kind == "deit",
        n_register_tokens=int(getattr(cfg, "num_register_tokens", 0) or 0) if kind == "dinov2_with_registers" else 0,
        pos_embed_prefix=1 if kind == "dinov2_with_registers" else None,
        pos_resample="bicubic",
        layer_scale=dinov2,
        gated_mlp=swiglu,
    )


def _layer_rules(cfg: ViTConfig, layer: int, layout: str) -> KeyMap:
    names, s, t = LAYER_KEYS[layout], LAYER_PREFIX[layout].format(layer), f"blocks.{layer}."
    h = cfg.heads_in_layer(layer)
    rules: KeyMap = []
    for proj, name in (("q", "Q"), ("k", "K"), ("v", "V")):
        rules += R.heads_in(s + names[proj], name, t + "attn", cfg, h, bias=None)
    rules += R.heads_out(s + names["o"], t + "attn", h)
    rules += R.layer_norm(s + names["ln1"], t + "ln1") + R.layer_norm(s + names["ln2"], t + "ln2")
    if cfg.layer_scale:
        rules += [rule(s + names["ls1"], t + "attn.ls.gamma"), rule(s + names["ls2"], t + "mlp.ls.gamma")]
    if cfg.gated_mlp:
        rules += R.linear(s + names["gate"], t + "mlp.W_gate", t + "mlp.b_gate")
        rules += R.linear(s + names["up"], t + "mlp.W_in", t + "mlp.b_in")
        rules += R.linear(s + names["down"], t + "mlp.W_out", t + "mlp.b_out")
    else:
        rules += R.linear(s + names["fc1"], t + "mlp.W_in", t + "mlp.b_in")
        rules += R.linear(s + names["fc2"], t + "mlp.W_out", t + "mlp.b_out")
    return rules


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """HF keys (any of the classes above, either layout) <-> HookedViT keys."""
    prefix = _encoder_prefix(keys)
    stripped = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    layout = detect_layout(stripped)
    rules: KeyMap = R.patch_embed(
        "embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.bias", cfg
    )
    rules.append(R.vector("embeddings.cls_token", "cls_token.W_cls"))
    if cfg.distill_token:
        rules.append(R.vector("embeddings.distillation_token", "dist_token.W_dist"))
    if cfg.n_register_tokens:
        rules.append(R.rows("embeddings.register_tokens", "registers.W_reg"))
    rules.append(R.rows("embeddings.position_embeddings", "pos_embed.W_pos"))
    if "embeddings.mask_token" in stripped:
        rules.append(Rule.unused("embeddings.mask_token", "used only for masked-image-modelling inputs"))
    for layer in range(cfg.n_layers):
        rules += _layer_rules(cfg, layer, layout)
    rules += R.layer_norm("layernorm", "ln_final")
    rules = prefixed(rules, prefix)
    if cfg.has_distill_head:
        rules += R.linear("cls_classifier", "head.W_H", "head.b_H")
        rules += R.linear("distillation_classifier", "head_dist.W_H", "head_dist.b_H")
    elif cfg.has_classifier:
        rules += R.linear("classifier", "head.W_H", "head.b_H")
    return rules


# model_type -> its image processor's defaults: mean, std, interpolation, resize mode, crop fraction
PROCESSOR_DEFAULTS = {
    "vit": (HALF, HALF, "bilinear", "squash", 1.0),
    "vit_mae": (IMAGENET_MEAN, IMAGENET_STD, "bilinear", "squash", 1.0),
    "deit": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", "shortest_edge_crop", 0.875),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", "shortest_edge_crop", 0.875),
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", "shortest_edge_crop", 0.875),
    "dinov3_vit": (IMAGENET_MEAN, IMAGENET_STD, "bilinear", "squash", 1.0),
}


def encoder_fields(cfg: Any) -> dict[str, Any]:
    """The ViTConfig fields that a HF vision encoder config (CLIP, SigLIP, DINOv3) names the same way: depth,
    widths, channels, LayerNorm eps and activation; no classifier (n_classes 0)."""
    return dict(
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        d_model=cfg.hidden_size,
        d_head=cfg.hidden_size // cfg.num_attention_heads,
        d_mlp=cfg.intermediate_size,
        n_channels=cfg.num_channels,
        n_classes=0,
        ln_eps=cfg.layer_norm_eps,
        act_fn=HF_ACTS[cfg.hidden_act],
    )


def processor_defaults(kind: str, image_size: int, source: str = "ViTImageProcessor defaults") -> Preprocessing:
    """The image processor defaults of a model type (`PROCESSOR_DEFAULTS`) at `image_size`."""
    mean, std, interpolation, resize_mode, crop_pct = PROCESSOR_DEFAULTS[kind]
    return Preprocessing(
        image_size=image_size, mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode,  # type: ignore[arg-type]
        crop_pct=crop_pct, source=source,
    )  # fmt: skip


def preprocessing(model: Any, cfg: ViTConfig) -> Preprocessing:
    """The image processor defaults of the family (a hub id or directory reads its own processor instead)."""
    kind = model.config.model_type
    source = (
        "ViTImageProcessor defaults"
        if kind in ("vit", "vit_mae")
        else f"{type(model).__name__} image processor defaults"
    )
    return processor_defaults(kind, cfg.image_size, source)


def class_names(model: Any, cfg: ViTConfig) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    if not cfg.has_classifier or not id2label:
        return None
    return [id2label.get(i, id2label.get(str(i), str(i))) for i in range(cfg.n_classes)]
