"""open_clip `VisionTransformer` image towers (CLIP and its open re-trainings; Cherti et al. 2023,
arXiv:2212.07143): class embedding, `ln_pre`, `torch.nn.MultiheadAttention` blocks (`in_proj`), optional
LayerScale (`ls_1`/`ls_2`), `ln_post` on every token (or, `final_ln_after_pool`, on the pooled vector),
class or average pooling, and the bias-free `proj` to the image embedding.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families._modules import act_name, is_layer_norm
from vitmech.loading.families.hf_clip import CLIP_MEAN, CLIP_STD
from vitmech.loading.keymap import KeyMap, prefixed, rule
from vitmech.preprocessing import Preprocessing

NAME = "open_clip VisionTransformer"
SOURCE = "open_clip"


def _tower(model: Any) -> Any:
    """The image tower of an open_clip CLIP model, or the tower itself."""
    return getattr(model, "visual", model)


def matches(model: Any) -> bool:
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(_tower(model), VisionTransformer)


def unsupported(model: Any) -> list[str]:
    tower = _tower(model)
    found: list[str] = []
    if tower.attn_pool is not None:
        found.append("attentional pooler (CoCa)")
    if tower.pool_type not in ("tok", "avg"):
        found.append(f"pool_type={tower.pool_type!r}")
    if not isinstance(tower.positional_embedding, nn.Parameter):
        found.append("position embeddings that are not learned")
    if not (is_layer_norm(tower.ln_pre) or isinstance(tower.ln_pre, nn.Identity)) or not is_layer_norm(tower.ln_post):
        found.append("norms other than LayerNorm with bias")
    if tower.conv1.bias is not None or tuple(tower.conv1.kernel_size) != tuple(tower.conv1.stride):
        found.append("overlapping patches or a patch bias")
    for i, block in enumerate(tower.transformer.resblocks):
        where = f"transformer.resblocks.{i}"
        if type(block.attn) is not nn.MultiheadAttention:
            found.append(f"{where}: attention {type(block.attn).__name__} (qk-norm / scaled cosine / scaled heads)")
        elif block.attn.in_proj_bias is None:
            found.append(f"{where}: attention without biases")
        if hasattr(block, "ln_1_kv") or not isinstance(getattr(block.mlp, "ln", nn.Identity()), nn.Identity):
            found.append(f"{where}: extra norms (scale_fc / cross-attention)")
        if isinstance(block.ls_1, nn.Identity) != isinstance(block.ls_2, nn.Identity):
            found.append(f"{where}: LayerScale on one sublayer only")
        if act_name(block.mlp.gelu) is None:
            found.append(f"{where}: activation {type(block.mlp.gelu).__name__}")
    return found


def config(model: Any) -> ViTConfig:
    tower = _tower(model)
    block = tower.transformer.resblocks[0]
    proj = tower.proj
    return ViTConfig(
        n_layers=len(tower.transformer.resblocks),
        n_heads=block.attn.num_heads,
        d_model=tower.class_embedding.shape[-1],
        d_head=block.attn.head_dim,
        d_mlp=block.mlp.c_fc.out_features,
        image_size=tower.image_size[0],
        patch_size=tower.patch_size[0],
        n_channels=tower.conv1.in_channels,
        n_classes=0,
        ln_eps=block.ln_1.eps,
        act_fn=act_name(block.mlp.gelu),  # type: ignore[arg-type]
        pre_norm=not isinstance(tower.ln_pre, nn.Identity),
        pos_resample="bicubic_antialias",
        layer_scale=not isinstance(block.ls_1, nn.Identity),
        pool="cls" if tower.pool_type == "tok" else "avg",
        final_norm="pooled" if tower.final_ln_after_pool else "tokens",
        projection_dim=proj.shape[1] if proj is not None else 0,
    )


def key_map(cfg: ViTConfig, keys: Collection[str]) -> KeyMap:
    prefix = "visual." if any(k.startswith("visual.") for k in keys) else ""
    rules: KeyMap = R.patch_embed("conv1.weight", "conv1.bias", cfg)
    rules.append(R.vector("class_embedding", "cls_token.W_cls", unit_axes=0))
    rules.append(R.rows("positional_embedding", "pos_embed.W_pos", unit_axes=0))
    if cfg.pre_norm:
        rules += R.layer_norm("ln_pre", "ln_pre")
    for layer in range(cfg.n_layers):
        s, t, h = f"transformer.resblocks.{layer}.", f"blocks.{layer}.", cfg.heads_in_layer(layer)
        rules += R.fused_heads(s + "attn.in_proj", t + "attn", "QKV", cfg, h, weight="_weight", bias="_bias")
        rules += R.heads_out(s + "attn.out_proj", t + "attn", h)
        rules += R.layer_norm(s + "ln_1", t + "ln1") + R.layer_norm(s + "ln_2", t + "ln2")
        if cfg.layer_scale:
            rules += [rule(s + "ls_1.gamma", t + "attn.ls.gamma"), rule(s + "ls_2.gamma", t + "mlp.ls.gamma")]
        rules += R.linear(s + "mlp.c_fc", t + "mlp.W_in", t + "mlp.b_in")
        rules += R.linear(s + "mlp.c_proj", t + "mlp.W_out", t + "mlp.b_out")
    rules += R.layer_norm("ln_post", "ln_final" if cfg.final_norm == "tokens" else "fc_norm")
    if cfg.projection_dim:
        rules.append(rule("proj", "proj.W_proj"))
    return prefixed(rules, prefix)


def preprocessing(model: Any, cfg: ViTConfig) -> Preprocessing:
    tower = _tower(model)
    mean = tuple(float(m) for m in getattr(tower, "image_mean", None) or CLIP_MEAN)
    std = tuple(float(s) for s in getattr(tower, "image_std", None) or CLIP_STD)
    return Preprocessing(
        image_size=cfg.image_size,
        mean=mean,
        std=std,
        interpolation="bicubic",
        resize_mode="shortest_edge_crop",
        crop_pct=1.0,
        source="open_clip image transform defaults",
    )
