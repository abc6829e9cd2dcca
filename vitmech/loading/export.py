"""HookedViT -> timm / HuggingFace state dicts and models: the families' key maps read backwards (exact).

Works on any module with `cfg`, `state_dict()` and `class_names` (a HookedViT) without importing it.
`export_state_dict(model, family, source_keys)` covers every family; `to_timm` / `to_hf` also build the
target model (timm: every timm VisionTransformer option vitmech represents; HF: plain ViT).
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import Any

import torch
from torch import nn

from vitmech.config import ViTConfig
from vitmech.errors import UnsupportedModelError
from vitmech.loading._state import load_strict
from vitmech.loading.families import Family, by_name, export, hf_vit, timm_vit
from vitmech.loading.families.base import ViTModelLike
from vitmech.loading.families.hf_vit import LAYER_PREFIX, VITMECH_TO_HF_ACT, detect_layout


def _check_standard_widths(cfg: ViTConfig, target: str) -> None:
    if cfg.pool in ("flatten", "rowcol"):
        raise UnsupportedModelError(
            f"{target} has no position-keeping readout (pool={cfg.pool!r}); save this model with format='vitmech'"
        )
    if not cfg.uniform_heads:
        raise UnsupportedModelError(
            f"{target} needs the same number of heads in every layer; this model has {list(cfg.n_heads_per_layer or [])}"
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


def _state(model: ViTModelLike) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def export_state_dict(
    model: ViTModelLike, family: Family | str, source_keys: Collection[str] = (), complete: bool = True
) -> dict[str, torch.Tensor]:
    """The model's weights in a family's source layout. source_keys (e.g. the target model's state-dict keys)
    pick a layout variant where the family has several (transformers 4 / 5 names, a classifier prefix); when
    `complete` (they are all of the target's keys), zero optional parameters the target lacks are left out."""
    fam = by_name(family) if isinstance(family, str) else family
    return export(fam, model.cfg, _state(model), source_keys, complete)


# ---------------------------------------------------------------------------------------------- timm
def timm_state_dict(model: ViTModelLike) -> dict[str, torch.Tensor]:
    """State dict of the equivalent timm VisionTransformer (loads strictly into `to_timm`'s model)."""
    _check_standard_widths(model.cfg, "timm")
    return export_state_dict(model, by_name(timm_vit.NAME))


def _timm_act_layer(act_fn: str) -> Any:
    from timm.layers.activations import QuickGELU

    return {
        "gelu": nn.GELU,
        "gelu_tanh": partial(nn.GELU, approximate="tanh"),
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
        "silu": nn.SiLU,
    }[act_fn]


def timm_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """timm VisionTransformer constructor arguments for this architecture (refuses what timm cannot build)."""
    from timm.layers import SwiGLUPacked

    _check_standard_widths(cfg, "timm")
    if cfg.pos_embed_prefix not in (None, 0):
        raise UnsupportedModelError(
            f"timm gives position embeddings to all prefix tokens or none; this model gives them to {cfg.pos_embed_prefix}"
        )
    if cfg.projection_dim:
        raise UnsupportedModelError("timm VisionTransformer has no bias-free projection (projection_dim)")
    if cfg.rope != "none" or cfg.mlp_norm:
        raise UnsupportedModelError(
            "timm VisionTransformer has no rotary embeddings or MLP LayerNorm (EVA-02 / DINOv3 are timm `Eva`); "
            "export with export_state_dict(model, vitmech.loading.families.by_name('timm Eva (EVA-02, DINOv3)'), keys)"
        )
    return dict(
        img_size=cfg.stored_pos_grid * cfg.patch_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.n_channels,
        num_classes=cfg.n_classes,
        global_pool={"cls": "token", "avg": "avg", "map": "map", "none": ""}[cfg.pool],
        embed_dim=cfg.d_model,
        depth=cfg.n_layers,
        num_heads=cfg.n_heads,
        mlp_ratio=(2 if cfg.gated_mlp else 1) * cfg.d_mlp / cfg.d_model,
        qkv_bias=cfg.qkv_bias,
        qk_norm=cfg.qk_norm,
        init_values=1.0 if cfg.layer_scale else None,
        class_token=cfg.class_token,
        pos_embed="learn" if cfg.pos_embed else "none",
        no_embed_class=cfg.pos_embed_prefix == 0,
        reg_tokens=cfg.n_register_tokens,
        pre_norm=cfg.pre_norm,
        final_norm=cfg.final_norm != "none",
        fc_norm=cfg.final_norm == "pooled",
        dynamic_img_size=cfg.pos_grid is not None,
        norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps),
        act_layer=_timm_act_layer(cfg.act_fn),
        **({"mlp_layer": SwiGLUPacked} if cfg.gated_mlp else {}),
    )


def to_timm(model: ViTModelLike) -> nn.Module:
    """A timm VisionTransformer (VisionTransformerDistilled for DeiT) with this model's weights, built from its
    config (no model name needed)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cfg = model.cfg
    cls = VisionTransformerDistilled if cfg.distill_token else VisionTransformer
    timm_model = cls(**timm_kwargs(cfg))
    if timm_vit.config(timm_model).d_mlp != cfg.d_mlp:
        raise UnsupportedModelError(f"timm rounds mlp_ratio to a hidden width other than d_mlp={cfg.d_mlp}")
    state = _fit_to_target(timm_state_dict(model), timm_model, "the timm model")
    load_strict(timm_model, state, "exported timm weights")
    return timm_model.to(device=model.device, dtype=model.dtype).eval()


# ---------------------------------------------------------------------------------------------- HuggingFace ViT
def _check_plain_vit(cfg: ViTConfig) -> None:
    _check_standard_widths(cfg, "HuggingFace ViT")
    if cfg.pre_norm:
        raise UnsupportedModelError("HuggingFace ViT has no pre-norm (ln_pre); export this model to timm instead")
    plain = ViTConfig(**{**cfg.to_dict(), **{f.name: f.default for f in _FEATURE_FIELDS}})
    if plain != cfg:
        changed = [f.name for f in _FEATURE_FIELDS if getattr(cfg, f.name) != f.default]
        raise UnsupportedModelError(f"HuggingFace ViT cannot hold {changed}; export with export_state_dict or to_timm")


def _feature_fields() -> list[Any]:
    import dataclasses

    names = ("distill_token", "n_register_tokens", "pos_embed", "pos_embed_prefix", "layer_scale", "gated_mlp",
             "qk_norm", "pool", "final_norm", "projection_dim", "class_token", "rope", "mlp_norm")  # fmt: skip
    return [f for f in dataclasses.fields(ViTConfig) if f.name in names]


_FEATURE_FIELDS = _feature_fields()


def hf_config(model: ViTModelLike) -> Any:
    """The transformers ViTConfig describing this model."""
    from transformers import ViTConfig as HFViTConfig

    cfg = model.cfg
    _check_plain_vit(cfg)
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


def _layout_keys(layout: str, classifier: bool) -> list[str]:
    """Representative source keys that make the HF key map pick `layout` (and the 'vit.' prefix)."""
    prefix = "vit." if classifier else ""
    return [prefix + "embeddings.cls_token", prefix + LAYER_PREFIX[layout].format(0)]


def hf_state_dict(model: ViTModelLike, layout: str | None = None) -> dict[str, torch.Tensor]:
    """State dict for HF ViTForImageClassification (or ViTModel without pooler when there is no head).

    layout: "v4" (transformers 4.x key names) or "v5"; default: that of the installed transformers.
    """
    cfg = model.cfg
    _check_plain_vit(cfg)
    keys = _layout_keys(layout or _installed_layout(), cfg.has_classifier)
    return export_state_dict(model, by_name(hf_vit.NAME), keys, complete=False)


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


def to_hf(model: ViTModelLike) -> nn.Module:
    """A transformers ViTForImageClassification (ViTModel without pooler if headless) with these weights."""
    from transformers import ViTForImageClassification, ViTModel

    config = hf_config(model)
    config._attn_implementation = "eager"
    hf_model = (
        ViTForImageClassification(config) if model.cfg.has_classifier else ViTModel(config, add_pooling_layer=False)
    )
    state = export_state_dict(model, by_name(hf_vit.NAME), list(hf_model.state_dict()))
    load_strict(hf_model, _fit_to_target(state, hf_model, "the HF model"), "exported HF weights")
    # transformers wraps PreTrainedModel.to in a decorator whose annotation drops the bound self
    return hf_model.to(device=model.device, dtype=model.dtype).eval()  # type: ignore[call-arg]
