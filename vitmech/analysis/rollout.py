"""Attention rollout and its relatives (Abnar & Zuidema 2020, arXiv 2005.00928; Chefer et al. 2021, arXiv 2103.15679; GMAR, arXiv 2504.19414): rollout, discard_ratio, gradient rollout, GMAR.

    patterns = collect_patterns(model, images)                       # [B, L, H, P, P]
    r = rollout(patterns, alpha=0.5, head_fusion="mean")             # Rollout: rows of R = A_L ... A_1
    r.map()                                                          # readout (CLS) map over the patches [B, N]
    grads = attention_gradients(model, images)                       # patterns and d y_c / d A
    gradient_rollout(grads.patterns, grads.gradients).map()          # Chefer et al. 2021 (generic)
    gmar(grads.patterns, grads.gradients, norm="l1").map()           # GMAR head weighting

    attention_flow(patterns[:1]).map()                               # max-flow (Abnar & Zuidema 2020)

Conventions: A_l = rownorm(alpha * fuse_h(A[l, h]) + (1 - alpha) * I); R = A_L @ ... @ A_1 (later layers
multiply on the left); the map of token t is row t of R over the patch keys. Rows of every A_l and of R
sum to 1. Bare patterns take `layout=token_layout(model)` (default: one class token + a square grid).

Query tokens are positions or "readout": the class token, or for models without one the mean over the
patch tokens, whose rollout row is the mean of the patch rows of R (exact, as R is linear in the query).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from vitmech.analysis.attention import (
    PatternStack,
    attention_entropy,
    pattern_layout,
    resolve_layers,
    to_grid,
    top_k_concentration,
)
from vitmech.batching import cat_if_all, concat_results, image_batches
from vitmech.device import on_model_device
from vitmech.errors import IndexOutOfRangeError, InputError, UnknownNameError
from vitmech.tokens import READOUT, TokenLayout, layout_for, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model._hooks import FwdHooks
    from vitmech.model.hooked_vit import HookedViT

HeadFusion = Literal["mean", "max", "min"]
_CHUNK_ELEMENTS = 1 << 20  # elements per chunk of the chunked reductions (4 MiB in float32, stays in cache)
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")
Target = None | int | Tensor | Callable[[Tensor], Tensor]
Query = int | Literal["readout"]


@dataclass(frozen=True)
class RolloutSettings:
    """alpha: weight of attention against the identity (residual); head_fusion: mean, max or min over
    heads; discard_ratio: fraction of each fused matrix's lowest entries zeroed (never class->class)."""

    alpha: float = 0.5
    head_fusion: HeadFusion = "mean"
    discard_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise InputError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if self.head_fusion not in HEAD_FUSIONS:
            raise InputError(f"head_fusion must be one of {HEAD_FUSIONS}, got {self.head_fusion!r}")
        if not 0 <= self.discard_ratio < 1:
            raise InputError(f"discard_ratio must be in [0, 1), got {self.discard_ratio!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- building blocks


def fuse_heads(
    patterns: Float[Tensor, "*batch head query key"],
    fusion: HeadFusion = "mean",
    head_weights: Float[Tensor, "*batch head"] | None = None,
) -> Float[Tensor, "*batch query key"]:
    """One matrix per layer from its heads: mean, max or min over the head axis (-3), or, with
    head_weights, the weighted sum sum_h w_h A_h."""
    if head_weights is not None:
        if head_weights.shape != patterns.shape[:-2]:
            raise InputError(
                f"head_weights {list(head_weights.shape)} must match patterns' leading axes {list(patterns.shape[:-2])}"
            )
        # a batched vector-matrix product over the contiguous [head, query * key] block (6x faster than einsum)
        fused = torch.matmul(head_weights.unsqueeze(-2).to(patterns.dtype), patterns.flatten(-2))
        return fused.reshape(patterns.shape[:-3] + patterns.shape[-2:])
    if fusion == "mean":
        return patterns.sum(-3).div_(patterns.shape[-3])
    if fusion == "max":
        return patterns.amax(-3)
    if fusion == "min":
        return patterns.amin(-3)
    raise InputError(f"head_fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")


def discard_lowest(
    fused: Float[Tensor, "*batch query key"], ratio: float, layout: TokenLayout | None = None
) -> Float[Tensor, "*batch query key"]:
    """Zero the int(ratio * P * P) lowest entries of each matrix, per batch item and layer, keeping the
    class->class entry where the model has a class token (vit-explain's discard_ratio, without its
    item-0-only bug)."""
    if not 0 <= ratio < 1:
        raise InputError(f"discard_ratio must be in [0, 1), got {ratio!r}")
    n_tokens = fused.shape[-1]
    class_index = layout_for(n_tokens, layout, "fused").class_index
    n_entries = n_tokens * n_tokens
    n_discard = int(n_entries * ratio)
    if n_discard == 0:
        return fused
    flat = fused.flatten(-2)
    if 2 * n_discard <= n_entries:  # zero the n_discard lowest ...
        out = flat.scatter(-1, flat.topk(n_discard, dim=-1, largest=False, sorted=False).indices, 0.0)
    else:  # ... or keep the (fewer) highest: the same set up to ties, and a much smaller top-k
        keep = flat.topk(n_entries - n_discard, dim=-1, largest=True, sorted=False).indices
        out = torch.zeros_like(flat).scatter_(-1, keep, flat.gather(-1, keep))
    if class_index is not None:
        kept = class_index * n_tokens + class_index
        out[..., kept] = flat[..., kept]
    return out.reshape(fused.shape)


def _residual_row_scales(
    fused: Float[Tensor, "*batch query key"], alpha: float
) -> tuple[Float[Tensor, "*batch query"], Float[Tensor, "*batch query"]]:
    """(s, c) with rownorm(alpha * fused + (1 - alpha) I) = diag(s) fused + diag(c); rows with no mass (alpha = 1
    after discarding) become identity rows (s = 0, c = 1)."""
    sums = alpha * fused.sum(-1) + (1 - alpha)
    empty = sums <= 0
    inverse = 1.0 / torch.where(empty, torch.ones_like(sums), sums)
    scale = torch.where(empty, torch.zeros_like(sums), alpha * inverse)
    diagonal = torch.where(empty, torch.ones_like(sums), (1 - alpha) * inverse)
    return scale, diagonal


def residual_attention(
    fused: Float[Tensor, "*batch query key"], alpha: float = 0.5
) -> Float[Tensor, "*batch query key"]:
    """rownorm(alpha * fused + (1 - alpha) * I). A row with no mass left (alpha = 1 after discarding) keeps
    its token: it becomes the identity row."""
    scale, diagonal = _residual_row_scales(fused, alpha)
    mixed = fused * scale[..., None]
    mixed.diagonal(dim1=-2, dim2=-1).add_(diagonal)
    return mixed


def residual_rollout_rows(
    fused: Float[Tensor, "batch layer query key"],
    alpha: float,
    tokens: Sequence[Query],
    layout: TokenLayout | None = None,
) -> Float[Tensor, "batch row key"]:
    """Rows `tokens` of the rollout R = A_L ... A_1 without forming any A_l: with A_l = diag(s) F_l + diag(c),
    v A_l = (v * s) F_l + v * c, one vector-matrix product per layer."""
    scale, diagonal = _residual_row_scales(fused, alpha)  # [B, L, P]
    v = _query_rows(tokens, layout_for(fused.shape[-1], layout, "fused"), fused.dtype, fused.device)
    v = v.expand(fused.shape[0], -1, -1)
    for layer in range(fused.shape[1] - 1, -1, -1):
        v = (v * scale[:, layer, None]) @ fused[:, layer] + v * diagonal[:, layer, None]
    return v


def _check_tokens(tokens: Sequence[Query] | None, n_tokens: int) -> tuple[Query, ...] | None:
    if tokens is None:
        return None
    out = tuple(
        READOUT if t == READOUT else int(t) % n_tokens if isinstance(t, int) and -n_tokens <= t < n_tokens else None
        for t in tokens
    )
    if not out or None in out:
        raise IndexOutOfRangeError(
            f"tokens {list(tokens)} must be non-empty, 'readout' or in range for {n_tokens} tokens"
        )
    return out  # type: ignore[return-value]


def _query_rows(
    tokens: Sequence[Query], layout: TokenLayout, dtype: torch.dtype, device: torch.device
) -> Float[Tensor, "row key"]:
    """One row vector per query: one-hot at a position, or the readout weights (`TokenLayout.readout_weights`)."""
    checked = _check_tokens(tokens, layout.n_tokens)
    assert checked is not None
    eye = torch.eye(layout.n_tokens, dtype=dtype, device=device)
    readout = layout.readout_weights(dtype, device)
    return torch.stack([readout if t == READOUT else eye[t] for t in checked])


def chain_rows(
    layer_matrices: Float[Tensor, "batch layer query key"],
    tokens: Sequence[Query] | None = None,
    layout: TokenLayout | None = None,
) -> Float[Tensor, "batch row key"]:
    """Rows `tokens` of R = M_L @ ... @ M_1 (all rows when tokens is None): the rows are carried from the
    top layer down, so only len(tokens) x P x P work per layer."""
    if tokens is None:
        result = layer_matrices[:, -1]
    else:
        layout = layout_for(layer_matrices.shape[-1], layout, "layer_matrices")
        result = _query_rows(tokens, layout, layer_matrices.dtype, layer_matrices.device) @ layer_matrices[:, -1]
    for layer in range(layer_matrices.shape[1] - 2, -1, -1):
        result = result @ layer_matrices[:, layer]
    return result


# ----------------------------------------------------------------------------------------- results


@dataclass
class Rollout:
    """Rows of a rollout-style matrix R [P, P] for each image: `rows[b, i]` is R[tokens[i], :].

    Attributes:
        rows: [batch, row, key] rows of R over all P input tokens (prefix tokens first).
        tokens: the query of each row: a position, or "readout" (the class token; the mean over patches
            for models without one).
        method: "rollout", "gradient_rollout", "gmar" or "flow".
        settings: the choices (alpha, head fusion, discard ratio, norm, ...).
        head_weights: GMAR's [batch, layer, head] weights (None otherwise).
        layout: the token layout of the rows (None: one class token + a square grid).
    """

    rows: Float[Tensor, "batch row key"]
    tokens: tuple[Query, ...]
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    head_weights: Float[Tensor, "batch layer head"] | None = None
    layout: TokenLayout | None = None

    @property
    def token_layout(self) -> TokenLayout:
        return layout_for(self.rows.shape[-1], self.layout, "rollout rows")

    def row(self, token: Query = READOUT) -> Float[Tensor, "batch key"]:
        """Row of R for `token`; "readout" and the class token's position name the same row."""
        readout_index = self.token_layout.readout_index
        aliases = {token}
        if readout_index is not None and token in (READOUT, readout_index):
            aliases = {READOUT, readout_index}
        for alias in aliases:
            if alias in self.tokens:
                return self.rows[:, self.tokens.index(alias)]
        raise UnknownNameError(f"token {token!r} not computed; this result holds rows for tokens {list(self.tokens)}")

    def map(self, token: Query = READOUT, renormalise: bool = True) -> Float[Tensor, "batch patch"]:
        """The token's row of R over the patch keys, renormalised to sum 1 by default."""
        values = self.token_layout.patches(self.row(token), -1)
        return (
            values / values.sum(-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny) if renormalise else values
        )

    def grid(self, token: Query = READOUT, renormalise: bool = True) -> Float[Tensor, "batch g g"]:
        return to_grid(self.map(token, renormalise), self.token_layout.grid[0])

    def entropy(self, token: Query = READOUT) -> Float[Tensor, " batch"]:
        """Entropy (nats) of the token's renormalised patch map."""
        return attention_entropy(self.map(token, renormalise=True))

    def top_k(self, k: int = 10, token: Query = READOUT) -> Float[Tensor, " batch"]:
        return top_k_concentration(self.map(token, renormalise=True), k)

    def to_frame(self, token: Query = READOUT, k: int = 10) -> pd.DataFrame:
        """One row per image: entropy and top-k concentration of the token's map."""
        import pandas as pd

        return pd.DataFrame(
            {
                "image": range(self.rows.shape[0]),
                "token": token,
                "method": self.method,
                "entropy": self.entropy(token).tolist(),
                f"top{k}": self.top_k(k, token).tolist(),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tokens": list(self.tokens),
            "settings": dict(self.settings),
            "maps": {t: self.map(t).tolist() for t in self.tokens},
        }

    @classmethod
    def concat(cls, parts: Sequence[Rollout]) -> Rollout:
        """Join results of image batches (same tokens, method, settings and layout) along the image axis."""
        return concat_results(parts)


# ----------------------------------------------------------------------------------------- rollout


def rollout_from_fused(
    fused: Float[Tensor, "batch layer query key"],
    alpha: float = 0.5,
    discard_ratio: float = 0.0,
    tokens: Sequence[Query] | None = None,
    settings: dict[str, Any] | None = None,
    layout: TokenLayout | None = None,
) -> Rollout:
    """Rollout of already fused per-layer matrices [B, L, P, P] (see `rollout`)."""
    layout = pattern_layout(fused, ndim=4, name="fused", layout=layout)
    RolloutSettings(alpha=alpha, discard_ratio=discard_ratio)  # validates
    with torch.no_grad():
        kept = discard_lowest(fused, discard_ratio, layout)
        if tokens is None:
            rows = chain_rows(residual_attention(kept, alpha))
        else:
            rows = residual_rollout_rows(kept, alpha, tokens, layout)
    tokens_used = _check_tokens(tokens, fused.shape[-1]) or tuple(range(fused.shape[-1]))
    recorded = {"alpha": alpha, "discard_ratio": discard_ratio, "readout": layout.readout_name, **(settings or {})}
    return Rollout(rows=rows, tokens=tokens_used, method="rollout", settings=recorded, layout=layout)


def rollout(
    patterns: PatternStack,
    alpha: float = 0.5,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    tokens: Sequence[Query] | None = None,
    layout: TokenLayout | None = None,
) -> Rollout:
    """Attention rollout (Abnar & Zuidema 2020) of patterns [B, L, H, P, P].

    A_l = rownorm(alpha * fuse_h(A[l, h]) + (1 - alpha) I) after zeroing the lowest `discard_ratio` of each
    fused matrix (never class->class, per image and layer); R = A_L @ ... @ A_1. Returns the rows of R for
    `tokens` (all P rows when None; tokens=["readout"] for the CLS map costs 1/P of the full product).
    """
    RolloutSettings(alpha, head_fusion, discard_ratio)  # validates the arguments
    layout = pattern_layout(patterns, ndim=5, layout=layout)
    with torch.no_grad():
        fused = fuse_heads(patterns, head_fusion)
    return rollout_from_fused(fused, alpha, discard_ratio, tokens, settings={"head_fusion": head_fusion}, layout=layout)


def _fusing_hook(fused: dict[str, list[Tensor | None]]) -> Callable[[Tensor, Any], None]:
    """A hook_pattern hook storing fuse_heads(pattern, f) in fused[f][layer] for every fusion f in `fused`.

    `fused` is bound when the hook is made, so each batch's hook fills that batch's buffers.
    """

    def on_pattern(pattern: Tensor, hook: Any) -> None:
        layer = hook.layer()
        for fusion, per_layer in fused.items():
            per_layer[layer] = fuse_heads(pattern, fusion)  # type: ignore[arg-type]  # keys are RolloutSettings.head_fusion values

    return on_pattern


def _keeping_hook(kept: dict[int, Tensor]) -> Callable[[Tensor, Any], Tensor]:
    """A hook_pattern hook that stores the pattern (graph intact) in kept[layer] and returns it unchanged."""

    def keep(pattern: Tensor, hook: Any) -> Tensor:
        kept[hook.layer()] = pattern
        return pattern

    return keep


def rollout_maps(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    variants: dict[str, RolloutSettings],
    *,
    tokens: Sequence[Query] = (READOUT,),
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Rollout]:
    """Several rollout variants (named RolloutSettings) of the same images in one forward pass per batch.

    Each layer's pattern is fused in its hook (once per distinct head fusion) and dropped, so memory stays
    at [batch, layer, P, P] per fusion whatever the number of images.
    """
    if not variants:
        raise InputError("give at least one rollout variant")
    images = on_model_device(model, images)
    model.check_images(images)
    layout = token_layout(model)
    fusions = sorted({v.head_fusion for v in variants.values()})
    parts: dict[str, list[Rollout]] = {name: [] for name in variants}
    bar = tqdm(total=images.shape[0], desc="rollout", unit="img", disable=not progress)
    for _, batch in image_batches(images, batch_size):
        fused: dict[str, list[Tensor | None]] = {f: [None] * model.cfg.n_layers for f in fusions}
        on_pattern = _fusing_hook(fused)
        with torch.no_grad(), model.hooks(fwd_hooks=[(lambda n: n.endswith("attn.hook_pattern"), on_pattern)]):
            model(batch, return_type=None)
        stacked = {f: torch.stack(layers, 1) for f, layers in fused.items()}  # type: ignore[arg-type]  # the forward filled every layer
        for name, v in variants.items():
            parts[name].append(
                rollout_from_fused(
                    stacked[v.head_fusion],
                    v.alpha,
                    v.discard_ratio,
                    tokens,
                    settings={"head_fusion": v.head_fusion},
                    layout=layout,
                )
            )
        bar.update(batch.shape[0])
    bar.close()
    return {name: Rollout.concat(results) for name, results in parts.items()}


# ----------------------------------------------------------------------------------------- gradients


@dataclass
class AttentionGradients:
    """Patterns and the gradient of each image's target output w.r.t. them.

    Attributes:
        patterns, gradients: [batch, layer, head, query, key].
        targets: [batch] the output index differentiated per image (None when a callable chose the target).
        outputs: [batch, n_outputs] the model's outputs.
        layers: model layer of each stacked layer.
    """

    patterns: PatternStack
    gradients: PatternStack
    targets: Int[Tensor, " batch"] | None
    outputs: Float[Tensor, "batch out"]
    layers: tuple[int, ...]


def _target_values(outputs: Tensor, target: Target) -> tuple[Tensor, Tensor | None]:
    """Per-image scalars to differentiate [B], and the output index used (None for a callable)."""
    if callable(target):
        values = target(outputs)
        if not isinstance(values, Tensor) or values.shape != outputs.shape[:1]:
            raise InputError(
                f"a target callable must map outputs {list(outputs.shape)} to one value per image [{outputs.shape[0]}]"
            )
        return values, None
    if target is None:
        index = outputs.argmax(-1)
    elif isinstance(target, int):
        index = torch.full(outputs.shape[:1], target, dtype=torch.long, device=outputs.device)
    elif isinstance(target, Tensor) and target.ndim == 1 and target.shape[0] == outputs.shape[0]:
        index = target.to(device=outputs.device, dtype=torch.long)
    else:
        raise InputError(
            "target must be None (predicted class), an int, a tensor [batch] of indices, "
            "or a callable outputs -> [batch]"
        )
    if ((index < 0) | (index >= outputs.shape[-1])).any():
        raise IndexOutOfRangeError(f"target index out of range for {outputs.shape[-1]} outputs: {index.tolist()}")
    return outputs.gather(-1, index[:, None])[:, 0], index


def attention_gradients(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    target: Target = None,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> AttentionGradients:
    """Patterns and d y / d A for every layer in one backward pass per batch.

    y is, per image, the output `target` (None: the predicted class; an int; a tensor of indices; or a
    callable outputs -> [batch]). A hook on each hook_pattern keeps the tensor (its return value is the
    pattern itself, so the forward pass is unchanged); torch.autograd.grad then gives the gradients
    without touching the parameters' .grad. Images are independent, so summing y over the batch gives
    each image its own gradient.
    """
    images = on_model_device(model, images)
    model.check_images(images)
    layers = resolve_layers(model, layers)
    parts: list[tuple[Tensor, Tensor, Tensor | None, Tensor]] = []
    bar = tqdm(total=images.shape[0], desc="attention gradients", unit="img", disable=not progress)
    for _, batch in image_batches(images, batch_size):
        kept: dict[int, Tensor] = {}
        keep = _keeping_hook(kept)
        hooks: FwdHooks = [(get_act_name("pattern", layer), keep) for layer in layers]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            x = batch.detach().requires_grad_(True)  # builds the graph even when the weights are frozen
            outputs = model(x, return_type="auto")
            values, index = _target_values(outputs, target)
            patterns = [kept[layer] for layer in layers]
            grads = torch.autograd.grad(values.sum(), patterns, allow_unused=True)
        filled = [torch.zeros_like(p) if g is None else g for p, g in zip(patterns, grads)]
        parts.append((torch.stack([p.detach() for p in patterns], 1), torch.stack(filled, 1), index, outputs.detach()))
        bar.update(batch.shape[0])
    bar.close()
    indices = [p[2] for p in parts]
    return AttentionGradients(
        patterns=torch.cat([p[0] for p in parts]),
        gradients=torch.cat([p[1] for p in parts]),
        targets=cat_if_all(indices),
        outputs=torch.cat([p[3] for p in parts]),
        layers=layers,
    )


def _check_pair(patterns: Tensor, gradients: Tensor, layout: TokenLayout | None) -> TokenLayout:
    layout = pattern_layout(patterns, ndim=5, layout=layout)
    if gradients.shape != patterns.shape:
        raise InputError(f"gradients {list(gradients.shape)} and patterns {list(patterns.shape)} differ in shape")
    return layout


def gradient_rollout(
    patterns: PatternStack,
    gradients: PatternStack,
    tokens: Sequence[Query] | None = None,
    layout: TokenLayout | None = None,
) -> Rollout:
    """Gradient-weighted rollout (Chefer et al. 2021, generic rule): R = I; for each layer from the first,
    R <- R + mean_h[(dA * A)^+] @ R, i.e. R = (I + C_L) ... (I + C_1). Rows of R do not sum to 1; maps are
    renormalised on request. tokens=["readout"] computes only the CLS row (L vector-matrix products)."""
    layout = _check_pair(patterns, gradients, layout)
    n_tokens = patterns.shape[-1]
    tokens_used = _check_tokens(tokens, n_tokens) or tuple(range(n_tokens))
    with torch.no_grad():
        v = _query_rows(tokens_used, layout, patterns.dtype, patterns.device)
        v = v.expand(patterns.shape[0], -1, -1)
        # C_l = mean_h[(dA * A)^+] per layer (one layer at a time keeps the temporaries small)
        cams = torch.stack(
            [
                (gradients[:, layer] * patterns[:, layer]).clamp_min_(0).sum(1).div_(patterns.shape[2])
                for layer in range(patterns.shape[1])
            ],
            1,
        )
        # R = (I + C_L) ... (I + C_1); row t: v <- v + v C_l from the top layer down
        for layer in range(patterns.shape[1] - 1, -1, -1):
            v = v + v @ cams[:, layer]
        rows = v
    return Rollout(
        rows=rows,
        tokens=tokens_used,
        method="gradient_rollout",
        settings={"head_fusion": "mean of (grad * A)^+", "rule": "R += A_bar @ R", "readout": layout.readout_name},
        layout=layout,
    )


def gmar_head_weights(gradients: PatternStack, norm: Literal["l1", "l2"] = "l1") -> Float[Tensor, "batch layer head"]:
    """GMAR head weights: w_lh = ||d y / d A_lh||_p / sum_h ||d y / d A_lh||_p per image and layer
    (uniform where a layer's gradients are all zero)."""
    if norm not in ("l1", "l2"):
        raise InputError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if norm == "l2":
        scores = torch.linalg.vector_norm(gradients.flatten(-2), ord=2, dim=-1)
    else:  # sum |g| in cache-sized chunks (vector_norm's ord=1 path is 2.5x slower here)
        flat = gradients.reshape(-1, gradients.shape[-2] * gradients.shape[-1])
        rows = max(1, _CHUNK_ELEMENTS // flat.shape[-1])
        buffer = torch.empty(min(rows, flat.shape[0]), flat.shape[-1], dtype=flat.dtype, device=flat.device)
        scores = torch.empty(flat.shape[0], dtype=flat.dtype, device=flat.device)
        for start in range(0, flat.shape[0], rows):
            chunk = flat[start : start + rows]
            scores[start : start + rows] = torch.abs(chunk, out=buffer[: chunk.shape[0]]).sum(-1)
        scores = scores.reshape(gradients.shape[:-2])
    totals = scores.sum(-1, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[-1])
    return torch.where(totals > 0, scores / totals.clamp_min(torch.finfo(scores.dtype).tiny), uniform)


def gmar(
    patterns: PatternStack,
    gradients: PatternStack,
    norm: Literal["l1", "l2"] = "l1",
    alpha: float = 0.5,
    discard_ratio: float = 0.0,
    tokens: Sequence[Query] | None = None,
    layout: TokenLayout | None = None,
) -> Rollout:
    """GMAR (arXiv 2504.19414): fuse each layer's heads as sum_h w_lh A_lh with gradient-norm weights
    (`gmar_head_weights`, normalised per layer), then standard rollout."""
    layout = _check_pair(patterns, gradients, layout)
    with torch.no_grad():
        weights = gmar_head_weights(gradients, norm)
        fused = fuse_heads(patterns, head_weights=weights)
    result = rollout_from_fused(
        fused, alpha, discard_ratio, tokens, settings={"head_fusion": f"gmar-{norm}"}, layout=layout
    )
    return dataclasses.replace(result, method="gmar", head_weights=weights)


# ----------------------------------------------------------------------------------------- attention flow

FLOW_SCALE = 1 << 24  # capacities are rounded to multiples of 2**-24 for scipy's integer max-flow


def flow_graph(
    capacities: Float[np.ndarray, "layer query key"],
    scale: int = FLOW_SCALE,
    source_weights: Float[np.ndarray, " query"] | None = None,
) -> Any:
    """The layered attention graph as a scipy CSR matrix of int32 capacities.

    Node l * P + i is token i after layer l (l = 0: the input tokens). Edge (l, i) -> (l - 1, j) has
    capacity capacities[l - 1, i, j] * scale, rounded (Abnar & Zuidema's adjacency, pointing downwards).
    With `source_weights` [P], one more node (the last) is a source with an edge to each top token i of
    capacity source_weights[i] * scale (a pooled query, e.g. the mean over patches).
    """
    from scipy.sparse import csr_array

    n_layers, n_tokens, _ = capacities.shape
    if not 1 <= scale <= 2**28:  # the flow value is at most ~scale (the source row sums to 1): int32 is safe
        raise InputError(f"scale must be in [1, 2**28], got {scale}")
    quantised = np.rint(np.asarray(capacities, dtype=np.float64) * scale).astype(np.int64)
    layer, query, key = np.nonzero(quantised)
    n_nodes = (n_layers + 1) * n_tokens
    values = quantised[layer, query, key]
    heads, tails = (layer + 1) * n_tokens + query, layer * n_tokens + key
    if source_weights is not None:
        weights = np.rint(np.asarray(source_weights, dtype=np.float64) * scale).astype(np.int64)
        (top,) = np.nonzero(weights)
        values = np.concatenate([values, weights[top]])
        heads = np.concatenate([heads, np.full(len(top), n_nodes)])
        tails = np.concatenate([tails, n_layers * n_tokens + top])
        n_nodes += 1
    return csr_array(
        (values.astype(np.int32), (heads.astype(np.int32), tails.astype(np.int32))), shape=(n_nodes, n_nodes)
    )


def max_flow_values(
    capacities: Float[np.ndarray, "layer query key"],
    token: int | Float[np.ndarray, " query"] = 0,
    backend: Literal["scipy", "networkx"] = "scipy",
    scale: int = FLOW_SCALE,
) -> Float[np.ndarray, " key"]:
    """Max-flow from `token` after the last layer to each input token, over the layered graph whose edge
    (l, i) -> (l - 1, j) has capacity capacities[l - 1, i, j]. [P] values, unnormalised. `token` may be
    weights [P] over the top tokens instead (a source feeding token i with capacity weights[i]).

    backend="scipy": Dinic's algorithm in C on capacities rounded to multiples of 1/scale (error at most
    0.5/scale per edge of the minimum cut); "networkx": exact float capacities, pure Python (slow;
    a reference for small graphs).
    """
    n_layers, n_tokens, _ = capacities.shape
    weights = None if isinstance(token, int) else np.asarray(token, dtype=np.float64)
    source = n_layers * n_tokens + token if isinstance(token, int) else (n_layers + 1) * n_tokens
    out = np.zeros(n_tokens)
    if backend == "scipy":
        from scipy.sparse.csgraph import maximum_flow

        graph = flow_graph(capacities, scale, weights)
        for sink in range(n_tokens):
            out[sink] = maximum_flow(graph, source, sink, method="dinic").flow_value / scale
    elif backend == "networkx":
        import networkx as nx

        graph = nx.DiGraph()
        for layer in range(n_layers):
            query, key = np.nonzero(capacities[layer])
            graph.add_weighted_edges_from(
                (((layer + 1) * n_tokens + int(i)), (layer * n_tokens + int(j)), float(capacities[layer, i, j]))
                for i, j in zip(query, key)
            )
        if weights is not None:
            graph.add_weighted_edges_from(
                (source, n_layers * n_tokens + int(i), float(weights[i])) for i in np.nonzero(weights)[0]
            )
        for sink in range(n_tokens):
            out[sink] = nx.maximum_flow_value(graph, source, sink, capacity="weight") if sink in graph else 0.0
    else:
        raise InputError(f"backend must be 'scipy' or 'networkx', got {backend!r}")
    return out


def attention_flow(
    patterns: PatternStack,
    token: Query = READOUT,
    alpha: float = 0.5,
    head_fusion: HeadFusion = "mean",
    backend: Literal["scipy", "networkx"] = "scipy",
    progress: bool = True,
    layout: TokenLayout | None = None,
) -> Rollout:
    """Attention flow (Abnar & Zuidema 2020) of patterns [B, L, H, P, P] for one query token.

    Capacities are the rollout matrices A_l = rownorm(alpha * fuse_h(A[l, h]) + (1 - alpha) I); the value
    for input token j is the max-flow from `token` at the top to j at the input, and the row is normalised
    to sum 1 over the P inputs (as in the authors' code). token="readout" is the class token, or for
    models without one a source feeding each top patch token with capacity 1/N (the mean over patches).
    Cost: P max-flow problems per image, each on (L + 1) * P nodes and L * P^2 edges (ViT-B/16: 2,561
    nodes, 465,708 edges; see docs/attention.md).
    """
    settings = RolloutSettings(alpha, head_fusion)
    layout = pattern_layout(patterns, ndim=5, layout=layout)
    n_tokens = patterns.shape[-1]
    (token,) = _check_tokens([token], n_tokens) or (READOUT,)
    query: int | np.ndarray
    if token == READOUT:
        query = layout.readout_index if layout.readout_index is not None else layout.readout_weights().double().numpy()
    else:
        query = int(token)
    with torch.no_grad():
        capacities = residual_attention(fuse_heads(patterns, head_fusion), alpha).double().cpu().numpy()
    rows = np.zeros((patterns.shape[0], 1, n_tokens))
    for b in tqdm(range(patterns.shape[0]), desc="attention flow", unit="img", disable=not progress):
        values = max_flow_values(capacities[b], query, backend)
        rows[b, 0] = values / values.sum() if values.sum() > 0 else values
    return Rollout(
        rows=torch.as_tensor(rows, dtype=patterns.dtype),
        tokens=(token,),
        method="flow",
        settings={
            **settings.to_dict(),
            "backend": backend,
            "normalised": "over all P input tokens",
            "capacity_quantum": 1 / FLOW_SCALE if backend == "scipy" else 0.0,
            "readout": layout.readout_name,
        },
        layout=layout,
    )
