"""Attention metrics over cached patterns: CLS maps, entropy, top-k concentration, mean attention distance.

Definitions: docs/attention.md#definitions-and-sources. A pattern stack is `[batch, layer, head, query, key]` over P tokens: the
prefix tokens (class, distillation, registers), then N patches row-major on a g x g grid (`vitmech.tokens`).
Functions on bare patterns take `layout=token_layout(model)`; without it they assume one class token
and a square grid. Every function is vectorised over all leading axes, so the 144 heads of a ViT-B/16
are one tensor operation, never a Python loop.

"CLS attention" is the readout query's attention over the patches: the class token's row, or, for
models without a class token, the mean of the patch queries' rows (`TokenLayout.readout`); each result
records which (`AttentionMetrics.query`).

    patterns = collect_patterns(model, images)                  # [B, L, H, P, P], pattern-only cache
    metrics = attention_metrics(patterns, model)                 # AttentionMetrics; geometry read from the model
    metrics.to_frame()                                          # per layer x head: mean, std over images

Choices are parameters and are recorded in every result (`AttentionSettings`):
- CLS attention is renormalised over the N patches (p / p.sum()) unless `renormalise=False`.
- Entropy is in nats. Two variants: per head H(p_h), and the entropy of the head-mean map H(mean_h p_h);
  by concavity the second is >= the mean of the first.
- Mean attention distance (Dosovitskiy et al. 2020, Fig. 7) renormalises each query patch's attention
  over the patch keys (drops the CLS key) unless `distance_renormalise=False` (the keras "probing ViTs"
  convention: raw weights, the CLS key contributing distance 0).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from vitmech.batching import concat_results, image_batches
from vitmech.device import on_model_device
from vitmech.errors import IndexOutOfRangeError, InputError, InputTypeError, UnknownNameError
from vitmech.tokens import READOUT, TokenLayout, layout_for, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model._hooks import FwdHooks
    from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)

PatternStack = Float[Tensor, "batch layer head query key"]

# Elements of the [query, key] matrices handled at once by the chunked reductions (about 4 MiB in float32,
# so the temporary stays in cache; several times faster than one big product).
_CHUNK_ELEMENTS = 1 << 20


# ----------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AttentionSettings:
    """The choices behind the attention metrics (recorded in every result).

    Attributes:
        renormalise: CLS attention renormalised over the patches (drop the CLS->CLS weight).
        k: patches counted by the top-k concentration.
        distance_renormalise: each query's attention renormalised over the patch keys before the
            mean distance (False: raw weights, the CLS key at distance 0).
    """

    renormalise: bool = True
    k: int = 10
    distance_renormalise: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise InputError(f"k must be a positive int, got {self.k!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "entropy_unit": "nats", "distance_unit": "pixels"}


# ----------------------------------------------------------------------------------------- shapes


def grid_size_of(n_tokens: int, layout: TokenLayout | None = None) -> int:
    """Patches per side for P tokens of `layout` (default: one class token + a square grid); a clear error
    for token counts that do not fit."""
    return layout_for(n_tokens, layout).grid[0]


def check_patterns(
    patterns: Any, ndim: int | None = None, name: str = "patterns", layout: TokenLayout | None = None
) -> int:
    """Validate a float tensor [..., P, P] (exactly `ndim` axes if given); returns the grid size g."""
    return pattern_layout(patterns, ndim, name, layout).grid[0]


def pattern_layout(
    patterns: Any, ndim: int | None = None, name: str = "patterns", layout: TokenLayout | None = None
) -> TokenLayout:
    """Validate a float tensor [..., P, P] (exactly `ndim` axes if given); returns its token layout
    (`layout` checked against P, or the standard one-class-token layout when None)."""
    if not isinstance(patterns, Tensor) or not patterns.is_floating_point():
        raise InputTypeError(
            f"{name} must be a float tensor [..., query, key]; got {type(patterns).__name__}"
            + (f" of dtype {patterns.dtype}" if isinstance(patterns, Tensor) else "")
        )
    if patterns.ndim < 2 or patterns.shape[-1] != patterns.shape[-2]:
        raise InputError(f"{name} must end in square [query, key] axes, got shape {list(patterns.shape)}")
    if ndim is not None and patterns.ndim != ndim:
        hint = ""
        if ndim == 5 and patterns.ndim == 4:
            hint = (
                " (one layer from a cache is [batch, head, P, P]: use stack_patterns(cache) for all layers, "
                "or patterns[:, None] for one)"
            )
        raise InputError(f"{name} must be [batch, layer, head, query, key], got shape {list(patterns.shape)}{hint}")
    return layout_for(patterns.shape[-1], layout, name)


def to_grid(values: Float[Tensor, "*batch patch"], grid_size: int | None = None) -> Float[Tensor, "*batch g g"]:
    """Patch values (row-major) onto the g x g grid."""
    g = grid_size if grid_size is not None else math.isqrt(values.shape[-1])
    if g * g != values.shape[-1]:
        raise InputError(f"{values.shape[-1]} patch values do not fill a {g} x {g} grid")
    return rearrange(values, "... (gy gx) -> ... gy gx", gy=g, gx=g)


def _renormalised(p: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch n"]:
    return p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


# ----------------------------------------------------------------------------------------- maps


def token_attention(
    patterns: Float[Tensor, "*batch query key"],
    token: int | Literal["readout"] = READOUT,
    renormalise: bool = True,
    layout: TokenLayout | None = None,
) -> Float[Tensor, "*batch patch"]:
    """One query's attention over the N patch keys, renormalised to sum 1 by default.

    token: a position, or "readout" (the class token; the mean of the patch queries' rows for models
    without one, see `TokenLayout.readout`).
    """
    layout = pattern_layout(patterns, layout=layout)
    n_tokens = patterns.shape[-1]
    if token == READOUT:
        row = layout.patches(layout.readout(patterns, dim=-2), -1)
    elif isinstance(token, int) and -n_tokens <= token < n_tokens:
        row = layout.patches(patterns.select(-2, token), -1)
    else:
        raise IndexOutOfRangeError(f"token {token!r} out of range for {n_tokens} tokens (or 'readout')")
    return _renormalised(row) if renormalise else row


def cls_attention(
    patterns: Float[Tensor, "*batch query key"], renormalise: bool = True, layout: TokenLayout | None = None
) -> Float[Tensor, "*batch patch"]:
    """Readout -> patch attention (the class token's row over the patch keys; for models without a class
    token the mean of the patch queries' rows), renormalised over the patches by default."""
    return token_attention(patterns, READOUT, renormalise, layout)


def cls_attention_maps(
    patterns: Float[Tensor, "*batch query key"], renormalise: bool = True, layout: TokenLayout | None = None
) -> Float[Tensor, "*batch g g"]:
    """CLS (readout) attention on the patch grid (for plots): [..., g, g]."""
    return to_grid(cls_attention(patterns, renormalise, layout))


# ----------------------------------------------------------------------------------------- metrics


def attention_entropy(p: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """H(p) = -sum_i p_i ln p_i in nats over the last axis (0 ln 0 = 0). Pass normalised p for an entropy."""
    return -torch.special.xlogy(p, p).sum(-1)


def top_k_concentration(p: Float[Tensor, "*batch n"], k: int = 10) -> Float[Tensor, "*batch"]:
    """Sum of the k largest entries of p (the attention mass on the top-k patches)."""
    if not 1 <= k <= p.shape[-1]:
        raise InputError(f"k must be in [1, {p.shape[-1]}], got {k}")
    return p.topk(k, dim=-1, sorted=False).values.sum(-1)


def patch_distances(
    grid_size: int, patch_size: float, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "patch patch"]:
    """Euclidean distance between patch centres in pixels: patch_size * ||g_i - g_j||_2, [N, N]."""
    ys, xs = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=-1).double()
    return (torch.cdist(centres, centres) * patch_size).to(dtype)


def _config_of(model: Any) -> Any:
    """The ViTConfig of a HookedViT, of an ActivationCache of one (its `.model`), or the config itself; else None."""
    for candidate in (model, getattr(model, "model", None)):
        cfg = getattr(candidate, "cfg", candidate)
        if hasattr(cfg, "patch_size") and hasattr(cfg, "n_layers"):
            return cfg
    return None


def model_geometry(
    model: Any, layout: TokenLayout | None = None, patch_size: float | None = None
) -> tuple[float, TokenLayout]:
    """Patch size in pixels and token layout read from `model`: a HookedViT, its ViTConfig, or an
    ActivationCache of it. A `layout` or `patch_size` also given must agree with the model's (InputError
    otherwise), so a wrong number can never silently rescale distances."""
    cfg = _config_of(model)
    if cfg is None:
        raise InputError(
            f"the geometry comes from the model: pass the HookedViT, its cfg or its ActivationCache, not {model!r} "
            "(a bare patch size cannot be checked against the model that made the patterns)"
        )
    own = token_layout(cfg)
    if layout is not None and layout != own:
        raise InputError(f"layout {layout} contradicts the model's own token layout {own}")
    if patch_size is not None and float(patch_size) != float(cfg.patch_size):
        raise InputError(f"patch_size={patch_size} contradicts the model's patch size of {cfg.patch_size} px")
    return float(cfg.patch_size), own


def geometry(patch_size: Any, layout: TokenLayout | None = None) -> tuple[float, TokenLayout | None]:
    """Patch size in pixels and token layout for the distance formula: read from a model, its ViTConfig or
    its ActivationCache when one is given (`model_geometry`), else the positive number of pixels as given."""
    if _config_of(patch_size) is not None:
        return model_geometry(patch_size, layout)
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, float)) or patch_size <= 0:
        raise InputError(f"patch_size must be a positive number of pixels or the model, got {patch_size!r}")
    return float(patch_size), layout


