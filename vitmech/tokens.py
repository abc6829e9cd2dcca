"""Token layout of a ViT residual stream: prefix tokens (class, distillation, registers), then patches.

The one place that knows where patch tokens start. Analyses, plots and engines call these helpers
instead of slicing positions by hand, so models with registers, a distillation token or no class token
work everywhere (timm calls the count `num_prefix_tokens`).

    layout = token_layout(model)                  # or token_layout(model.cfg)
    layout.patches(resid)                         # [B, N, d] patch tokens of a [B, P, d] stream
    layout.patches(layout.patches(pattern), -1)   # the patch x patch block of a [..., P, P] pattern
    layout.readout(pattern, dim=-2)               # the query row the model reads out (see `readout`)

Models without a class token (SigLIP, MAE with average pooling) have no "CLS row". Analyses that read
one call `require_class_token` (a clear error) or take the readout query: the class token where the model
reads its output from it, else the mean over the patch tokens (average-pooled models, with or without a
class token; attention-pooled models without one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Float

from vitmech.config import ViTConfig
from vitmech.errors import IndexOutOfRangeError, InputError, InputTypeError

READOUT: Literal["readout"] = "readout"
"""Query name of the readout token: the class token, or the mean over patches for models without one."""


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits along the position axis.

    Attributes:
        n_prefix: tokens before the patch grid.
        grid: patch rows and columns; patches are row-major after the prefix.
        class_index: position of the class token, or None for models without one.
        distill_index: position of the distillation token (DeiT), or None.
        n_registers: register tokens (Darcet et al. 2024, arXiv 2309.16588), the last prefix tokens.
        mean_readout: the output is read from the patch tokens (`pool="avg"`, or with position-dependent
            weights, `pool="flatten"` / `"rowcol"`) even though the model has a class token; always the case
            without one.
    """

    n_prefix: int
    grid: tuple[int, int]
    class_index: int | None = 0
    distill_index: int | None = None
    n_registers: int = 0
    mean_readout: bool = False

    def __post_init__(self) -> None:
        first_register = int(self.class_index is not None) + int(self.distill_index is not None)
        if self.n_registers < 0 or first_register + self.n_registers != self.n_prefix or min(self.grid) < 1:
            raise InputError(f"inconsistent token layout: {self}")

    @classmethod
    def from_config(cls, cfg: ViTConfig) -> TokenLayout:
        g = cfg.grid_size
        return cls(
            n_prefix=cfg.n_prefix_tokens,
            grid=(g, g),
            class_index=0 if cfg.class_token else None,
            distill_index=1 if cfg.distill_token else None,
            n_registers=cfg.n_register_tokens,
            mean_readout=getattr(cfg, "pool", "cls") in ("avg", "flatten", "rowcol"),
        )

    @classmethod
    def standard(cls, n_tokens: int | None = None, *, grid_size: int | None = None) -> TokenLayout:
        """One class token, then a square grid (of `grid_size`, or filling `n_tokens`): the supervised ViT
        layout, assumed for a bare [..., P, P] pattern given without its layout (pass
        `token_layout(model)` for any other model)."""
        if grid_size is not None:
            return cls(n_prefix=1, grid=(grid_size, grid_size))
        if n_tokens is None:
            raise InputTypeError("give n_tokens or grid_size")
        g = math.isqrt(max(n_tokens - 1, 0))
        if n_tokens < 2 or g * g != n_tokens - 1:
            raise InputError(
                f"{n_tokens} tokens is not 1 class token + a square grid of patches; pass the model's "
                "layout (layout=vitmech.tokens.token_layout(model)) for models with other prefix tokens"
            )
        return cls(n_prefix=1, grid=(g, g))

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

    @property
    def readout_index(self) -> int | None:
        """Position of the readout token: the class token's, or None when the readout is the patch mean."""
        return None if self.mean_readout else self.class_index

    @property
    def readout_name(self) -> str:
        """What `readout` reads: "class token" or "mean over patches"."""
        return "class token" if self.readout_index is not None else "mean over patches"

    def without_registers(self) -> TokenLayout:
        """The layout with the register tokens removed (e.g. the rows of a position table that skips them)."""
        return replace(self, n_prefix=self.n_prefix - self.n_registers, n_registers=0)

    def for_rows(self, n_rows: int, what: str = "position table") -> TokenLayout:
        """The layout of a table with one row per token that may skip prefix tokens: all tokens, all but the
        registers (DINOv2 with registers), or the patches only (timm's `no_embed_class`)."""
        for layout in (self, self.without_registers(), TokenLayout(n_prefix=0, grid=self.grid, class_index=None)):
            if layout.n_tokens == n_rows:
                return layout
        raise InputError(f"{what} has {n_rows} rows; this layout has {self.n_tokens} tokens ({self})")

    def check(self, n_tokens: int, what: str = "tensor") -> TokenLayout:
        """self, or a clear error when a token axis of length `n_tokens` does not fit this layout."""
        if n_tokens != self.n_tokens:
            raise InputError(
                f"{what} has {n_tokens} tokens, but the layout has {self.n_tokens} "
                f"({self.n_prefix} prefix + {self.grid[0]}x{self.grid[1]} patches)"
            )
        return self

    def patches(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The patch tokens of `x` along `dim` (a view)."""
        return x.narrow(dim, self.n_prefix, x.shape[dim] - self.n_prefix)

    def prefix(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The prefix tokens of `x` along `dim` (a view)."""
        return x.narrow(dim, 0, self.n_prefix)

    def registers(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The register tokens of `x` along `dim` (a view; length 0 without registers)."""
        return x.narrow(dim, self.register_slice.start, self.n_registers)

    def pad_prefix(self, x: torch.Tensor, dims: Sequence[int] = (-1,), value: float = 0.0) -> torch.Tensor:
        """Patch-only `x` widened with `value` at the prefix positions along each of `dims` (the inverse of
        `patches` on those axes)."""
        for dim in dims:
            shape = list(x.shape)
            shape[dim] = self.n_prefix
            x = torch.cat([x.new_full(shape, value), x], dim)
        return x

    def patch_position(self, row: int, col: int) -> int:
        """Token position of the patch at (row, col) of the grid."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexOutOfRangeError(f"patch (row, col) = ({row}, {col}) outside the {rows}x{cols} grid")
        return self.n_prefix + row * cols + col

    def require_class_token(self, what: str) -> int:
        """Position of the class token; a clear error for models that have none."""
        if self.class_index is None:
            raise InputError(
                f"{what} reads the class token, and this model has none; use a pooled or per-patch variant"
            )
        return self.class_index

    def class_token(self, x: torch.Tensor, dim: int = -2, what: str = "this analysis") -> torch.Tensor:
        """The class token of `x` along `dim` (that axis removed); an error for models without one."""
        return x.select(dim, self.require_class_token(what))

    def readout(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The readout token of `x` along `dim` (that axis removed): the class token where the model reads
        its output from it, else the mean over the patch tokens (the token an average-pooled output reads)."""
        if self.readout_index is not None:
            return x.select(dim, self.readout_index)
        return self.patches(x, dim).mean(dim)

    def readout_weights(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Float[torch.Tensor, " pos"]:
        """w [P] with `readout(x, dim) = sum_t w_t x_t`: one-hot at the class token, or 1/N on each patch."""
        weights = torch.zeros(self.n_tokens, dtype=dtype, device=device)
        if self.readout_index is not None:
            weights[self.readout_index] = 1.0
        else:
            self.patches(weights, 0).fill_(1.0 / self.n_patches)
        return weights


def token_layout(model_or_cfg: object) -> TokenLayout:
    """The TokenLayout of a HookedViT, a ViTConfig, or a TokenLayout itself."""
    if isinstance(model_or_cfg, TokenLayout):
        return model_or_cfg
    cfg = model_or_cfg if isinstance(model_or_cfg, ViTConfig) else getattr(model_or_cfg, "cfg", None)
    if not isinstance(cfg, ViTConfig):
        raise InputTypeError(f"expected a HookedViT, ViTConfig or TokenLayout, got {type(model_or_cfg).__name__}")
    return TokenLayout.from_config(cfg)


def layout_for(n_tokens: int, layout: TokenLayout | None = None, what: str = "patterns") -> TokenLayout:
    """`layout` checked against a token axis of length `n_tokens`; without one, the standard layout
    (one class token + a square grid), with a clear error when `n_tokens` does not fit it."""
    if layout is None:
        return TokenLayout.standard(n_tokens)
    return layout.check(n_tokens, what)
