"""timm `VisionTransformer` (and `VisionTransformerDistilled`): ViT, DeiT (distilled), DeiT III, DINOv2
(with registers), CLIP and SigLIP image towers, global-pool (MAE fine-tuned) ViTs.

Every difference between these is a constructor flag in timm and a config field here: prefix tokens
(`cls_token`, `dist_token`, `reg_token`), `no_embed_class`, LayerScale (`ls1`/`ls2`), qk-norm, SwiGLU
MLPs (packed `GluMlp` or split `SwiGLU`), pooling (`global_pool` token / avg / map, `fc_norm`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families import _timm
from vitmech.loading.families._modules import is_identity, is_layer_norm
from vitmech.loading.families._timm import class_names as class_names  # from pretrained_cfg, as every timm family
from vitmech.loading.families._timm import preprocessing as preprocessing
from vitmech.loading.keymap import KeyMap, rule

NAME = "timm VisionTransformer"
SOURCE = "timm"


def matches(model: Any) -> bool:
    from timm.models.vision_transformer import VisionTransformer  # timm is a dependency of vitmech

    return isinstance(model, VisionTransformer)


def unsupported(model: Any) -> list[str]:
    """Names of the features of this timm model that HookedViT cannot represent (empty when supported)."""
    from timm.layers import Attention as TimmAttention
    from timm.layers import LayerScale as TimmLayerScale
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
    found += _timm.output_norm_problems(model)
    if not (is_identity(model.norm_pre) or is_layer_norm(model.norm_pre)):
        found.append(f"pre-norm {type(model.norm_pre).__name__}")
    if getattr(model, "rope", None) is not None:
        found.append("rotary position embeddings")
    found += _timm.patch_embed_problems(model.patch_embed)
    found += _timm.head_problems(model, ("head", "head_dist"))
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not Block:
            found.append(f"{where}: block type {type(blk).__name__} (e.g. parallel or post-norm blocks)")
            continue
        scales = [is_identity(blk.ls1), is_identity(blk.ls2)]
        if scales[0] != scales[1] or not all(is_identity(s) or type(s) is TimmLayerScale for s in (blk.ls1, blk.ls2)):
            found.append(f"{where}: LayerScale on one sublayer only, or of type {type(blk.ls1).__name__}")
        if type(blk.attn) is not TimmAttention:
            found.append(f"{where}: attention {type(blk.attn).__name__}")
        else:
            found += _timm.block_problems(blk, where, "scale_attn_norm")
        found += _timm.mlp_problems(blk.mlp, where)
    return found


def _attn_pool_problems(model: Any, pool: Any) -> list[str]:
    from timm.layers import AttentionPoolLatent

    if type(pool) is not AttentionPoolLatent:
        return [f"attention pooling {type(pool).__name__}"]
    found = []
    if pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token":
        found.append("attention pooling with several latents or its own position embedding")
    if pool.mlp is None or not is_layer_norm(pool.norm) or isinstance(pool.q, nn.Identity):
        found.append("attention pooling without its projection, norm or MLP")
    if not (is_identity(pool.q_norm) and is_identity(pool.k_norm)):
        found.append("attention pooling with q/k norm")
    if pool.num_heads != model.blocks[0].attn.num_heads or pool.kv.weight.shape[0] != 2 * model.embed_dim:
        found.append("attention pooling with other heads than the blocks")
    if pool.mlp is not None and pool.mlp.fc1.out_features != model.blocks[0].mlp.fc2.in_features:
        found.append("attention pooling MLP of another width than the blocks'")
    return found


def _pool(model: Any) -> str:
    if getattr(model, "attn_pool", None) is not None:
        return "map"
    return {"token": "cls", "avg": "avg", "map": "map", "": "none"}[model.global_pool]


def config(model: Any) -> ViTConfig:
    """Architecture of a supported timm VisionTransformer."""
    block = model.blocks[0]
    return ViTConfig(
        **_timm.common_config(model),
        qkv_bias=block.attn.qkv.bias is not None,
        pre_norm=not is_identity(model.norm_pre),
        distill_token=getattr(model, "dist_token", None) is not None,
        n_register_tokens=int(getattr(model, "num_reg_tokens", 0) or 0),
        pos_embed_prefix=0 if model.no_embed_class else None,
        layer_scale=not is_identity(block.ls1),
        pool=_pool(model),  # type: ignore[arg-type]
    )


def _block_rules(cfg: ViTConfig, layer: int, keys: Collection[str]) -> KeyMap:
    s = t = f"blocks.{layer}."
    h = cfg.heads_in_layer(layer)
    rules = _timm.norm_rules(cfg, s, t)
    rules += R.fused_heads(s + "attn.qkv", t + "attn", "QKV", cfg, h)
    return rules + _timm.block_output_rules(cfg, s, t, h, keys, layer_scale=("ls1.gamma", "ls2.gamma"))


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """timm VisionTransformer keys <-> HookedViT keys."""
    rules = _timm.token_rules(cfg)
    if cfg.pre_norm:
        rules += R.layer_norm("norm_pre", "ln_pre")
    for layer in range(cfg.n_layers):
        rules += _block_rules(cfg, layer, keys)
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
    return rules + _timm.output_rules(cfg)
