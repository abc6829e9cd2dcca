"""timm `VisionTransformer` (and `VisionTransformerDistilled`): ViT, DeiT (distilled), DeiT III, DINOv2
(with registers), CLIP and SigLIP image towers, global-pool (MAE fine-tuned) ViTs.

Every difference between these is a constructor flag in timm and a config field here: prefix tokens
(`cls_token`, `dist_token`, `reg_token`), `no_embed_class`, LayerScale (`ls1`/`ls2`), qk-norm, SwiGLU
MLPs (packed `GluMlp` or split `SwiGLU`), pooling (`global_pool` token / avg / map, `fc_norm`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families.base import Family
from vitmech.loading.keymap import KeyMap, rule
from vitmech.preprocessing import Preprocessing

logger = logging.getLogger(__name__)


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _is_layer_norm(module: Any) -> bool:
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.bias is not None


def _act_name(act: nn.Module) -> str | None:
    from timm.layers.activations import QuickGELU

    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.SiLU):
        return "silu"
    return None


def _mlp_kind(mlp: Any) -> str | None:
    """'mlp', 'swiglu_packed' (GluMlp, gate first), 'swiglu' (split fc1_g / fc1_x), or None."""
    from timm.layers import GluMlp, Mlp, SwiGLU

    if type(mlp) is Mlp:
        return "mlp"
    if type(mlp) is GluMlp and not mlp.gate_last and mlp.chunk_dim == -1:
        return "swiglu_packed"
    if type(mlp) is SwiGLU:
        return "swiglu"
    return None


def _mlp_in_features(mlp: Any) -> int:
    return mlp.fc2.in_features


def _mlp_problems(mlp: Any, where: str) -> list[str]:
    kind = _mlp_kind(mlp)
    if kind is None:
        return [f"{where}: MLP {type(mlp).__name__}"]
    found = []
    if _act_name(mlp.act) is None:
        found.append(f"{where}: activation {type(mlp.act).__name__}")
    if not _is_identity(getattr(mlp, "norm", None)):
        found.append(f"{where}: norm inside the MLP (scale_mlp_norm)")
    linears = [mlp.fc2] + ([mlp.fc1_g, mlp.fc1_x] if kind == "swiglu" else [mlp.fc1])
    if any(lin.bias is None for lin in linears):
        found.append(f"{where}: MLP without biases")
    return found


def matches(model: Any) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(model, VisionTransformer)


def unsupported(model: Any) -> list[str]:
    """Names of the features of this timm model that HookedViT cannot represent (empty when supported)."""
    from timm.layers import Attention as TimmAttention
    from timm.layers import LayerScale as TimmLayerScale
    from timm.layers import PatchEmbed
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, VisionTransformer

    found: list[str] = []
    if type(model) not in (VisionTransformer, VisionTransformerDistilled):
        found.append(f"subclass {type(model).__name__}")
    if isinstance(model, VisionTransformerDistilled) and model.distilled_training:
        found.append("distilled_training=True (the two heads' outputs are returned separately)")
    if model.global_pool not in ("token", "avg", "map", ""):
        found.append(f"global_pool={model.global_pool!r}")
    if model.global_pool == "token" and getattr(model, "cls_token", None) is None:
        found.append("class-token pooling without a class token")
    if model.global_pool == "" and not isinstance(model.head, nn.Identity):
        found.append("a head without pooling")
    if getattr(model, "pool_include_prefix", False) and model.num_prefix_tokens:
        found.append("pooling that includes prefix tokens (pool_include_prefix)")
    pool = getattr(model, "attn_pool", None)
    if pool is not None:
        found += _attn_pool_problems(model, pool)
    if not (_is_identity(model.fc_norm) or _is_layer_norm(model.fc_norm)):
        found.append(f"fc_norm {type(model.fc_norm).__name__}")
    if not (_is_identity(model.norm) or _is_layer_norm(model.norm)):
        found.append(f"final norm {type(model.norm).__name__} (only LayerNorm with bias)")
    if not _is_identity(model.norm) and not _is_identity(model.fc_norm):
        found.append("both a token norm and fc_norm")
    if not (_is_identity(model.norm_pre) or _is_layer_norm(model.norm_pre)):
        found.append(f"pre-norm {type(model.norm_pre).__name__}")
    if getattr(model, "rope", None) is not None:
        found.append("rotary position embeddings")
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
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if head is not None and not (
            isinstance(head, nn.Identity) or (isinstance(head, nn.Linear) and head.bias is not None)
        ):
            found.append(f"{name} {type(head).__name__} (only a Linear with bias, or none)")
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not Block:
            found.append(f"{where}: block type {type(blk).__name__} (e.g. parallel or post-norm blocks)")
            continue
        scales = [_is_identity(blk.ls1), _is_identity(blk.ls2)]
        if scales[0] != scales[1] or not all(_is_identity(s) or type(s) is TimmLayerScale for s in (blk.ls1, blk.ls2)):
            found.append(f"{where}: LayerScale on one sublayer only, or of type {type(blk.ls1).__name__}")
        if not (_is_layer_norm(blk.norm1) and _is_layer_norm(blk.norm2)):
            found.append(f"{where}: norm {type(blk.norm1).__name__} (only LayerNorm with bias)")
        attn = blk.attn
        if type(attn) is not TimmAttention:
            found.append(f"{where}: attention {type(attn).__name__}")
        else:
            if not (_is_identity(attn.q_norm) and _is_identity(attn.k_norm)) and not (
                _is_layer_norm(attn.q_norm) and _is_layer_norm(attn.k_norm)
            ):
                found.append(f"{where}: q/k norm {type(attn.q_norm).__name__}")
            if not _is_identity(attn.norm):
                found.append(f"{where}: attention output norm (scale_attn_norm)")
            if getattr(attn, "gate", None) is not None:
                found.append(f"{where}: gated attention")
            if attn.proj.bias is None:
                found.append(f"{where}: attention projection without bias")
        found += _mlp_problems(blk.mlp, where)
    return found


def _attn_pool_problems(model: Any, pool: Any) -> list[str]:
    from timm.layers import AttentionPoolLatent

    if type(pool) is not AttentionPoolLatent:
        return [f"attention pooling {type(pool).__name__}"]
    found = []
    if pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token":
        found.append("attention pooling with several latents or its own position embedding")
    if pool.mlp is None or not _is_layer_norm(pool.norm) or isinstance(pool.q, nn.Identity):
        found.append("attention pooling without its projection, norm or MLP")
    if not (_is_identity(pool.q_norm) and _is_identity(pool.k_norm)):
        found.append("attention pooling with q/k norm")
    if pool.num_heads != model.blocks[0].attn.num_heads or pool.kv.weight.shape[0] != 2 * model.embed_dim:
        found.append("attention pooling with other heads than the blocks")
    if pool.mlp is not None and pool.mlp.fc1.out_features != _mlp_in_features(model.blocks[0].mlp):
        found.append("attention pooling MLP of another width than the blocks'")
    return found


def _pool(model: Any) -> str:
    if getattr(model, "attn_pool", None) is not None:
        return "map"
    return {"token": "cls", "avg": "avg", "map": "map", "": "none"}[model.global_pool]


def config(model: Any) -> ViTConfig:
    """Architecture of a supported timm VisionTransformer."""
    block = model.blocks[0]
    mlp_kind = _mlp_kind(block.mlp)
    head = model.head
    final_norm = "tokens" if not _is_identity(model.norm) else "pooled" if not _is_identity(model.fc_norm) else "none"
    return ViTConfig(
        n_layers=len(model.blocks),
        n_heads=block.attn.num_heads,
        d_model=model.embed_dim,
        d_head=block.attn.head_dim,
        d_mlp=_mlp_in_features(block.mlp),
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        n_channels=model.patch_embed.proj.in_channels,
        n_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        ln_eps=block.norm1.eps,
        act_fn=_act_name(block.mlp.act),  # type: ignore[arg-type]
        qkv_bias=block.attn.qkv.bias is not None,
        pre_norm=not _is_identity(model.norm_pre),
        class_token=getattr(model, "cls_token", None) is not None,
        distill_token=getattr(model, "dist_token", None) is not None,
        n_register_tokens=int(getattr(model, "num_reg_tokens", 0) or 0),
        pos_embed=getattr(model, "pos_embed", None) is not None,
        pos_embed_prefix=0 if model.no_embed_class else None,
        pos_resample="bicubic_antialias",
        layer_scale=not _is_identity(block.ls1),
        gated_mlp=mlp_kind != "mlp",
        qk_norm=not _is_identity(block.attn.q_norm),
        pool=_pool(model),  # type: ignore[arg-type]
        final_norm=final_norm,  # type: ignore[arg-type]
    )


def _block_rules(cfg: ViTConfig, layer: int, keys: Collection[str]) -> KeyMap:
    s, t = f"blocks.{layer}.", f"blocks.{layer}."
    h = cfg.heads_in_layer(layer)
    rules = R.layer_norm(s + "norm1", t + "ln1") + R.layer_norm(s + "norm2", t + "ln2")
    rules += R.fused_heads(s + "attn.qkv", t + "attn", "QKV", cfg, h)
    rules += R.heads_out(s + "attn.proj", t + "attn", h)
    if cfg.qk_norm:
        rules += R.layer_norm(s + "attn.q_norm", t + "attn.q_norm") + R.layer_norm(s + "attn.k_norm", t + "attn.k_norm")
    if cfg.layer_scale:
        rules += [rule(s + "ls1.gamma", t + "attn.ls.gamma"), rule(s + "ls2.gamma", t + "mlp.ls.gamma")]
    if not cfg.gated_mlp:
        rules += R.linear(s + "mlp.fc1", t + "mlp.W_in", t + "mlp.b_in")
    elif s + "mlp.fc1_g.weight" in keys:  # SwiGLU with split projections
        rules += R.linear(s + "mlp.fc1_g", t + "mlp.W_gate", t + "mlp.b_gate")
        rules += R.linear(s + "mlp.fc1_x", t + "mlp.W_in", t + "mlp.b_in")
    else:  # GluMlp: fc1 packs [gate; linear]
        rules += [
            rule(s + "mlp.fc1.weight", [t + "mlp.W_gate", t + "mlp.W_in"], "(two m) d -> two d m", two=2),
            rule(s + "mlp.fc1.bias", [t + "mlp.b_gate", t + "mlp.b_in"], "(two m) -> two m", two=2),
        ]
    rules += R.linear(s + "mlp.fc2", t + "mlp.W_out", t + "mlp.b_out")
    return rules


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """timm VisionTransformer keys <-> HookedViT keys."""
    rules: KeyMap = R.patch_embed("patch_embed.proj.weight", "patch_embed.proj.bias", cfg)
    if cfg.class_token:
        rules.append(R.vector("cls_token", "cls_token.W_cls"))
    if cfg.distill_token:
        rules.append(R.vector("dist_token", "dist_token.W_dist"))
    if cfg.n_register_tokens:
        rules.append(R.rows("reg_token", "registers.W_reg"))
    if cfg.pos_embed:
        rules.append(R.rows("pos_embed", "pos_embed.W_pos"))
    if cfg.pre_norm:
        rules += R.layer_norm("norm_pre", "ln_pre")
    for layer in range(cfg.n_layers):
        rules += _block_rules(cfg, layer, keys)
    if cfg.final_norm == "tokens":
        rules += R.layer_norm("norm", "ln_final")
    elif cfg.final_norm == "pooled":
        rules += R.layer_norm("fc_norm", "fc_norm")
    if cfg.pool == "map":
        h = cfg.n_heads
        rules += [R.vector("attn_pool.latent", "pool.probe")]
        rules += R.heads_in("attn_pool.q", "Q", "pool", cfg, h)
        rules += [
            rule("attn_pool.kv.weight", ["pool.W_K", "pool.W_V"], "(two h e) d -> two h d e", two=2, h=h),
            rule("attn_pool.kv.bias", ["pool.b_K", "pool.b_V"], "(two h e) -> two h e", two=2, h=h),
        ]
        rules += R.heads_out("attn_pool.proj", "pool", h)
        rules += R.layer_norm("attn_pool.norm", "pool.ln")
        rules += R.linear("attn_pool.mlp.fc1", "pool.mlp.W_in", "pool.mlp.b_in")
        rules += R.linear("attn_pool.mlp.fc2", "pool.mlp.W_out", "pool.mlp.b_out")
    if cfg.has_classifier:
        rules += R.linear("head", "head.W_H", "head.b_H")
    if cfg.has_distill_head:
        rules += R.linear("head_dist", "head_dist.W_H", "head_dist.b_H")
    return rules


def preprocessing(model: Any, cfg: ViTConfig) -> Preprocessing:
    """The eval transform timm itself would build for this model (`resolve_data_config`), at cfg.image_size."""
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({}, model=model)
    if data_cfg["input_size"][-1] != cfg.image_size:
        logger.info("timm data config says %s; the model runs at %dpx", data_cfg["input_size"], cfg.image_size)
    crop_mode = data_cfg.get("crop_mode", "center")
    if crop_mode not in ("center", "squash"):
        logger.warning("timm crop_mode %r approximated by a centre crop", crop_mode)
    name = getattr(model, "pretrained_cfg", {}).get("tag") or getattr(model, "default_cfg", {}).get(
        "architecture", "timm"
    )
    return Preprocessing(
        image_size=cfg.image_size,
        mean=tuple(float(m) for m in data_cfg["mean"]),
        std=tuple(float(s) for s in data_cfg["std"]),
        interpolation=data_cfg.get("interpolation", "bicubic"),
        resize_mode="squash" if crop_mode == "squash" else "shortest_edge_crop",
        crop_pct=float(data_cfg.get("crop_pct", 1.0)),
        source=f"timm data config ({name})",
    )


def class_names(model: Any, cfg: ViTConfig) -> list[str] | None:
    """ImageNet class descriptions when the pretrained config names an ImageNet label set."""
    if not cfg.has_classifier:
        return None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i) for i in range(cfg.n_classes)]
        return names if len(names) == cfg.n_classes else None
    except Exception:  # label metadata is a convenience; never fail a port over it
        return None


FAMILY = Family(
    name="timm VisionTransformer",
    source="timm",
    matches=matches,
    unsupported=unsupported,
    config=config,
    key_map=key_map,
    preprocessing=preprocessing,
    class_names=class_names,
)
