"""Native LoRA (Hu et al. 2021) on a HookedViT's query/key/value weights, with merge back into plain weights.

For a target t in {"q", "k", "v"} of a block, the projection becomes

    t(x) = x @ W_t + b_t + scaling * (dropout(x) @ A_t) @ B_t,   scaling = alpha / rank,

with A_t [d_model, rank] (kaiming-uniform, bound 1/sqrt(d_model), seeded) and B_t [rank, H * d_head]
(zeros, so the adapted model starts equal to the base). The output columns are ordered (head, d_head),
so `rearrange(A @ B, "d (h e) -> h d e")` is the update of the TransformerLens weight W_t [H, d_model, d_head].
This is peft's LoRA on a HF ViT's `query`/`value` Linear layers (its A is our A transposed, its B our B
transposed), on the same weights; `merge_lora` folds the update into W_t, after which the model is a
plain HookedViT again (same state-dict keys, exports to timm/HF).

While adapters are attached, `model.W_Q` etc. show the *base* weights and the forward pass uses base +
update; merge before weight-based analyses (activation-based ones see the adapted model either way).
Hook names are unchanged: the adapted attention keeps the original module path and hook points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from vitmech.errors import InputError
from vitmech.model.attention import Attention
from vitmech.model.hooked_vit import HookedViT

TARGETS = ("q", "k", "v")


@dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (scaling = alpha / r), dropout on the adapter input, targets among q/k/v, layers (None: all)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise InputError(f"LoRA rank must be a positive int, got {self.rank!r}")
        if not self.alpha > 0:
            raise InputError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = tuple(self.targets)
        if not targets or any(t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
            raise InputError(f"LoRA targets must be distinct names among {TARGETS}, got {self.targets!r}")
        object.__setattr__(self, "targets", targets)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


class LoRAAttention(Attention):
    """An Attention whose q/k/v projections carry low-rank adapters.

    Built around an existing Attention: it takes over that module's parameters and hook points (no
    copies), so the base weights keep their state-dict keys and hooks their names.
    Adapter parameters: `lora_A[t]` [d_model, rank], `lora_B[t]` [rank, n_heads * d_head].
    """

    def __init__(self, base: Attention, config: LoRAConfig, generator: torch.Generator | None = None) -> None:
        nn.Module.__init__(self)  # not Attention.__init__: the base's parameters and hooks are reused
        self.n_heads, self.d_head = base.n_heads, base.d_head
        for name, param in base.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, child in base.named_children():
            self.add_module(name, child)
        for name in ("q_norm", "k_norm", "ls", "rotary"):  # optional parts the base was built without (None)
            if name not in self._modules:
                setattr(self, name, getattr(base, name, None))
        self.force_explicit = base.force_explicit
        self.lora_config = config
        d_model = base.W_Q.shape[1]
        out = self.n_heads * self.d_head
        bound = d_model**-0.5
        device, dtype = base.W_Q.device, base.W_Q.dtype
        self.lora_A = nn.ParameterDict(
            {
                t: nn.Parameter(
                    (torch.rand(d_model, config.rank, generator=generator) * 2 - 1).mul_(bound).to(device, dtype)
                )
                for t in config.targets
            }
        )
        self.lora_B = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(config.rank, out, device=device, dtype=dtype)) for t in config.targets}
        )
        self.lora_dropout = nn.Dropout(config.dropout)

    def delta_weight(self, target: str) -> Float[Tensor, "head d_model d_head"]:
        """The adapter's update of W_target in TransformerLens layout: scaling * A @ B."""
        update = self.lora_A[target] @ self.lora_B[target] * self.lora_config.scaling
        return rearrange(update, "d (h e) -> h d e", h=self.n_heads)

    def qkv(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Float[Tensor, "batch pos head d_head"], ...]:
        q, k, v = super().qkv(x)
        out = {"q": q, "k": k, "v": v}
        x_in = self.lora_dropout(x)
        for t in self.lora_config.targets:
            update = (x_in @ self.lora_A[t]) @ self.lora_B[t] * self.lora_config.scaling
            out[t] = out[t] + rearrange(update, "b p (h e) -> b p h e", h=self.n_heads)
        return out["q"], out["k"], out["v"]


def _layers(model: HookedViT, config: LoRAConfig) -> list[int]:
    if config.layers is None:
        return list(range(model.cfg.n_layers))
    return [model.cfg.layer_index(layer, "LoRA layer", allow_negative=False) for layer in config.layers]


def apply_lora(model: HookedViT, config: LoRAConfig = LoRAConfig(), seed: int = 0) -> HookedViT:
    """Attach adapters in place (returns the model). Base weights are untouched; the tier decides what trains."""
    if has_lora(model):
        raise InputError("the model already carries LoRA adapters; merge_lora(model) first")
    generator = torch.Generator().manual_seed(seed)
    for layer in _layers(model, config):
        block = model.blocks[layer]
        block.attn = LoRAAttention(block.attn, config, generator)
    model.setup()  # refresh transformer_lens' hook and module tables
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAAttention) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter matrices (A and B of every target in every adapted block)."""
    return [
        p for m in model.modules() if isinstance(m, LoRAAttention) for p in (*m.lora_A.values(), *m.lora_B.values())
    ]


@torch.no_grad()
def merge_lora(model: HookedViT) -> HookedViT:
    """Fold every adapter into its base weight (W_t += scaling * A_t @ B_t) and drop the adapters, in place.

    The result is a plain HookedViT with the original state-dict keys; its outputs equal the adapted
    model's (up to float rounding) with dropout off.
    """
    for block in model.blocks:
        attn = block.attn
        if not isinstance(attn, LoRAAttention):
            continue
        for t in attn.lora_config.targets:
            weight = getattr(attn, f"W_{t.upper()}")
            weight.add_(attn.delta_weight(t))
        plain = Attention.__new__(Attention)
        nn.Module.__init__(plain)
        plain.n_heads, plain.d_head, plain.force_explicit = attn.n_heads, attn.d_head, attn.force_explicit
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            plain.register_parameter(name, getattr(attn, name))
        for name, child in attn.named_children():
            if not name.startswith("lora_"):  # hooks, and qk-norm / LayerScale where the model has them
                plain.add_module(name, child)
        for name in ("q_norm", "k_norm", "ls", "rotary"):
            if name not in plain._modules:
                setattr(plain, name, None)
        block.attn = plain
    model.setup()
    return model


def lora_summary(model: HookedViT) -> dict[str, Any]:
    """Config and parameter count of the attached adapters (for cards)."""
    modules = [m for m in model.modules() if isinstance(m, LoRAAttention)]
    if not modules:
        return {"adapters": 0}
    return {
        "adapters": len(modules),
        "config": modules[0].lora_config.to_dict(),
        "parameters": sum(p.numel() for p in lora_parameters(model)),
    }


__all__ = ["LoRAAttention", "LoRAConfig", "apply_lora", "has_lora", "lora_parameters", "lora_summary", "merge_lora"]
