"""Token layout of a ViT residual stream: prefix tokens (class, distillation, registers), then patches.

The one place that knows where patch tokens start. Analyses, plots and engines call these helpers
instead of slicing positions by hand, so models with registers, a distillation token or no class token
work everywhere (timm calls the count `num_prefix_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitmech.config import ViTConfig


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits along the position axis.

    Attributes:
        n_prefix: tokens before the patch grid.
        grid: patch rows and columns; patches are row-major after the prefix.
        class_index: position of the class token, or None for models without one.
        distill_index: position of the distillation token (DeiT), or None.
        register_slice: positions of the register tokens (empty slice when there are none).
    """

    n_prefix: int
    grid: tuple[int, int]
    class_index: int | None = 0
    distill_index: int | None = None
    n_registers: int = 0

    @classmethod
    def from_config(cls, cfg: ViTConfig) -> TokenLayout:
        g = cfg.grid_size
        first_register = int(cfg.class_token) + int(cfg.distill_token)
        return cls(
            n_prefix=cfg.n_prefix_tokens,
            grid=(g, g),
            class_index=0 if cfg.class_token else None,
            distill_index=1 if cfg.distill_token else None,
            n_registers=cfg.n_register_tokens,
        )._checked(first_register)

    def _checked(self, first_register: int) -> TokenLayout:
        if first_register + self.n_registers != self.n_prefix:
            raise ValueError(f"inconsistent token layout: {self}")
        return self

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def register_slice(self) -> slice:
        start = self.n_prefix - self.n_registers
        return slice(start, self.n_prefix)

    @property
    def patch_slice(self) -> slice:
        return slice(self.n_prefix, None)

    def patches(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The patch tokens of `x` along `dim` (a view)."""
        return x.narrow(dim, self.n_prefix, x.shape[dim] - self.n_prefix)

    def prefix(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The prefix tokens of `x` along `dim` (a view)."""
        return x.narrow(dim, 0, self.n_prefix)

    def require_class_token(self, what: str) -> int:
        """Position of the class token; a clear error for models that have none."""
        if self.class_index is None:
            raise ValueError(
                f"{what} reads the class token, and this model has none; use a pooled or per-patch variant"
            )
        return self.class_index


def token_layout(model_or_cfg: object) -> TokenLayout:
    """The TokenLayout of a HookedViT or a ViTConfig."""
    cfg = model_or_cfg if isinstance(model_or_cfg, ViTConfig) else getattr(model_or_cfg, "cfg", None)
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"expected a HookedViT or ViTConfig, got {type(model_or_cfg).__name__}")
    return TokenLayout.from_config(cfg)
