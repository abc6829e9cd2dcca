"""HuggingFace ViT (ViTForImageClassification / ViTModel) -> HookedViT.

Weights: `query/key/value` (or `q_proj/k_proj/v_proj`) [h*e, d] split as `(h e) d -> h d e`;
the output projection [d, h*e] as `m (h e) -> h e m`. Two key layouts exist: transformers 4.x
(`encoder.layer.{i}.attention.attention.query`) and 5.x (`layers.{i}.attention.q_proj`); both convert.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vitmech.config import ViTConfig
from vitmech.errors import CheckpointMismatchError, UnsupportedModelError
from vitmech.loading._state import SourceWeights, load_strict, raise_on_mismatch
from vitmech.model.hooked_vit import HookedViT
from vitmech.preprocessing import HALF, Preprocessing

logger = logging.getLogger(__name__)

HF_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
}
VITMECH_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}

# Per-layer parameter names in the two transformers layouts, keyed by a canonical name.
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
}
LAYER_PREFIX = {"v4": "encoder.layer.{}.", "v5": "layers.{}."}


def detect_layout(keys: Any) -> str:
    """'v4' or 'v5' from the per-layer key names of a (prefix-stripped) ViT state dict."""
    keys = list(keys)
    if any(k.startswith("encoder.layer.") for k in keys):
        return "v4"
    if any(k.startswith("layers.") for k in keys):
        return "v5"
    raise UnsupportedModelError("no ViT encoder layers found in these HuggingFace weights")


def unsupported_hf_features(model: Any) -> list[str]:
    cfg = model.config
    found = []
    if getattr(cfg, "model_type", None) != "vit":
        found.append(f"model_type {getattr(cfg, 'model_type', None)!r} (only 'vit'; DeiT has a distillation token)")
    if type(model).__name__ not in ("ViTForImageClassification", "ViTModel"):
        found.append(f"model class {type(model).__name__} (only ViTForImageClassification and ViTModel)")
    if getattr(cfg, "hidden_act", "gelu") not in HF_ACTS:
        found.append(f"activation {cfg.hidden_act!r}")
    image_size = cfg.image_size if isinstance(cfg.image_size, int) else None
    if image_size is None:
        found.append(f"non-square image size {cfg.image_size}")
    if getattr(model, "pooler", None) is not None:
        pass  # handled by the caller (ignore_pooler)
    return found


def config_from_hf(model: Any) -> ViTConfig:
    cfg = model.config
    head = getattr(model, "classifier", None)
    n_classes = head.out_features if isinstance(head, nn.Linear) else 0
    d_model = cfg.hidden_size
    return ViTConfig(
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        d_model=d_model,
        d_head=getattr(cfg, "head_dim", None) or d_model // cfg.num_attention_heads,
        d_mlp=cfg.intermediate_size,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0],
        n_channels=cfg.num_channels,
        n_classes=n_classes,
        ln_eps=cfg.layer_norm_eps,
        act_fn=HF_ACTS[cfg.hidden_act],  # type: ignore[arg-type]  # HF_ACTS values are ViTConfig act_fn names
        qkv_bias=bool(getattr(cfg, "qkv_bias", True)),
    )


_PIL_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def preprocessing_from_hf_processor(processor: Any, image_size: int, source: str) -> Preprocessing:
    """Map a ViTImageProcessor's resize/normalise settings onto a Preprocessing."""
    size = getattr(processor, "size", None) or {}
    height = size.get("height") or size.get("shortest_edge") or image_size
    if height != image_size:
        logger.warning("processor size %s differs from the model's %dpx; using the model's", size, image_size)
    resample = getattr(processor, "resample", 2)
    resample = getattr(resample, "value", resample)
    interpolation = _PIL_NAMES.get(int(resample), "bilinear") if isinstance(resample, int) else str(resample).lower()
    if interpolation not in _PIL_NAMES.values():
        interpolation = "bilinear"
    do_normalize = getattr(processor, "do_normalize", True)
    mean = tuple(processor.image_mean) if do_normalize else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std) if do_normalize else (1.0, 1.0, 1.0)
    return Preprocessing(
        image_size=image_size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        resize_mode="squash",
        crop_pct=1.0,
        source=source,
    )


