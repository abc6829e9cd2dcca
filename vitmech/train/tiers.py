"""Three fine-tuning tiers (linear probe; LoRA, Hu et al. 2021, arXiv 2106.09685; full, as LP-FT, Kumar et al.
2022, arXiv 2202.10054), as parameter groups for AdamW.

- "linear_probe": only the head trains; the backbone is frozen (bit-identical afterwards).
- "lora": rank-r adapters on query and value (by default) plus the head; base weights frozen.
- "full": everything trains, the backbone at `backbone_lr`, the head at `head_lr` (differential rates).

Weight decay applies to matrices (and adapters), not to biases, LayerNorm gains, the CLS token or
position embeddings (the usual ViT recipe).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn

from vitmech.errors import HeadMismatchError, InputError
from vitmech.model.hooked_vit import HookedViT
from vitmech.train.lora import LoRAConfig, apply_lora, lora_parameters

Tier = Literal["linear_probe", "lora", "full"]
TIERS: tuple[str, ...] = ("linear_probe", "lora", "full")
_NO_DECAY_LEAVES = ("W_pos", "W_cls")


@dataclass(frozen=True)
class TierConfig:
    """Which parameters train and at what learning rate.

    Attributes:
        tier: "linear_probe", "lora" or "full".
        head_lr: learning rate of the head (every tier).
        backbone_lr: learning rate of the backbone ("full") or of the adapters ("lora").
        weight_decay: AdamW decoupled weight decay on matrices.
        lora: adapter shape ("lora" tier only).
    """

    tier: Tier = "full"
    head_lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 0.05
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise InputError(f"tier must be one of {TIERS}, got {self.tier!r}")
        for name in ("head_lr", "backbone_lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict() if self.tier == "lora" else None
        if self.tier == "linear_probe":
            d.pop("backbone_lr")
        return d


def _decays(name: str, param: nn.Parameter) -> bool:
    """Weight matrices (W_*, but not W_pos / W_cls) and LoRA adapters decay; biases (b_Q is [H, d_head]:
    2-D but a bias) and LayerNorm parameters do not."""
    leaf = name.rsplit(".", 1)[-1]
    if ".lora_A." in name or ".lora_B." in name:
        return True
    return leaf.startswith("W_") and leaf not in _NO_DECAY_LEAVES


def _groups(named: list[tuple[str, nn.Parameter]], label: str, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in named if _decays(n, p)]
    plain = [p for n, p in named if not _decays(n, p)]
    out = []
    if decay:
        out.append({"name": label, "params": decay, "lr": lr, "weight_decay": weight_decay})
    if plain:
        out.append({"name": f"{label}_no_decay", "params": plain, "lr": lr, "weight_decay": 0.0})
    return out


def prepare_tier(model: HookedViT, config: TierConfig, seed: int = 0) -> list[dict[str, Any]]:
    """Set `requires_grad` for the tier (attaching LoRA adapters in place for "lora") and return
    AdamW parameter groups, each with a "name" ("head", "backbone", "lora", + "_no_decay") and its "lr"."""
    if not model.cfg.has_classifier:
        raise HeadMismatchError("the model has no head; give it one first with vitmech.train.with_new_head")
    if config.tier == "lora":
        apply_lora(model, config.lora, seed=seed)
    adapters = {id(p) for p in lora_parameters(model)}
    head, backbone, lora = [], [], []
    for name, param in model.named_parameters():
        if name.startswith("head."):
            head.append((name, param))
        elif id(param) in adapters:
            lora.append((name, param))
        else:
            backbone.append((name, param))
    trainable = {id(p) for _, p in head}
    groups = _groups(head, "head", config.head_lr, config.weight_decay)
    if config.tier == "full":
        groups += _groups(backbone, "backbone", config.backbone_lr, config.weight_decay)
        trainable |= {id(p) for _, p in backbone}
    elif config.tier == "lora":
        groups += _groups(lora, "lora", config.backbone_lr, config.weight_decay)
        trainable |= {id(p) for _, p in lora}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    return groups


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["TIERS", "Tier", "TierConfig", "prepare_tier", "trainable_parameter_count"]
