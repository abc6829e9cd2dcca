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
from vitmech.loading.families import timm_vit
from vitmech.loading.families.base import Family
from vitmech.loading.keymap import KeyMap, optional, rule


def matches(model: Any) -> bool:
    try:
        from timm.models.eva import Eva
    except ImportError:
        return False
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
    from timm.layers import PatchEmbed
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
    if not (timm_vit._is_identity(model.fc_norm) or timm_vit._is_layer_norm(model.fc_norm)):
        found.append(f"fc_norm {type(model.fc_norm).__name__}")
    if not (timm_vit._is_identity(model.norm) or timm_vit._is_layer_norm(model.norm)):
        found.append(f"final norm {type(model.norm).__name__} (only LayerNorm with bias)")
    if not timm_vit._is_identity(model.norm) and not timm_vit._is_identity(model.fc_norm):
        found.append("both a token norm and fc_norm")
    if not timm_vit._is_identity(model.norm_pre):
        found.append("pre-norm (use_pre_transformer_norm)")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.proj, nn.Conv2d):
        found.append(f"patch embedding {type(pe).__name__}")
    else:
        if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.kernel_size[0] != pe.proj.kernel_size[1]:
            found.append("overlapping or non-square patches")
        if not timm_vit._is_identity(getattr(pe, "norm", None)):
            found.append("norm inside the patch embedding")
        if getattr(pe, "dynamic_img_pad", False):
            found.append("dynamic image padding")
        if pe.img_size is None or pe.img_size[0] != pe.img_size[1]:
            found.append(f"non-square or dynamic image size {pe.img_size}")
    head = model.head
    if not (isinstance(head, nn.Identity) or (isinstance(head, nn.Linear) and head.bias is not None)):
        found.append(f"head {type(head).__name__} (only a Linear with bias, or none)")
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not EvaBlock:
            found.append(f"{where}: block type {type(blk).__name__} (e.g. post-norm blocks)")
            continue
        if (blk.gamma_1 is None) != (blk.gamma_2 is None):
            found.append(f"{where}: LayerScale on one sublayer only")
        if not (timm_vit._is_layer_norm(blk.norm1) and timm_vit._is_layer_norm(blk.norm2)):
            found.append(f"{where}: norm {type(blk.norm1).__name__} (only LayerNorm with bias)")
        attn: Any = blk.attn
        if type(attn) is not EvaAttention:
            found.append(f"{where}: attention {type(attn).__name__}")
        else:
            if not (timm_vit._is_identity(attn.q_norm) and timm_vit._is_identity(attn.k_norm)) and not (
                timm_vit._is_layer_norm(attn.q_norm) and timm_vit._is_layer_norm(attn.k_norm)
            ):
                found.append(f"{where}: q/k norm {type(attn.q_norm).__name__}")
            if not timm_vit._is_identity(attn.norm):
                found.append(f"{where}: attention output norm (scale_attn_inner)")
            if attn.gate is not None:
                found.append(f"{where}: gated attention")
            if attn.proj.bias is None:
                found.append(f"{where}: attention projection without bias")
            if attn.num_prefix_tokens != model.num_prefix_tokens:
                found.append(f"{where}: rotary prefix count differs from the model's prefix tokens")
        found += _mlp_problems(blk.mlp, where)
    return found


def _mlp_problems(mlp: Any, where: str) -> list[str]:
    from timm.layers import SwiGLU

    norm = getattr(mlp, "norm", None)
    if type(mlp) is SwiGLU and not timm_vit._is_identity(norm):
        if not timm_vit._is_layer_norm(norm):
            return [f"{where}: MLP norm {type(norm).__name__} (only LayerNorm with bias)"]
        found = []
        if timm_vit._act_name(mlp.act) is None:
            found.append(f"{where}: activation {type(mlp.act).__name__}")
        if any(lin.bias is None for lin in (mlp.fc1_g, mlp.fc1_x, mlp.fc2)):
            found.append(f"{where}: MLP without biases")
        return found
    return timm_vit._mlp_problems(mlp, where)


