"""timm VisionTransformer -> HookedViT: support check, config, preprocessing, and the weight converter.

Weight layout (REFERENCE §1): fused `attn.qkv.weight` [3*d, d] splits as `(three h e) d -> three h d e`;
`attn.proj.weight` [d, d] as `m (h e) -> h e m`; Linear weights [out, in] transpose to x @ W.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vitmech.config import ViTConfig
from vitmech.errors import UnsupportedModelError
from vitmech.loading._state import SourceWeights, load_strict
from vitmech.model.hooked_vit import HookedViT
from vitmech.preprocessing import Preprocessing

logger = logging.getLogger(__name__)


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _act_name(act: nn.Module) -> str | None:
    from timm.layers.activations import QuickGELU

    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.ReLU):
        return "relu"
    return None


def _is_layer_norm(module: Any) -> bool:
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.bias is not None


def unsupported_timm_features(model: nn.Module) -> list[str]:
    """Names of the features of this timm model that HookedViT cannot represent (empty when supported)."""
    from timm.layers import Attention as TimmAttention
    from timm.layers import Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        return [f"model class {type(model).__name__} (only timm VisionTransformer is supported)"]
    found: list[str] = []
    if type(model) is not VisionTransformer:
        found.append(f"subclass {type(model).__name__} (e.g. a distillation token)")
    if getattr(model, "cls_token", None) is None:
        found.append("no class token")
    if getattr(model, "num_reg_tokens", 0):
        found.append(f"{model.num_reg_tokens} register tokens")
    if getattr(model, "no_embed_class", False):
        found.append("position embeddings without a CLS entry (no_embed_class)")
    if getattr(model, "pos_embed", None) is None:
        found.append("no learned absolute position embedding")
    if model.global_pool != "token":
        found.append(f"global_pool={model.global_pool!r} (only CLS-token pooling)")
    if getattr(model, "attn_pool", None) is not None:
        found.append("attention-pooling head")
    if not _is_identity(getattr(model, "fc_norm", None)):
        found.append("fc_norm (a norm after pooling)")
    if not _is_layer_norm(model.norm):
        found.append(f"final norm {type(model.norm).__name__} (only LayerNorm with bias)")
    if not (_is_identity(model.norm_pre) or _is_layer_norm(model.norm_pre)):
        found.append(f"pre-norm {type(model.norm_pre).__name__}")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.proj, nn.Conv2d):
        found.append(f"patch embedding {type(pe).__name__}")
    else:
        if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.kernel_size[0] != pe.proj.kernel_size[1]:
            found.append("overlapping or non-square patches")
        if not _is_identity(getattr(pe, "norm", None)):
            found.append("norm inside the patch embedding")
        if getattr(pe, "dynamic_img_pad", False):
            found.append("dynamic image padding")
        if pe.img_size is None or pe.img_size[0] != pe.img_size[1]:
            found.append(f"non-square or dynamic image size {pe.img_size}")
    if not isinstance(model.head, (nn.Linear, nn.Identity)) or (
        isinstance(model.head, nn.Linear) and model.head.bias is None
    ):
        found.append(f"head {type(model.head).__name__} (only a Linear with bias, or none)")
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not Block:
            found.append(f"{where}: block type {type(blk).__name__} (e.g. parallel or post-norm blocks)")
            continue
        if not (_is_identity(blk.ls1) and _is_identity(blk.ls2)):
            found.append(f"{where}: LayerScale (ls1/ls2)")
        if not (_is_layer_norm(blk.norm1) and _is_layer_norm(blk.norm2)):
            found.append(f"{where}: norm {type(blk.norm1).__name__} (only LayerNorm with bias)")
        attn = blk.attn
        if type(attn) is not TimmAttention:
            found.append(f"{where}: attention {type(attn).__name__}")
        else:
            if not (_is_identity(attn.q_norm) and _is_identity(attn.k_norm)):
                found.append(f"{where}: q/k normalisation (qk_norm)")
            if not _is_identity(attn.norm):
                found.append(f"{where}: attention output norm (scale_attn_norm)")
            if getattr(attn, "gate", None) is not None:
                found.append(f"{where}: gated attention")
            if attn.proj.bias is None:
                found.append(f"{where}: attention projection without bias")
        mlp = blk.mlp
        if type(mlp) is not Mlp:
            found.append(f"{where}: MLP {type(mlp).__name__} (e.g. GLU/SwiGLU)")
        else:
            if _act_name(mlp.act) is None:
                found.append(f"{where}: activation {type(mlp.act).__name__}")
            if not _is_identity(mlp.norm):
                found.append(f"{where}: norm inside the MLP (scale_mlp_norm)")
            if mlp.fc1.bias is None or mlp.fc2.bias is None:
                found.append(f"{where}: MLP without biases")
    return found


def check_timm_supported(model: nn.Module) -> None:
    features = unsupported_timm_features(model)
    if features:
        name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        raise UnsupportedModelError(f"cannot port timm model {name!r}: unsupported " + "; ".join(features))


def config_from_timm(model: Any) -> ViTConfig:
    """Architecture of a supported timm VisionTransformer (call `check_timm_supported` first)."""
    block = model.blocks[0]
    n_heads = block.attn.num_heads
    return ViTConfig(
        n_layers=len(model.blocks),
        n_heads=n_heads,
        d_model=model.embed_dim,
        d_head=block.attn.head_dim,
        d_mlp=block.mlp.fc1.out_features,
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        n_channels=model.patch_embed.proj.in_channels,
        n_classes=model.head.out_features if isinstance(model.head, nn.Linear) else 0,
        ln_eps=model.norm.eps,
        act_fn=_act_name(block.mlp.act),  # type: ignore[arg-type]  # check_timm_supported rejected other activations
        qkv_bias=block.attn.qkv.bias is not None,
        pre_norm=not _is_identity(model.norm_pre),
    )


def preprocessing_from_timm(model: Any) -> Preprocessing:
    """The eval transform timm itself would build for this model (`resolve_data_config`)."""
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({}, model=model)
    image_size = model.patch_embed.img_size[0]
    if data_cfg["input_size"][-1] != image_size:
        logger.info(
            "timm data config says %s but the model takes %dpx; using %dpx",
            data_cfg["input_size"],
            image_size,
            image_size,
        )
    crop_mode = data_cfg.get("crop_mode", "center")
    if crop_mode not in ("center", "squash"):
        logger.warning("timm crop_mode %r approximated by a centre crop", crop_mode)
    name = getattr(model, "pretrained_cfg", {}).get("tag") or getattr(model, "default_cfg", {}).get(
        "architecture", "timm"
    )
    return Preprocessing(
        image_size=image_size,
        mean=tuple(float(m) for m in data_cfg["mean"]),
        std=tuple(float(s) for s in data_cfg["std"]),
        interpolation=data_cfg.get("interpolation", "bicubic"),
        resize_mode="squash" if crop_mode == "squash" else "shortest_edge_crop",
        crop_pct=float(data_cfg.get("crop_pct", 1.0)),
        source=f"timm data config ({name})",
    )


def _or_zeros(tensor: torch.Tensor | None, *shape: int) -> torch.Tensor:
    return torch.zeros(shape) if tensor is None else tensor


def convert_timm_weights(state_dict: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """timm VisionTransformer state dict -> HookedViT state dict. Every timm key must be used."""
    src = SourceWeights(state_dict, "timm")
    h, d = cfg.n_heads, cfg.d_model
    out: dict[str, torch.Tensor] = {
        "embed.W_E": rearrange(src.take("patch_embed.proj.weight"), "d c p1 p2 -> (c p1 p2) d"),
        "embed.b_E": _or_zeros(src.take_optional("patch_embed.proj.bias"), d),  # CLIP-style models have none
        "cls_token.W_cls": src.take("cls_token").reshape(d),
        "pos_embed.W_pos": src.take("pos_embed").reshape(cfg.n_tokens, d),
    }
    if cfg.pre_norm:
        out["ln_pre.w"] = src.take("norm_pre.weight")
        out["ln_pre.b"] = src.take("norm_pre.bias")
    for layer in range(cfg.n_layers):
        pre, new = f"blocks.{layer}.", f"blocks.{layer}."
        qkv_w = rearrange(src.take(pre + "attn.qkv.weight"), "(three h e) d -> three h d e", three=3, h=h)
        qkv_b = _or_zeros(src.take_optional(pre + "attn.qkv.bias"), 3 * h * cfg.d_head)
        qkv_b = rearrange(qkv_b, "(three h e) -> three h e", three=3, h=h)
        for i, name in enumerate("QKV"):
            out[f"{new}attn.W_{name}"] = qkv_w[i]
            out[f"{new}attn.b_{name}"] = qkv_b[i]
        out[new + "attn.W_O"] = rearrange(src.take(pre + "attn.proj.weight"), "m (h e) -> h e m", h=h)
        out[new + "attn.b_O"] = src.take(pre + "attn.proj.bias")
        out[new + "ln1.w"] = src.take(pre + "norm1.weight")
        out[new + "ln1.b"] = src.take(pre + "norm1.bias")
        out[new + "ln2.w"] = src.take(pre + "norm2.weight")
        out[new + "ln2.b"] = src.take(pre + "norm2.bias")
        out[new + "mlp.W_in"] = src.take(pre + "mlp.fc1.weight").T
        out[new + "mlp.b_in"] = src.take(pre + "mlp.fc1.bias")
        out[new + "mlp.W_out"] = src.take(pre + "mlp.fc2.weight").T
        out[new + "mlp.b_out"] = src.take(pre + "mlp.fc2.bias")
    out["ln_final.w"] = src.take("norm.weight")
    out["ln_final.b"] = src.take("norm.bias")
    if cfg.has_classifier:
        out["head.W_H"] = src.take("head.weight").T
        out["head.b_H"] = src.take("head.bias")
    src.finish()
    return {k: v.contiguous() for k, v in out.items()}


def _timm_class_names(model: nn.Module, n_classes: int) -> list[str] | None:
    """ImageNet class descriptions when the pretrained config names an ImageNet label set."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i) for i in range(n_classes)]
        return names if len(names) == n_classes else None
    except Exception:  # label metadata is a convenience; never fail a port over it
        return None


def hooked_vit_from_timm(model_or_name: Any, **timm_kwargs: Any) -> HookedViT:
    """Port a timm VisionTransformer instance, or create one by name (pretrained=True unless given)."""
    if isinstance(model_or_name, str):
        import timm

        timm_kwargs.setdefault("pretrained", True)
        from vitmech.loading.registry import check_timm_name

        check_timm_name(model_or_name)
        model = timm.create_model(model_or_name, **timm_kwargs)
    else:
        if timm_kwargs:
            raise TypeError(f"timm keyword arguments {sorted(timm_kwargs)} only apply when a name is given")
        model = model_or_name
    check_timm_supported(model)
    cfg = config_from_timm(model)
    hooked = HookedViT(
        cfg,
        preprocessing=preprocessing_from_timm(model),
        class_names=_timm_class_names(model, cfg.n_classes) if cfg.has_classifier else None,
        initialize=False,
    )
    params = {k: v.detach() for k, v in model.state_dict().items()}
    load_strict(hooked, convert_timm_weights(params, cfg), "converted timm weights")
    first = next(model.parameters())
    return hooked.to(device=first.device, dtype=first.dtype).eval()
