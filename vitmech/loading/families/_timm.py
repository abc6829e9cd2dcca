"""What the timm families share (`VisionTransformer` in `timm_vit`, `Eva` in `timm_eva`): module checks, the
config fields read the same way, the key rules of the token embeddings, the MLP and the output, and timm's
own preprocessing and class names."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from torch import nn

from vitmech.config import ViTConfig
from vitmech.loading.families import _rules as R
from vitmech.loading.families._modules import act_name, is_identity, is_layer_norm
from vitmech.loading.keymap import KeyMap, rule
from vitmech.preprocessing import Preprocessing

logger = logging.getLogger(__name__)


def mlp_kind(mlp: Any) -> str | None:
    """'mlp', 'swiglu_packed' (GluMlp, gate first), 'swiglu' (split fc1_g / fc1_x), or None."""
    from timm.layers import GluMlp, Mlp, SwiGLU

    if type(mlp) is Mlp:
        return "mlp"
    if type(mlp) is GluMlp and not mlp.gate_last and mlp.chunk_dim == -1:
        return "swiglu_packed"
    if type(mlp) is SwiGLU:
        return "swiglu"
    return None


def mlp_problems(mlp: Any, where: str, allow_norm: bool = False) -> list[str]:
    """An Mlp, GluMlp or SwiGLU with a supported activation and biases; a LayerNorm on its hidden
    activations only when `allow_norm` (Eva's SwiGLU)."""
    kind = mlp_kind(mlp)
    if kind is None:
        return [f"{where}: MLP {type(mlp).__name__}"]
    found = []
    if act_name(mlp.act) is None:
        found.append(f"{where}: activation {type(mlp.act).__name__}")
    norm = getattr(mlp, "norm", None)
    if not is_identity(norm) and not (allow_norm and kind == "swiglu"):
        found.append(f"{where}: norm inside the MLP (scale_mlp_norm)")
    elif not is_identity(norm) and not is_layer_norm(norm):
        found.append(f"{where}: MLP norm {type(norm).__name__} (only LayerNorm with bias)")
    linears = [mlp.fc2] + ([mlp.fc1_g, mlp.fc1_x] if kind == "swiglu" else [mlp.fc1])
    if any(lin.bias is None for lin in linears):
        found.append(f"{where}: MLP without biases")
    return found


def output_norm_problems(model: Any) -> list[str]:
    """The final token norm and fc_norm: each a LayerNorm with bias or absent, not both."""
    found = []
    if not (is_identity(model.fc_norm) or is_layer_norm(model.fc_norm)):
        found.append(f"fc_norm {type(model.fc_norm).__name__}")
    if not (is_identity(model.norm) or is_layer_norm(model.norm)):
        found.append(f"final norm {type(model.norm).__name__} (only LayerNorm with bias)")
    if not is_identity(model.norm) and not is_identity(model.fc_norm):
        found.append("both a token norm and fc_norm")
    return found


def patch_embed_problems(pe: Any) -> list[str]:
    """A plain stride-p convolution on a fixed square image."""
    from timm.layers import PatchEmbed

    if type(pe) is not PatchEmbed or not isinstance(pe.proj, nn.Conv2d):
        return [f"patch embedding {type(pe).__name__}"]
    found = []
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.kernel_size[0] != pe.proj.kernel_size[1]:
        found.append("overlapping or non-square patches")
    if not is_identity(getattr(pe, "norm", None)):
        found.append("norm inside the patch embedding")
    if getattr(pe, "dynamic_img_pad", False):
        found.append("dynamic image padding")
    if pe.img_size is None or pe.img_size[0] != pe.img_size[1]:
        found.append(f"non-square or dynamic image size {pe.img_size}")
    return found


def head_problems(model: Any, names: tuple[str, ...] = ("head",)) -> list[str]:
    found = []
    for name in names:
        head = getattr(model, name, None)
        if head is not None and not (
            isinstance(head, nn.Identity) or (isinstance(head, nn.Linear) and head.bias is not None)
        ):
            found.append(f"{name} {type(head).__name__} (only a Linear with bias, or none)")
    return found


def block_problems(blk: Any, where: str, output_norm_flag: str) -> list[str]:
    """A block's norms and attention (q/k norm, no output norm `output_norm_flag` names, no gate, a biased
    projection); the caller checks the block, attention and LayerScale types."""
    found = []
    if not (is_layer_norm(blk.norm1) and is_layer_norm(blk.norm2)):
        found.append(f"{where}: norm {type(blk.norm1).__name__} (only LayerNorm with bias)")
    attn = blk.attn
    if not (is_identity(attn.q_norm) and is_identity(attn.k_norm)) and not (
        is_layer_norm(attn.q_norm) and is_layer_norm(attn.k_norm)
    ):
        found.append(f"{where}: q/k norm {type(attn.q_norm).__name__}")
    if not is_identity(attn.norm):
        found.append(f"{where}: attention output norm ({output_norm_flag})")
    if getattr(attn, "gate", None) is not None:
        found.append(f"{where}: gated attention")
    if attn.proj.bias is None:
        found.append(f"{where}: attention projection without bias")
    return found


def common_config(model: Any) -> dict[str, Any]:
    """The ViTConfig fields both timm classes give the same way."""
    block = model.blocks[0]
    head = model.head
    final_norm = "tokens" if not is_identity(model.norm) else "pooled" if not is_identity(model.fc_norm) else "none"
    return dict(
        n_layers=len(model.blocks),
        n_heads=block.attn.num_heads,
        d_model=model.embed_dim,
        d_head=block.attn.head_dim,
        d_mlp=block.mlp.fc2.in_features,
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        n_channels=model.patch_embed.proj.in_channels,
        n_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        ln_eps=block.norm1.eps,
        act_fn=act_name(block.mlp.act),
        class_token=getattr(model, "cls_token", None) is not None,
        pos_embed=getattr(model, "pos_embed", None) is not None,
        pos_resample="bicubic_antialias",
        gated_mlp=mlp_kind(block.mlp) != "mlp",
        qk_norm=not is_identity(block.attn.q_norm),
        final_norm=final_norm,
    )


def token_rules(cfg: ViTConfig) -> KeyMap:
    """Patch embedding, class / distillation / register tokens and position embeddings (timm names)."""
    rules: KeyMap = R.patch_embed("patch_embed.proj.weight", "patch_embed.proj.bias", cfg)
    if cfg.class_token:
        rules.append(R.vector("cls_token", "cls_token.W_cls"))
    if cfg.distill_token:
        rules.append(R.vector("dist_token", "dist_token.W_dist"))
    if cfg.n_register_tokens:
        rules.append(R.rows("reg_token", "registers.W_reg"))
    if cfg.pos_embed:
        rules.append(R.rows("pos_embed", "pos_embed.W_pos"))
    return rules


def norm_rules(cfg: ViTConfig, s: str, t: str) -> KeyMap:
    """A block's two LayerNorms and, with qk-norm, its query / key norms."""
    rules = R.layer_norm(s + "norm1", t + "ln1") + R.layer_norm(s + "norm2", t + "ln2")
    if cfg.qk_norm:
        rules += R.layer_norm(s + "attn.q_norm", t + "attn.q_norm") + R.layer_norm(s + "attn.k_norm", t + "attn.k_norm")
    return rules


def mlp_rules(cfg: ViTConfig, s: str, t: str, keys: Collection[str]) -> KeyMap:
    """Mlp (fc1), SwiGLU (split fc1_g / fc1_x) or GluMlp (fc1 packs [gate; linear]), its hidden norm, fc2."""
    if not cfg.gated_mlp:
        rules = R.linear(s + "mlp.fc1", t + "mlp.W_in", t + "mlp.b_in")
    elif s + "mlp.fc1_g.weight" in keys:
        rules = R.linear(s + "mlp.fc1_g", t + "mlp.W_gate", t + "mlp.b_gate")
        rules += R.linear(s + "mlp.fc1_x", t + "mlp.W_in", t + "mlp.b_in")
    else:
        rules = [
            rule(s + "mlp.fc1.weight", [t + "mlp.W_gate", t + "mlp.W_in"], "(two m) d -> two d m", two=2),
            rule(s + "mlp.fc1.bias", [t + "mlp.b_gate", t + "mlp.b_in"], "(two m) -> two m", two=2),
        ]
    if cfg.mlp_norm:
        rules += R.layer_norm(s + "mlp.norm", t + "mlp.hidden_norm")
    return rules + R.linear(s + "mlp.fc2", t + "mlp.W_out", t + "mlp.b_out")


def block_output_rules(
    cfg: ViTConfig, s: str, t: str, h: int, keys: Collection[str], layer_scale: tuple[str, str]
) -> KeyMap:
    """A block's rules after its Q/K/V: the attention output projection (h heads), LayerScale (the source's
    two gamma names, relative to the block prefix s) and the MLP (`mlp_rules`)."""
    rules = R.heads_out(s + "attn.proj", t + "attn", h)
    if cfg.layer_scale:
        rules += [rule(s + layer_scale[0], t + "attn.ls.gamma"), rule(s + layer_scale[1], t + "mlp.ls.gamma")]
    return rules + mlp_rules(cfg, s, t, keys)


def output_rules(cfg: ViTConfig) -> KeyMap:
    """The final token norm or fc_norm, and the classifier head(s)."""
    rules: KeyMap = []
    if cfg.final_norm == "tokens":
        rules += R.layer_norm("norm", "ln_final")
    elif cfg.final_norm == "pooled":
        rules += R.layer_norm("fc_norm", "fc_norm")
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