def _has_mlp_norm(mlp: Any) -> bool:
    return not timm_vit._is_identity(getattr(mlp, "norm", None))


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
    mlp_kind = timm_vit._mlp_kind(block.mlp)
    head = model.head
    norm_tokens = not timm_vit._is_identity(model.norm)
    final_norm = "tokens" if norm_tokens else "pooled" if not timm_vit._is_identity(model.fc_norm) else "none"
    has_prefix_pos = model.pos_embed is not None and not model.no_embed_class
    return ViTConfig(
        n_layers=len(model.blocks),
        n_heads=block.attn.num_heads,
        d_model=model.embed_dim,
        d_head=block.attn.head_dim,
        d_mlp=timm_vit._mlp_in_features(block.mlp),
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        n_channels=model.patch_embed.proj.in_channels,
        n_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        ln_eps=block.norm1.eps,
        act_fn=timm_vit._act_name(block.mlp.act),  # type: ignore[arg-type]
        qkv_bias=(block.attn.q_bias if block.attn.qkv is not None else block.attn.q_proj.bias) is not None,
        class_token=model.cls_token is not None,
        n_register_tokens=0 if model.reg_token is None else model.reg_token.shape[1],
        pos_embed=model.pos_embed is not None,
        pos_embed_prefix=None if has_prefix_pos else 0,
        pos_resample="bicubic_antialias",
        layer_scale=block.gamma_1 is not None,
        gated_mlp=mlp_kind != "mlp",
        mlp_norm=_has_mlp_norm(block.mlp),
        qk_norm=not timm_vit._is_identity(block.attn.q_norm),
        pool={"token": "cls", "avg": "avg", "": "none"}[model.global_pool],  # type: ignore[arg-type]
        final_norm=final_norm,  # type: ignore[arg-type]
        **_rope_fields(model),
    )


def _block_rules(cfg: ViTConfig, layer: int, keys: Collection[str]) -> KeyMap:
    s = t = f"blocks.{layer}."
    h = cfg.heads_in_layer(layer)
    rules = R.layer_norm(s + "norm1", t + "ln1") + R.layer_norm(s + "norm2", t + "ln2")
    if s + "attn.qkv.weight" in keys:  # fused weight, separate q/v biases (the key bias is a fixed zero buffer)
        qkv = rule(s + "attn.qkv.weight", [t + f"attn.W_{c}" for c in "QKV"], "(n h e) d -> n h d e", n=3, h=h)
        rules.append(qkv)
        for c, src in (("Q", "q_bias"), ("K", "k_bias"), ("V", "v_bias")):
            rules.append(optional(rule(s + f"attn.{src}", t + f"attn.b_{c}", "(h e) -> h e", h=h), (h, cfg.d_head)))
    else:  # qkv_fused=False: q_proj, k_proj (never a bias), v_proj
        for c in "QKV":
            rules += R.heads_in(s + f"attn.{c.lower()}_proj", c, t + "attn", cfg, h, bias=None)
    rules += R.heads_out(s + "attn.proj", t + "attn", h)
    if cfg.qk_norm:
        rules += R.layer_norm(s + "attn.q_norm", t + "attn.q_norm") + R.layer_norm(s + "attn.k_norm", t + "attn.k_norm")
    if cfg.layer_scale:
        rules += [rule(s + "gamma_1", t + "attn.ls.gamma"), rule(s + "gamma_2", t + "mlp.ls.gamma")]
    if not cfg.gated_mlp:
        rules += R.linear(s + "mlp.fc1", t + "mlp.W_in", t + "mlp.b_in")
    elif s + "mlp.fc1_g.weight" in keys:  # SwiGLU with split projections (EVA-02 base/large, DINOv3 large+)
        rules += R.linear(s + "mlp.fc1_g", t + "mlp.W_gate", t + "mlp.b_gate")
        rules += R.linear(s + "mlp.fc1_x", t + "mlp.W_in", t + "mlp.b_in")
    else:  # GluMlp: fc1 packs [gate; linear]
        rules += [
            rule(s + "mlp.fc1.weight", [t + "mlp.W_gate", t + "mlp.W_in"], "(two m) d -> two d m", two=2),
            rule(s + "mlp.fc1.bias", [t + "mlp.b_gate", t + "mlp.b_in"], "(two m) -> two m", two=2),
        ]
    if cfg.mlp_norm:
        rules += R.layer_norm(s + "mlp.norm", t + "mlp.hidden_norm")
    rules += R.linear(s + "mlp.fc2", t + "mlp.W_out", t + "mlp.b_out")
    return rules


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    """timm Eva keys <-> HookedViT keys."""
    rules: KeyMap = R.patch_embed("patch_embed.proj.weight", "patch_embed.proj.bias", cfg)
    if cfg.class_token:
        rules.append(R.vector("cls_token", "cls_token.W_cls"))
    if cfg.n_register_tokens:
        rules.append(R.rows("reg_token", "registers.W_reg"))
    if cfg.pos_embed:
        rules.append(R.rows("pos_embed", "pos_embed.W_pos"))
    for layer in range(cfg.n_layers):
        rules += _block_rules(cfg, layer, keys)
    if cfg.final_norm == "tokens":
        rules += R.layer_norm("norm", "ln_final")
    elif cfg.final_norm == "pooled":
        rules += R.layer_norm("fc_norm", "fc_norm")
    if cfg.has_classifier:
        rules += R.linear("head", "head.W_H", "head.b_H")
    return rules


FAMILY = Family(
    name="timm Eva (EVA-02, DINOv3)",
    source="timm",
    matches=matches,
    unsupported=unsupported,
    config=config,
    key_map=key_map,
    preprocessing=timm_vit.preprocessing,
    class_names=timm_vit.class_names,
)
