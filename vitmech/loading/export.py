"""HookedViT -> timm / HuggingFace state dicts and models (the inverse of the converters; exact)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vitmech.errors import UnsupportedModelError
from vitmech.loading._state import load_strict
from vitmech.loading.hf import LAYER_KEYS, LAYER_PREFIX, VITMECH_TO_HF_ACT, detect_layout
from vitmech.model.hooked_vit import HookedViT


def _check_standard_widths(model: HookedViT, target: str) -> None:
    cfg = model.cfg
    if not cfg.uniform_heads:
        raise UnsupportedModelError(
            f"{target} needs the same number of heads in every layer; this model has {[cfg.heads_in_layer(i) for i in range(cfg.n_layers)]}"
        )
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        raise UnsupportedModelError(
            f"{target} needs n_heads * d_head == d_model ({cfg.n_heads} * {cfg.d_head} != {cfg.d_model})"
        )


def _fit_to_target(state: dict[str, torch.Tensor], target: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """Drop the biases the target architecture has no parameter for (timm CLIP patch embedding, qkv_bias=False),
    refusing if any of them is non-zero (the export would then not be the same model)."""
    own = set(target.state_dict())
    absent = [k for k in state if k not in own and k.endswith("bias")]
    nonzero = [k for k in absent if state[k].abs().max() > 0]
    if nonzero:
        raise UnsupportedModelError(f"{what} has no parameter for the non-zero biases {nonzero}")
    return {k: v for k, v in state.items() if k not in absent}


def timm_state_dict(model: HookedViT) -> dict[str, torch.Tensor]:
    """State dict of the equivalent timm VisionTransformer (loads strictly into `to_timm`'s model)."""
    cfg = model.cfg
    _check_standard_widths(model, "timm")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    p = cfg.patch_size
    out: dict[str, torch.Tensor] = {
        "cls_token": sd["cls_token.W_cls"].reshape(1, 1, -1),
        "pos_embed": sd["pos_embed.W_pos"][None],
        "patch_embed.proj.weight": rearrange(sd["embed.W_E"], "(c p1 p2) d -> d c p1 p2", p1=p, p2=p),
        "patch_embed.proj.bias": sd["embed.b_E"],
    }
    if cfg.pre_norm:
        out["norm_pre.weight"], out["norm_pre.bias"] = sd["ln_pre.w"], sd["ln_pre.b"]
    for layer in range(cfg.n_layers):
        src, dst = f"blocks.{layer}.", f"blocks.{layer}."
        w = torch.stack([sd[f"{src}attn.W_{n}"] for n in "QKV"])
        out[dst + "attn.qkv.weight"] = rearrange(w, "three h d e -> (three h e) d")
        b = torch.stack([sd[f"{src}attn.b_{n}"] for n in "QKV"])
        out[dst + "attn.qkv.bias"] = rearrange(b, "three h e -> (three h e)")
        out[dst + "attn.proj.weight"] = rearrange(sd[src + "attn.W_O"], "h e m -> m (h e)")
        out[dst + "attn.proj.bias"] = sd[src + "attn.b_O"]
        out[dst + "norm1.weight"], out[dst + "norm1.bias"] = sd[src + "ln1.w"], sd[src + "ln1.b"]
        out[dst + "norm2.weight"], out[dst + "norm2.bias"] = sd[src + "ln2.w"], sd[src + "ln2.b"]
        out[dst + "mlp.fc1.weight"], out[dst + "mlp.fc1.bias"] = sd[src + "mlp.W_in"].T, sd[src + "mlp.b_in"]
        out[dst + "mlp.fc2.weight"], out[dst + "mlp.fc2.bias"] = sd[src + "mlp.W_out"].T, sd[src + "mlp.b_out"]
    out["norm.weight"], out["norm.bias"] = sd["ln_final.w"], sd["ln_final.b"]
    if cfg.has_classifier:
        out["head.weight"], out["head.bias"] = sd["head.W_H"].T, sd["head.b_H"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _timm_act_layer(act_fn: str) -> Any:
    from timm.layers.activations import QuickGELU

    return {
        "gelu": nn.GELU,
        "gelu_tanh": partial(nn.GELU, approximate="tanh"),
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
    }[act_fn]


def to_timm(model: HookedViT) -> nn.Module:
    """A timm VisionTransformer with this model's weights, built from its config (no model name needed)."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = model.cfg
    _check_standard_widths(model, "timm")
    timm_model = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.n_channels,
        num_classes=cfg.n_classes,
        global_pool="token",
        embed_dim=cfg.d_model,
        depth=cfg.n_layers,
        num_heads=cfg.n_heads,
        mlp_ratio=cfg.d_mlp / cfg.d_model,
        qkv_bias=cfg.qkv_bias,
        class_token=True,
        pre_norm=cfg.pre_norm,
        norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps),
        act_layer=_timm_act_layer(cfg.act_fn),
    )
    if timm_model.state_dict()["blocks.0.mlp.fc1.weight"].shape[0] != cfg.d_mlp:
        raise UnsupportedModelError(f"timm rounds mlp_ratio to a hidden width other than d_mlp={cfg.d_mlp}")
    state = _fit_to_target(timm_state_dict(model), timm_model, "the timm model")
    load_strict(timm_model, state, "exported timm weights")
    return timm_model.to(device=model.device, dtype=model.dtype).eval()


def hf_config(model: HookedViT) -> Any:
    """The transformers ViTConfig describing this model."""
    from transformers import ViTConfig as HFViTConfig

    cfg = model.cfg
    _check_standard_widths(model, "HuggingFace ViT")
    if cfg.pre_norm:
        raise UnsupportedModelError("HuggingFace ViT has no pre-norm (ln_pre); export this model to timm instead")
    names = model.class_names or [f"LABEL_{i}" for i in range(cfg.n_classes)]
    return HFViTConfig(
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp,
        hidden_act=VITMECH_TO_HF_ACT[cfg.act_fn],
        layer_norm_eps=cfg.ln_eps,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.n_channels,
        qkv_bias=cfg.qkv_bias,
        num_labels=max(cfg.n_classes, 1),  # type: ignore[call-arg]  # a PretrainedConfig kwarg, not in ViTConfig's signature
        id2label=dict(enumerate(names)) if cfg.has_classifier else None,
        architectures=["ViTForImageClassification" if cfg.has_classifier else "ViTModel"],
    )


def hf_state_dict(model: HookedViT, layout: str | None = None) -> dict[str, torch.Tensor]:
    """State dict for HF ViTForImageClassification (or ViTModel without pooler when there is no head).

    layout: "v4" (transformers 4.x key names) or "v5"; default: that of the installed transformers.
    """
    cfg = model.cfg
    _check_standard_widths(model, "HuggingFace ViT")
    if layout is None:
        layout = _installed_layout()
    names, prefix = LAYER_KEYS[layout], LAYER_PREFIX[layout]
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    p = cfg.patch_size
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": sd["cls_token.W_cls"].reshape(1, 1, -1),
        "embeddings.position_embeddings": sd["pos_embed.W_pos"][None],
        "embeddings.patch_embeddings.projection.weight": rearrange(
            sd["embed.W_E"], "(c p1 p2) d -> d c p1 p2", p1=p, p2=p
        ),
        "embeddings.patch_embeddings.projection.bias": sd["embed.b_E"],
    }
    for layer in range(cfg.n_layers):
        src, dst = f"blocks.{layer}.", prefix.format(layer)
        for proj, name in (("q", "Q"), ("k", "K"), ("v", "V")):
            out[f"{dst}{names[proj]}.weight"] = rearrange(sd[f"{src}attn.W_{name}"], "h d e -> (h e) d")
            out[f"{dst}{names[proj]}.bias"] = rearrange(sd[f"{src}attn.b_{name}"], "h e -> (h e)")
        out[f"{dst}{names['o']}.weight"] = rearrange(sd[src + "attn.W_O"], "h e m -> m (h e)")
        out[f"{dst}{names['o']}.bias"] = sd[src + "attn.b_O"]
        for ln in ("ln1", "ln2"):
            out[f"{dst}{names[ln]}.weight"], out[f"{dst}{names[ln]}.bias"] = sd[f"{src}{ln}.w"], sd[f"{src}{ln}.b"]
        out[f"{dst}{names['fc1']}.weight"], out[f"{dst}{names['fc1']}.bias"] = (
            sd[src + "mlp.W_in"].T,
            sd[src + "mlp.b_in"],
        )
        out[f"{dst}{names['fc2']}.weight"], out[f"{dst}{names['fc2']}.bias"] = (
            sd[src + "mlp.W_out"].T,
            sd[src + "mlp.b_out"],
        )
    out["layernorm.weight"], out["layernorm.bias"] = sd["ln_final.w"], sd["ln_final.b"]
    if cfg.has_classifier:
        out = {f"vit.{k}": v for k, v in out.items()}
        out["classifier.weight"], out["classifier.bias"] = sd["head.W_H"].T, sd["head.b_H"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _installed_layout() -> str:
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTModel

    tiny = ViTModel(
        HFViTConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=4, patch_size=2
        ),
        add_pooling_layer=False,
    )
    return detect_layout(tiny.state_dict().keys())


def to_hf(model: HookedViT) -> nn.Module:
    """A transformers ViTForImageClassification (ViTModel without pooler if headless) with these weights."""
    from transformers import ViTForImageClassification, ViTModel

    config = hf_config(model)
    config._attn_implementation = "eager"
    hf_model = (
        ViTForImageClassification(config) if model.cfg.has_classifier else ViTModel(config, add_pooling_layer=False)
    )
    state = hf_state_dict(model, detect_layout(_strip_vit(hf_model.state_dict().keys())))
    load_strict(hf_model, _fit_to_target(state, hf_model, "the HF model"), "exported HF weights")
    # transformers wraps PreTrainedModel.to in a decorator whose annotation drops the bound self
    return hf_model.to(device=model.device, dtype=model.dtype).eval()  # type: ignore[call-arg]


def _strip_vit(keys: Any) -> list[str]:
    return [k[4:] if k.startswith("vit.") else k for k in keys]