def default_hf_preprocessing(image_size: int) -> Preprocessing:
    """ViTImageProcessor defaults: squash to size, bilinear, mean = std = 0.5."""
    return Preprocessing(
        image_size=image_size,
        mean=HALF,
        std=HALF,
        interpolation="bilinear",
        resize_mode="squash",
        crop_pct=1.0,
        source="ViTImageProcessor defaults",
    )


def convert_hf_weights(state_dict: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """HF ViT state dict (with or without the `vit.` prefix, either layout) -> HookedViT state dict."""
    stripped = {(k[4:] if k.startswith("vit.") else k): v for k, v in state_dict.items()}
    layout = detect_layout(stripped)
    names, prefix = LAYER_KEYS[layout], LAYER_PREFIX[layout]
    src = SourceWeights(stripped, f"HuggingFace ({layout} layout)")
    h, d = cfg.n_heads, cfg.d_model
    out: dict[str, torch.Tensor] = {
        "embed.W_E": rearrange(src.take("embeddings.patch_embeddings.projection.weight"), "d c p1 p2 -> (c p1 p2) d"),
        "embed.b_E": src.take("embeddings.patch_embeddings.projection.bias"),
        "cls_token.W_cls": src.take("embeddings.cls_token").reshape(d),
        "pos_embed.W_pos": src.take("embeddings.position_embeddings").reshape(cfg.n_tokens, d),
    }
    mask_token = src.take_optional("embeddings.mask_token")
    if mask_token is not None:
        logger.info("ignoring embeddings.mask_token (used only for masked image modelling inputs)")
    for layer in range(cfg.n_layers):
        pre, new = prefix.format(layer), f"blocks.{layer}."
        for proj, name in (("q", "Q"), ("k", "K"), ("v", "V")):
            out[f"{new}attn.W_{name}"] = rearrange(src.take(f"{pre}{names[proj]}.weight"), "(h e) d -> h d e", h=h)
            bias = src.take_optional(f"{pre}{names[proj]}.bias")
            out[f"{new}attn.b_{name}"] = (
                torch.zeros(h, cfg.d_head) if bias is None else rearrange(bias, "(h e) -> h e", h=h)
            )
        out[new + "attn.W_O"] = rearrange(src.take(f"{pre}{names['o']}.weight"), "m (h e) -> h e m", h=h)
        out[new + "attn.b_O"] = src.take(f"{pre}{names['o']}.bias")
        for ln in ("ln1", "ln2"):
            out[f"{new}{ln}.w"] = src.take(f"{pre}{names[ln]}.weight")
            out[f"{new}{ln}.b"] = src.take(f"{pre}{names[ln]}.bias")
        out[new + "mlp.W_in"] = src.take(f"{pre}{names['fc1']}.weight").T
        out[new + "mlp.b_in"] = src.take(f"{pre}{names['fc1']}.bias")
        out[new + "mlp.W_out"] = src.take(f"{pre}{names['fc2']}.weight").T
        out[new + "mlp.b_out"] = src.take(f"{pre}{names['fc2']}.bias")
    out["ln_final.w"] = src.take("layernorm.weight")
    out["ln_final.b"] = src.take("layernorm.bias")
    if cfg.has_classifier:
        out["head.W_H"] = src.take("classifier.weight").T
        out["head.b_H"] = src.take("classifier.bias")
    src.finish()
    return {k: v.contiguous() for k, v in out.items()}


def check_hf_loading_info(info: dict[str, Any], what: str) -> None:
    """Refuse what transformers' from_pretrained only reports: weights it had to initialise at random
    (missing), weights it dropped (unexpected; a pooler the class has no place for is only logged),
    and shape mismatches. Raises CheckpointMismatchError listing them."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    pooler = [k for k in unexpected if k.startswith(("pooler.", "vit.pooler."))]
    if pooler:
        logger.warning("%s: leaving out the pooler %s (HookedViT returns final-LayerNorm CLS features)", what, pooler)
        unexpected = [k for k in unexpected if k not in pooler]
    mismatched = sorted(
        f"{entry[0]}: checkpoint {tuple(entry[1])} vs model {tuple(entry[2])}"
        if isinstance(entry, (tuple, list)) and len(entry) == 3
        else str(entry)
        for entry in info.get("mismatched_keys") or []
    )
    errors = [str(e) for e in info.get("error_msgs") or []]
    raise_on_mismatch(what, missing, unexpected, mismatched, errors)


def _load_hf_model(id_or_path: str, **kwargs: Any) -> tuple[nn.Module, Preprocessing]:
    """transformers' own loaders (hub or local directory); the class follows config.architectures."""
    from transformers import AutoConfig, ViTForImageClassification, ViTModel

    try:
        config = AutoConfig.from_pretrained(id_or_path)
    except OSError as err:
        raise OSError(
            f"could not load a HuggingFace config for {id_or_path!r}: {err}. "
            "A hub id needs network access (or a local cache); a local directory needs config.json."
        ) from err
    if getattr(config, "model_type", None) != "vit":
        raise UnsupportedModelError(
            f"{id_or_path!r} is a {getattr(config, 'model_type', None)!r} model; only HF 'vit' models are supported"
            " (DeiT adds a distillation token; use timm's deit_* models without one)"
        )
    archs = getattr(config, "architectures", None) or []
    cls = ViTModel if "ViTModel" in archs and "ViTForImageClassification" not in archs else ViTForImageClassification
    if cls is ViTForImageClassification and not archs and getattr(config, "num_labels", 0) == 0:
        cls = ViTModel
    kwargs.setdefault("attn_implementation", "eager")
    try:
        # output_loading_info=True returns (model, info); transformers' annotation says model only
        model, info = cls.from_pretrained(id_or_path, config=config, output_loading_info=True, **kwargs)  # type: ignore[misc]
    except RuntimeError as err:
        if "mismatch" not in str(err):
            raise
        raise CheckpointMismatchError(
            f"HuggingFace weights of {id_or_path!r} do not fit its config: shape mismatches "
            f"(transformers' load report, logged above, lists them): {err}"
        ) from err
    check_hf_loading_info(info, f"HuggingFace checkpoint {id_or_path!r} ({cls.__name__})")
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(id_or_path)
        prep = preprocessing_from_hf_processor(processor, config.image_size, source=f"image processor of {id_or_path}")
    except (OSError, ValueError):
        logger.info("no image processor config for %s; using ViTImageProcessor defaults", id_or_path)
        prep = default_hf_preprocessing(config.image_size)
    return model, prep


def hooked_vit_from_hf(
    model_or_id_or_path: Any,
    *,
    preprocessing: Preprocessing | None = None,
    ignore_pooler: bool = True,
    **from_pretrained_kwargs: Any,
) -> HookedViT:
    """Port a HF ViT instance, or load one by hub id / local directory first.

    A ViTModel's pooler (dense + tanh on CLS) is not part of HookedViT: with ignore_pooler=True
    (default) its weights are left out with a warning; False raises instead.
    """
    if isinstance(model_or_id_or_path, (str, Path)):
        model, prep = _load_hf_model(str(model_or_id_or_path), **from_pretrained_kwargs)
    else:
        if from_pretrained_kwargs:
            raise TypeError(f"{sorted(from_pretrained_kwargs)} only apply when a hub id or path is given")
        model = model_or_id_or_path
        prep = default_hf_preprocessing(model.config.image_size)
    features = unsupported_hf_features(model)
    if features:
        raise UnsupportedModelError("cannot port HuggingFace model: unsupported " + "; ".join(features))
    cfg = config_from_hf(model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    pooler_keys = [k for k in state if k.startswith(("pooler.", "vit.pooler."))]
    if pooler_keys:
        if not ignore_pooler:
            raise UnsupportedModelError(
                f"ViTModel pooler {pooler_keys} has no place in HookedViT (pass ignore_pooler=True)"
            )
        logger.warning(
            "leaving out the ViTModel pooler %s: HookedViT returns final-LayerNorm CLS features", pooler_keys
        )
        state = {k: v for k, v in state.items() if k not in pooler_keys}
    id2label = getattr(model.config, "id2label", None) or {}
    class_names = (
        [id2label.get(i, id2label.get(str(i), str(i))) for i in range(cfg.n_classes)]
        if cfg.has_classifier and id2label
        else None
    )
    hooked = HookedViT(cfg, preprocessing=preprocessing or prep, class_names=class_names, initialize=False)
    load_strict(hooked, convert_hf_weights(state, cfg), "converted HuggingFace weights")
    first = next(model.parameters())
    return hooked.to(device=first.device, dtype=first.dtype).eval()