def mean_attention_distance(
    patterns: Float[Tensor, "*batch query key"],
    patch_size: Any,
    renormalise: bool = True,
    layout: TokenLayout | None = None,
) -> Float[Tensor, "*batch"]:
    """Mean attention distance in pixels (Dosovitskiy et al. 2020): the mean over query patches i of
    sum_j A[i, j] * patch_size * ||g_i - g_j|| over the patch keys j.

    renormalise=True divides each query's patch-key weights by their sum (drops the prefix keys);
    False uses the raw weights (prefix keys then add distance 0). A query with no patch mass counts 0.
    patch_size: the model (or its config or cache) to read the patch size and token layout from, or pixels
    (this formula alone; `attention_metrics`, the analysis, takes only the model).
    """
    patch_size, layout = geometry(patch_size, layout)
    layout = pattern_layout(patterns, layout=layout)
    n_tokens = patterns.shape[-1]
    between_patches = patch_distances(layout.grid[0], patch_size, patterns.dtype).to(patterns.device)
    distances = layout.pad_prefix(between_patches, dims=(-2, -1))
    lead = patterns.shape[:-2]
    flat = patterns.reshape(-1, n_tokens, n_tokens)
    out = torch.empty(flat.shape[0], dtype=patterns.dtype, device=patterns.device)
    rows = max(1, _CHUNK_ELEMENTS // (n_tokens * n_tokens))
    product = torch.empty(min(rows, flat.shape[0]), n_tokens, n_tokens, dtype=patterns.dtype, device=patterns.device)
    tiny = torch.finfo(patterns.dtype).tiny
    for start in range(0, flat.shape[0], rows):  # cache-sized chunks of whole matrices, one reused buffer
        chunk = flat[start : start + rows]
        weighted = torch.mul(chunk, distances, out=product[: chunk.shape[0]])
        per_query = layout.patches(weighted.sum(-1), -1)  # [r, N]
        if renormalise:
            per_query = per_query / layout.patches(layout.patches(chunk, -1), -2).sum(-1).clamp_min(tiny)
        out[start : start + rows] = per_query.mean(-1)
    return out.reshape(lead)


# ----------------------------------------------------------------------------------------- results


@dataclass
class AttentionMetrics:
    """Per-image attention metrics of every layer and head, and the choices behind them.

    Attributes:
        cls_entropy: [batch, layer, head] entropy (nats) of each head's CLS attention.
        cls_entropy_head_mean: [batch, layer] entropy of the head-mean CLS map (mean of the per-head rows).
        cls_top_k: [batch, layer, head] top-k concentration of each head's CLS attention.
        cls_top_k_head_mean: [batch, layer] top-k concentration of the head-mean CLS map.
        mean_distance: [batch, layer, head] mean attention distance in pixels.
        layers: the model layer of each layer index.
        settings: the choices (renormalisation, k).
        cls_attention: optional [batch, layer, head, patch] CLS rows (as normalised for the metrics).
        query: the query the "cls" metrics read: "class token", or "mean over patches" for models without
            one (`TokenLayout.readout_name`).
    """

    cls_entropy: Float[Tensor, "batch layer head"]
    cls_entropy_head_mean: Float[Tensor, "batch layer"]
    cls_top_k: Float[Tensor, "batch layer head"]
    cls_top_k_head_mean: Float[Tensor, "batch layer"]
    mean_distance: Float[Tensor, "batch layer head"]
    layers: tuple[int, ...]
    settings: AttentionSettings
    cls_attention: Float[Tensor, "batch layer head patch"] | None = None
    query: str = "class token"

    @property
    def n_images(self) -> int:
        return self.cls_entropy.shape[0]

    @property
    def top_k_name(self) -> str:
        return f"cls_top{self.settings.k}"

    def head_metrics(self) -> dict[str, Float[Tensor, "batch layer head"]]:
        """Per-head metrics by column name."""
        return {"cls_entropy": self.cls_entropy, self.top_k_name: self.cls_top_k, "mean_distance": self.mean_distance}

    def layer_metrics(self) -> dict[str, Float[Tensor, "batch layer"]]:
        """Per-layer metrics by column name: head means of the per-head metrics, and the head-mean-map variants."""
        return {
            "cls_entropy": self.cls_entropy.mean(-1),
            "cls_entropy_head_mean_map": self.cls_entropy_head_mean,
            self.top_k_name: self.cls_top_k.mean(-1),
            f"{self.top_k_name}_head_mean_map": self.cls_top_k_head_mean,
            "mean_distance": self.mean_distance.mean(-1),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head): mean and std (ddof 1) over images of every per-head metric."""
        import pandas as pd

        _, n_layers, n_heads = self.cls_entropy.shape
        frame = pd.DataFrame(
            {
                "layer": [layer for layer in self.layers for _ in range(n_heads)],
                "head": list(range(n_heads)) * n_layers,
            }
        )
        for name, values in self.head_metrics().items():
            frame[f"{name}_mean"] = values.mean(0).flatten().tolist()
            frame[f"{name}_std"] = _std(values).flatten().tolist()
        frame["n_images"] = self.n_images
        return frame

    def layer_frame(self) -> pd.DataFrame:
        """One row per layer: mean and std over images of the per-layer metrics."""
        import pandas as pd

        frame = pd.DataFrame({"layer": list(self.layers)})
        for name, values in self.layer_metrics().items():
            frame[f"{name}_mean"] = values.mean(0).tolist()
            frame[f"{name}_std"] = _std(values).tolist()
        frame["n_images"] = self.n_images
        return frame

    def image_frame(self) -> pd.DataFrame:
        """Long format: one row per (image, layer, head) with every per-head metric."""
        import pandas as pd

        b, n_layers, n_heads = self.cls_entropy.shape
        index = torch.cartesian_prod(torch.arange(b), torch.arange(n_layers), torch.arange(n_heads))
        frame = pd.DataFrame(
            {
                "image": index[:, 0].tolist(),
                "layer": [self.layers[i] for i in index[:, 1].tolist()],
                "head": index[:, 2].tolist(),
            }
        )
        for name, values in self.head_metrics().items():
            frame[name] = values.flatten().tolist()
        return frame

    def to_dict(self) -> dict[str, Any]:
        """Settings, and per layer x head means and stds as nested lists."""
        return {
            "settings": self.settings.to_dict(),
            "query": self.query,
            "layers": list(self.layers),
            "n_images": self.n_images,
            "per_head_mean": {k: v.mean(0).tolist() for k, v in self.head_metrics().items()},
            "per_head_std": {k: _std(v).tolist() for k, v in self.head_metrics().items()},
            "per_layer_mean": {k: v.mean(0).tolist() for k, v in self.layer_metrics().items()},
        }

    @classmethod
    def stack_layers(cls, parts: Sequence[AttentionMetrics]) -> AttentionMetrics:
        """Join single-layer results of the same images (e.g. computed layer by layer in hooks)."""
        return concat_results(parts, dim=1, extend=("layers",))

    @classmethod
    def concat(cls, parts: Sequence[AttentionMetrics]) -> AttentionMetrics:
        """Join results of image batches (same layers, settings and query) along the image axis."""
        return concat_results(parts)


def _std(values: Tensor) -> Tensor:
    """Std over images (ddof 1); NaN with a single image."""
    if values.shape[0] < 2:
        return torch.full(values.shape[1:], float("nan"))
    return values.std(0)


def attention_metrics(
    patterns: PatternStack,
    model: Any = None,
    settings: AttentionSettings | None = None,
    layers: Sequence[int] | None = None,
    keep_cls_attention: bool = False,
    layout: TokenLayout | None = None,
    *,
    patch_size: float | None = None,
) -> AttentionMetrics:
    """Every attention metric for every image, layer and head of a pattern stack [B, L, H, P, P].

    model: the HookedViT that made the patterns (or its ViTConfig, or its ActivationCache): the patch size
    (pixels) and token layout are read from it, never given apart. A `layout` or `patch_size` also passed
    must agree with the model's (InputError otherwise). `layers` names the model layer of each stacked
    layer (default 0..L-1).
    """
    if model is None or _config_of(model) is None:
        got = f"patch_size={patch_size}" if model is None else repr(model)
        raise InputError(
            f"attention_metrics reads the patch size and token layout from the model: pass the HookedViT (or "
            f"model.cfg, or its ActivationCache) as its second argument, not {got}; a separate patch size "
            "cannot be checked against the model, and a wrong one silently rescales every distance"
        )
    patch_size, layout = model_geometry(model, layout, patch_size)
    settings = settings or AttentionSettings()
    layout = pattern_layout(patterns, ndim=5, layout=layout)
    n_layers = patterns.shape[1]
    layers = tuple(range(n_layers)) if layers is None else tuple(int(layer) for layer in layers)
    if len(layers) != n_layers:
        raise InputError(f"{len(layers)} layer labels for {n_layers} stacked layers")
    if settings.k > layout.n_patches:
        raise InputError(f"k = {settings.k} exceeds the {layout.n_patches} patches")
    with torch.no_grad():
        p = cls_attention(patterns, settings.renormalise, layout)  # [B, L, H, N]
        head_mean = p.mean(2)  # [B, L, N]
        if settings.renormalise:
            head_mean = _renormalised(head_mean)  # exact sum 1 (already up to rounding)
        return AttentionMetrics(
            cls_entropy=attention_entropy(p),
            cls_entropy_head_mean=attention_entropy(head_mean),
            cls_top_k=top_k_concentration(p, settings.k),
            cls_top_k_head_mean=top_k_concentration(head_mean, settings.k),
            mean_distance=mean_attention_distance(patterns, patch_size, settings.distance_renormalise, layout),
            layers=layers,
            settings=settings,
            cls_attention=p.clone() if keep_cls_attention else None,
            query=layout.readout_name,
        )


# ----------------------------------------------------------------------------------------- caching


def stack_patterns(cache: Any, layers: Sequence[int] | None = None) -> PatternStack:
    """Patterns of a transformer_lens ActivationCache stacked to [batch, layer, head, query, key]."""
    n_layers = cache.model.cfg.n_layers if hasattr(cache, "model") else None
    if layers is None:
        if n_layers is None:
            raise InputError("give the layers to stack")
        layers = range(n_layers)
    missing = [layer for layer in layers if get_act_name("pattern", layer) not in cache]
    if missing:
        raise UnknownNameError(
            f"the cache holds no hook_pattern for layers {missing}; cache it with "
            "names_filter=lambda n: n.endswith('hook_pattern')"
        )
    return torch.stack([cache[get_act_name("pattern", layer)] for layer in layers], dim=1)


def resolve_layers(model: HookedViT, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Layer indices (negative counts from the end), checked against the model's depth."""
    if layers is None:
        return tuple(range(model.cfg.n_layers))
    return tuple(model.cfg.layer_index(layer) for layer in layers)


def collect_patterns(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    rows: Literal["all", "cls"] = "all",
    progress: bool = True,
) -> Float[Tensor, "batch layer head query key"] | Float[Tensor, "batch layer head key"]:
    """Run the model in batches caching only the attention patterns, written straight into one tensor.

    rows="all" returns [B, L, H, P, P] (ViT-B/16 in float32: 1.9 MB per layer per image, 22 MB per image for all
    12 layers); rows="cls" keeps only the readout query's rows [B, L, H, P] (197 times smaller): the class
    token's, or the mean of the patch queries' rows for models without one (`TokenLayout.readout`).
    """
    if rows not in ("all", "cls"):
        raise InputError(f"rows must be 'all' or 'cls', got {rows!r}")
    images = on_model_device(model, images)
    model.check_images(images)
    layers = resolve_layers(model, layers)
    cfg = model.cfg
    readout = token_layout(model) if rows == "cls" else None
    shape: tuple[int, ...] = (images.shape[0], len(layers), cfg.n_heads, cfg.n_tokens)
    if rows == "all":
        shape = (*shape, cfg.n_tokens)
    out = torch.empty(shape, dtype=model.dtype, device=model.device)
    logger.info("collecting attention patterns %s (%.1f MiB)", list(shape), out.numel() * out.element_size() / 2**20)
    bar = tqdm(total=images.shape[0], desc="attention patterns", unit="img", disable=not progress)
    for start, batch in image_batches(images, batch_size):
        images_slice = slice(start, start + batch.shape[0])
        hooks: FwdHooks = [
            (get_act_name("pattern", layer), _pattern_writer(out, images_slice, i, readout=readout))
            for i, layer in enumerate(layers)
        ]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(batch, return_type=None, stop_at_layer=_stop_after(layers, cfg.n_layers))
        bar.update(batch.shape[0])
    bar.close()
    return out


def _pattern_writer(out: Tensor, images_slice: slice, index: int, readout: TokenLayout | None) -> Callable[..., None]:
    """A hook writing each pattern into out[images_slice, index] (with a `readout` layout, only the readout
    query's row: `TokenLayout.readout`).

    The slice and layer index are bound when the hook is made, so a hook never writes where a later batch
    or layer would (a closure over the loop variables would read their values at call time).
    """

    def write(pattern: Tensor, hook: Any) -> None:
        out[images_slice, index] = pattern if readout is None else readout.readout(pattern, dim=-2)

    return write


def _stop_after(layers: Sequence[int], n_layers: int) -> int | None:
    """stop_at_layer that runs just the blocks the hooks need (None: all of them)."""
    last = max(layers) + 1
    return None if last >= n_layers else last
