"""Architecture-only configuration of a HookedViT.

Nothing here says where weights come from or how images are preprocessed (see
`vitmech.preprocessing.Preprocessing`); only the shapes and the few numerical choices a
forward pass needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vitmech.errors import IndexOutOfRangeError, InputError

ActFn = Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu"]
ACT_FNS: tuple[str, ...] = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")
Pool = Literal["cls", "avg", "map", "flatten", "rowcol", "none"]
POOLS: tuple[str, ...] = ("cls", "avg", "map", "flatten", "rowcol", "none")
POSITIONAL_POOLS: tuple[str, ...] = ("flatten", "rowcol")
"""Readouts that keep where each patch is: the head reads per-position features (`ViTConfig.pooled_dim` wide)."""
FinalNorm = Literal["tokens", "pooled", "none"]
FINAL_NORMS: tuple[str, ...] = ("tokens", "pooled", "none")
RopeKind = Literal["none", "eva", "dinov3"]
ROPE_KINDS: tuple[str, ...] = ("none", "eva", "dinov3")
PosResample = Literal["bicubic", "bicubic_antialias"]
POS_RESAMPLES: tuple[str, ...] = ("bicubic", "bicubic_antialias")


@dataclass(frozen=True)
class ViTConfig:
    """Shapes and numerics of a class-token Vision Transformer.

    Attributes:
        n_layers: number of transformer blocks.
        n_heads: attention heads per block.
        d_model: residual stream width.
        d_head: width of each head's query/key/value.
        d_mlp: hidden width of each MLP.
        image_size: side of the square input image, in pixels.
        patch_size: side of a square patch, in pixels.
        n_channels: input channels (3 for RGB).
        n_classes: classifier outputs; 0 means no classifier head (features only).
        ln_eps: LayerNorm epsilon (timm ViT 1e-6, HF ViT 1e-12; read from the source).
        act_fn: MLP nonlinearity: "gelu" (erf), "gelu_tanh", "quick_gelu" or "relu".
        qkv_bias: whether query/key/value projections carry biases (zeros when False).
        pre_norm: a LayerNorm on the embeddings before the first block (CLIP-style `ln_pre`).
        n_heads_per_layer: heads in each block when they differ (a pruned model); None means n_heads
            in every block. Each count is in [0, n_heads].
        class_token: whether a learned class token sits at position 0.
        distill_token: whether a distillation token (DeiT) follows the class token.
        n_register_tokens: learned register tokens (Darcet et al. 2024) after the class/distillation tokens.

    Position embeddings (`docs/model.md#families`):
        pos_embed: whether learned absolute position embeddings are added (False: none, e.g. rotary-only).
        pos_embed_prefix: how many leading prefix tokens carry a position embedding; None = every prefix
            token (original ViT/DeiT), 0 = patches only (timm `no_embed_class`: DeiT III, DINOv2 in timm),
            1 = the class token but not the registers (HF DINOv2 with registers).
        pos_grid: patches per side the position embeddings were learned at, when it differs from
            grid_size; they are then resampled to grid_size at every forward (as timm `dynamic_img_size`
            and HF `interpolate_pos_encoding` do), so the stored weights stay the source's.
        pos_resample: "bicubic" (HF) or "bicubic_antialias" (timm `resample_abs_pos_embed`).

    Blocks:
        layer_scale: a learned per-channel gain on each sublayer's output (LayerScale, Touvron et al. 2021,
            arXiv:2103.17239), applied inside attention (so `hook_result` is each head's residual write)
            and the MLP.
        gated_mlp: SwiGLU MLP, act(x W_gate + b_gate) * (x W_in + b_in) @ W_out (Shazeer 2020, arXiv:2002.05202);
            act_fn is the gate's nonlinearity ("silu" for SwiGLU).
        qk_norm: LayerNorm over d_head on queries and keys before the scores.
        mlp_norm: a LayerNorm over d_mlp on the MLP's hidden activations before W_out (timm `scale_mlp`,
            EVA-02's SwiGLU).

    Rotary position embeddings (`vitmech.model.rotary`, `docs/model.md#families`), applied to the patch
    tokens' queries and keys after qk-norm (hook_q / hook_k see them rotated); prefix tokens are not rotated:
        rope: "none", "eva" (EVA-02: integer grid coordinates) or "dinov3" (patch centres in [-1, 1]).
        rope_temperature: the frequency base T (EVA-02 10000, DINOv3 100).
        rope_half: rotate-half channel pairs (j, j + d_head/2) (DINOv3) instead of interleaved (2j, 2j+1) (EVA-02).
        rope_ref_grid: "eva" only: grid coordinates rescaled to this many patches per side (timm `ref_feat_shape`).

    Output:
        pool: what the head reads: "cls" (the class token), "avg" (mean over patch tokens), "map"
            (attention pooling with a learned query, SigLIP; Zhai et al. 2023, arXiv:2303.15343), "flatten"
            (every patch token after the final norm, concatenated in grid order: the head reads
            N * d_model features and so sees which patch holds what; `pooled_dim`), "rowcol" (the mean patch
            token of every grid row, then of every grid column, concatenated: (rows + columns) * d_model
            features, where each patch is up to its row and column; for a spectrogram, the frequency and the
            time profile), "none".
        final_norm: the final LayerNorm on every token ("tokens"), on the pooled vector only ("pooled",
            timm `fc_norm`, CLIP's post-LayerNorm), or absent ("none").
        projection_dim: width of a bias-free projection of the pooled features (CLIP image embeddings);
            0 = none. A distillation token with a classifier adds a second head on it (DeiT), and the
            logits are the mean of the two heads.

    Token order in the residual stream: [class?, distillation?, registers..., patches (row-major)];
    `vitmech.tokens` splits prefix tokens from patch tokens, nothing else slices positions by hand.
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    image_size: int = 224
    patch_size: int = 16
    n_channels: int = 3
    n_classes: int = 1000
    ln_eps: float = 1e-6
    act_fn: ActFn = "gelu"
    qkv_bias: bool = True
    pre_norm: bool = False
    n_heads_per_layer: tuple[int, ...] | None = None
    class_token: bool = True
    distill_token: bool = False
    n_register_tokens: int = 0
    pos_embed: bool = True
    pos_embed_prefix: int | None = None
    pos_grid: int | None = None
    pos_resample: PosResample = "bicubic_antialias"
    layer_scale: bool = False
    gated_mlp: bool = False
    qk_norm: bool = False
    mlp_norm: bool = False
    rope: RopeKind = "none"
    rope_temperature: float = 10000.0
    rope_half: bool = False
    rope_ref_grid: int | None = None
    pool: Pool = "cls"
    final_norm: FinalNorm = "tokens"
    projection_dim: int = 0

    # transformer_lens' ActivationCache reads these two; a ViT always has both sublayers and LayerNorm.
    attn_only: bool = dataclasses.field(default=False, init=False, repr=False)
    normalization_type: str = dataclasses.field(default="LN", init=False, repr=False)
    # Run-time state that transformer_lens' tools read from `model.cfg` (not architecture: never saved or
    # compared); HookedViT keeps them current on its own copy of the config (`set_use_split_qkv_input`, `.to`).
    device: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    use_split_qkv_input: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)
    use_attn_in: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)
    use_hook_mlp_in: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "image_size", "patch_size", "n_channels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 0:
            raise InputError(f"ViTConfig.n_classes must be an int >= 0 (0 = no head), got {self.n_classes!r}")
        if self.image_size % self.patch_size != 0:
            raise InputError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.act_fn not in ACT_FNS:
            raise InputError(f"act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        if not self.ln_eps > 0:
            raise InputError(f"ln_eps must be > 0, got {self.ln_eps!r}")
        if not isinstance(self.n_register_tokens, int) or self.n_register_tokens < 0:
            raise InputError(f"n_register_tokens must be an int >= 0, got {self.n_register_tokens!r}")
        if self.distill_token and not self.class_token:
            raise InputError("a distillation token needs a class token before it (DeiT layout)")
        if self.pool not in POOLS:
            raise InputError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.final_norm not in FINAL_NORMS:
            raise InputError(f"final_norm must be one of {FINAL_NORMS}, got {self.final_norm!r}")
        if self.pos_resample not in POS_RESAMPLES:
            raise InputError(f"pos_resample must be one of {POS_RESAMPLES}, got {self.pos_resample!r}")
        if self.rope not in ROPE_KINDS:
            raise InputError(f"rope must be one of {ROPE_KINDS}, got {self.rope!r}")
        if self.rope != "none" and self.d_head % 4 != 0:
            raise InputError(f"rotary embeddings need d_head divisible by 4, got {self.d_head}")
        if not self.rope_temperature > 0:
            raise InputError(f"rope_temperature must be > 0, got {self.rope_temperature!r}")
        if self.rope_ref_grid is not None and (not isinstance(self.rope_ref_grid, int) or self.rope_ref_grid <= 0):
            raise InputError(f"rope_ref_grid must be a positive int or None, got {self.rope_ref_grid!r}")
        if self.pool == "cls" and not self.class_token:
            raise InputError("pool='cls' needs a class token; use pool='avg', 'map' or 'none'")
        if self.pool == "none" and self.final_norm == "pooled":
            raise InputError("final_norm='pooled' needs a pooled vector (pool != 'none')")
        if self.pool == "none" and (self.n_classes or self.projection_dim):
            raise InputError("a classifier or projection needs a pooled vector (pool != 'none')")
        if self.pool in POSITIONAL_POOLS and (self.final_norm == "pooled" or self.projection_dim or self.distill_token):
            raise InputError(
                f"pool={self.pool!r} supports a classifier on the final-normed patch tokens only; got "
                f"final_norm={self.final_norm!r}, projection_dim={self.projection_dim}, distill_token={self.distill_token}"
            )
        if self.pos_embed_prefix is not None and not 0 <= self.pos_embed_prefix <= self.n_prefix_tokens:
            raise InputError(
                f"pos_embed_prefix must be in [0, {self.n_prefix_tokens}] (the prefix tokens), got {self.pos_embed_prefix!r}"
            )
        if self.pos_grid is not None and (not isinstance(self.pos_grid, int) or self.pos_grid <= 0):
            raise InputError(f"pos_grid must be a positive int or None, got {self.pos_grid!r}")
        if not isinstance(self.projection_dim, int) or self.projection_dim < 0:
            raise InputError(f"projection_dim must be an int >= 0, got {self.projection_dim!r}")
        if self.n_heads_per_layer is not None:
            counts = tuple(self.n_heads_per_layer)
            object.__setattr__(self, "n_heads_per_layer", counts)  # lists (from JSON) become a hashable tuple
            if len(counts) != self.n_layers or any(
                not isinstance(c, int) or not 0 <= c <= self.n_heads for c in counts
            ):
                raise InputError(
                    f"n_heads_per_layer must give {self.n_layers} counts in [0, {self.n_heads}], got {list(counts)}"
                )

    def layer_index(
        self,
        layer: Any,
        name: str = "layer",
        *,
        allow_end: bool = False,
        allow_negative: bool = True,
        error: type[IndexOutOfRangeError] = IndexOutOfRangeError,
    ) -> int:
        """`layer` checked against the depth and returned in [0, n_layers) ([0, n_layers] with allow_end, where
        n_layers means "after the last block"); negative layers count from the end unless allow_negative=False.

        >>> cfg = ViTConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072)
        >>> cfg.layer_index(-1), cfg.layer_index(12, "stop_at_layer", allow_end=True)
        (11, 12)
        """
        n = self.n_layers
        low, high = (-n if allow_negative else 0), (n if allow_end else n - 1)
        if isinstance(layer, bool) or not isinstance(layer, int) or not low <= layer <= high:
            raise error(f"{name} {layer!r} is out of range: this model has {n} layers (valid: {low} to {high})")
        return layer + n if layer < 0 else layer

    def heads_in_layer(self, layer: int) -> int:
        """Number of attention heads in block `layer`."""
        return self.n_heads if self.n_heads_per_layer is None else self.n_heads_per_layer[layer]

    @property
    def uniform_heads(self) -> bool:
        """Whether every block has n_heads heads (so per-head weights stack over layers)."""
        return self.n_heads_per_layer is None or all(c == self.n_heads for c in self.n_heads_per_layer)

    @property
    def grid_size(self) -> int:
        """Patches per side of the image."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        """Number of patch tokens N = grid_size**2."""
        return self.grid_size**2

    @property
    def n_prefix_tokens(self) -> int:
        """Tokens before the patch grid: class, distillation and register tokens."""
        return int(self.class_token) + int(self.distill_token) + self.n_register_tokens

    @property
    def n_tokens(self) -> int:
        """Sequence length P = n_prefix_tokens + N patches."""
        return self.n_prefix_tokens + self.n_patches

    @property
    def n_pos_prefix(self) -> int:
        """Leading prefix tokens that carry a learned position embedding (0 without position embeddings)."""
        if not self.pos_embed:
            return 0
        return self.n_prefix_tokens if self.pos_embed_prefix is None else self.pos_embed_prefix

    @property
    def stored_pos_grid(self) -> int:
        """Patches per side of the stored position embeddings."""
        return self.grid_size if self.pos_grid is None else self.pos_grid

    @property
    def n_pos_rows(self) -> int:
        """Rows of the stored W_pos: positioned prefix tokens, then the stored patch grid."""
        return self.n_pos_prefix + self.stored_pos_grid**2 if self.pos_embed else 0

    @property
    def has_distill_head(self) -> bool:
        """DeiT: a second classifier on the distillation token, averaged with the class-token head."""
        return self.distill_token and self.has_classifier

    @property
    def n_ctx(self) -> int:
        """transformer_lens' name for the sequence length (n_tokens)."""
        return self.n_tokens

    @property
    def n_key_value_heads(self) -> None:
        """transformer_lens reads it for grouped-query attention; a ViT has one key/value per query head."""
        return None

    @property
    def d_patch(self) -> int:
        """Flattened patch length C * p * p."""
        return self.n_channels * self.patch_size**2

    @property
    def has_classifier(self) -> bool:
        return self.n_classes > 0

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled vector the head reads: N * d_model for pool="flatten", (rows + columns) *
        d_model for "rowcol", else d_model."""
        if self.pool == "flatten":
            return self.n_patches * self.d_model
        if self.pool == "rowcol":
            return 2 * self.grid_size * self.d_model
        return self.d_model

    def at_image_size(self, image_size: int) -> ViTConfig:
        """This architecture run at another (square) image size: the stored position embeddings are kept
        and resampled to the new grid at every forward."""
        if image_size % self.patch_size != 0:
            raise InputError(f"image_size {image_size} is not a multiple of patch_size {self.patch_size}")
        if self.pool in POSITIONAL_POOLS and image_size != self.image_size:
            raise InputError(
                f"pool={self.pool!r} reads a fixed {self.grid_size}x{self.grid_size} patch grid; it cannot run at "
                f"image_size {image_size} (the model's is {self.image_size})"
            )
        stored = self.stored_pos_grid
        return self.replace(image_size=image_size, pos_grid=None if image_size // self.patch_size == stored else stored)

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown ViTConfig fields {unknown}; known: {sorted(known)}")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}  # JSON lists
        return cls(**fields)
