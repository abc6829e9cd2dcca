"""Activation patching on pairs of images: copy one site's activation from a source run into a target run
and measure how much of the clean-vs-corrupted difference of a metric it restores (Meng et al. 2022,
arXiv 2202.05262; Heimersheim & Nanda 2024, arXiv 2404.15255, for the conventions).

Sites (`Site`): the residual stream entering a block (`resid_pre`, per token position or all), a layer's
attention output (`attn_out`), its MLP output (`mlp_out`), or one head's context vector z before W_O
(`head`; at every position, the class token only, the patch tokens, or any positions). Positions come from
`vitmech.tokens.token_layout`, so models with registers or a distillation token work unchanged.

Restored fraction of a metric m (one value per image, averaged over the batch):

    restored = (m(patched) - m(corrupted)) / (m(clean) - m(corrupted))

1 when the patch brings back the clean value, 0 when it does nothing. The default patches clean
activations into the corrupted run ("denoising"); `source` and `target` choose the two runs.

The exact engine ("suffix recompute", as the ablation engine): nothing before a site's layer changes, so it
caches the target run's residual stream entering each patched layer once, stacks k sites of one layer along
the batch axis ("(k b)" rows, site-major) and re-runs the model from that layer only, with one hook per
patched hook point that swaps in the source activation where each site's mask says so. `engine="naive"` runs
one full forward per site instead (the reference the tests compare with).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from einops import rearrange, repeat
from jaxtyping import Float
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.metrics import Metric, MetricLike, resolve_metric
from vitmech.errors import PatchingError
from vitmech.model.hooked_vit import HookedViT
from vitmech.tokens import token_layout

SiteKind = Literal["resid_pre", "attn_out", "mlp_out", "head", "q", "k", "v"]
SITE_KINDS: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "head", "q", "k", "v")
HEAD_KINDS: tuple[str, ...] = ("head", "q", "k", "v")
Run = Literal["clean", "corrupted"]
Engine = Literal["exact", "naive"]
PositionsLike = Literal["all", "cls", "patches"] | int | Sequence[int] | None
Hooks = list[tuple[str | Callable[..., Any], Callable[..., Any]]]

_ACT_NAMES = {
    "resid_pre": "resid_pre",
    "attn_out": "attn_out",
    "mlp_out": "mlp_out",
    "head": "z",
    "q": "q",
    "k": "k",
    "v": "v",
}
"""Site kind -> transformer_lens activation name; `get_act_name(name, layer)` spells the hook."""


@dataclass(frozen=True)
class Site:
    """One place to patch.

    Attributes:
        kind: "resid_pre", "attn_out", "mlp_out", "head" (its z), or one head's "q", "k" or "v".
        layer: block index.
        head: head index (per-head kinds only).
        positions: token positions patched (None: every position).
        label: how tables and figures name it.
    """

    kind: SiteKind
    layer: int
    head: int | None = None
    positions: tuple[int, ...] | None = None
    label: str = ""

    @property
    def hook_name(self) -> str:
        return get_act_name(_ACT_NAMES[self.kind], self.layer)

    def describe(self) -> str:
        if self.label:
            return self.label
        where = f"L{self.layer}" + (f"H{self.head}" if self.head is not None else "")
        pos = "" if self.positions is None else f"@{','.join(map(str, self.positions))}"
        return f"{self.kind}:{where}{pos}"


def resolve_positions(model: HookedViT, positions: PositionsLike) -> tuple[int, ...] | None:
    """Token positions from "all" (None), "cls", "patches", one index or a sequence of indices."""
    layout = token_layout(model)
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if isinstance(positions, str):
        if positions == "cls":
            return (layout.require_class_token("patching the class token"),)
        if positions == "patches":
            return tuple(range(layout.n_prefix, layout.n_tokens))
        raise PatchingError(f"positions must be 'all', 'cls', 'patches' or token indices, got {positions!r}")
    values = (int(positions),) if isinstance(positions, (int, np.integer)) else tuple(int(p) for p in positions)
    bad = [p for p in values if not 0 <= p < layout.n_tokens]
    if bad or not values:
        raise PatchingError(f"token positions must be in [0, {layout.n_tokens}), got {list(values)}")
    return values


def _check_layer(model: HookedViT, layer: int) -> int:
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < model.cfg.n_layers:
        raise PatchingError(f"layer {layer!r} out of range [0, {model.cfg.n_layers})")
    return int(layer)


def layer_sites(
    model: HookedViT, kinds: Sequence[SiteKind] = ("resid_pre", "attn_out", "mlp_out"), positions: PositionsLike = None
) -> list[Site]:
    """One site per layer and kind (all positions by default)."""
    pos = resolve_positions(model, positions)
    for kind in kinds:
        if kind not in SITE_KINDS or kind == "head":
            raise PatchingError(f"layer sites are 'resid_pre', 'attn_out' or 'mlp_out', got {kind!r}")
    return [Site(kind, layer, positions=pos) for layer in range(model.cfg.n_layers) for kind in kinds]


def head_sites(model: HookedViT, positions: PositionsLike = "all", layers: Iterable[int] | None = None) -> list[Site]:
    """One site per head: its z at every position ("all"), the class token ("cls"), the patches, or given positions."""
    pos = resolve_positions(model, positions)
    chosen = range(model.cfg.n_layers) if layers is None else [_check_layer(model, layer) for layer in layers]
    return [
        Site("head", layer, head=h, positions=pos) for layer in chosen for h in range(model.cfg.heads_in_layer(layer))
    ]


def position_sites(
    model: HookedViT, kind: SiteKind = "resid_pre", layers: Iterable[int] | None = None, head: int | None = None
) -> list[Site]:
    """One site per (layer, token position): the residual stream (or an output) at each token, for maps on the grid."""
    if kind == "head" and head is None:
        raise PatchingError("position sites of kind 'head' need head=")
    chosen = range(model.cfg.n_layers) if layers is None else [_check_layer(model, layer) for layer in layers]
    n_tokens = token_layout(model).n_tokens
    return [
        Site(kind, layer, head=head if kind == "head" else None, positions=(p,))
        for layer in chosen
        for p in range(n_tokens)
    ]


def _check_sites(model: HookedViT, sites: Sequence[Site]) -> list[Site]:
    if not sites:
        raise PatchingError("no sites to patch")
    n_tokens = token_layout(model).n_tokens
    for site in sites:
        if not isinstance(site, Site):
            raise PatchingError(f"sites must be Site objects (see head_sites / layer_sites), got {type(site).__name__}")
        if site.kind not in SITE_KINDS:
            raise PatchingError(f"site kind must be one of {SITE_KINDS}, got {site.kind!r}")
        _check_layer(model, site.layer)
        if (site.kind in HEAD_KINDS) != (site.head is not None):
            raise PatchingError(f"{site.describe()}: a head index goes with the per-head kinds {HEAD_KINDS} only")
        if site.head is not None and not 0 <= site.head < model.cfg.heads_in_layer(site.layer):
            raise PatchingError(f"{site.describe()}: head out of range [0, {model.cfg.heads_in_layer(site.layer)})")
        if site.positions is not None and (not site.positions or any(not 0 <= p < n_tokens for p in site.positions)):
            raise PatchingError(f"{site.describe()}: positions must be in [0, {n_tokens})")
    return list(sites)


def check_pair(model: HookedViT, clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    """PatchingError (or ImageInputError) unless clean and corrupted are valid model inputs of the same shape."""
    model.check_images(clean)
    model.check_images(corrupted)
    if clean.shape != corrupted.shape:
        raise PatchingError(
            f"clean and corrupted images must pair up one to one; got {list(clean.shape)} and {list(corrupted.shape)}"
        )


def _site_mask(site: Site | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean mask over one example's activation at a hook: [P, 1] for [P, d] activations, [P, H, 1] for
    per-head ones [P, H, d_head]; all False for site None (a site of the chunk patching another hook)."""
    mask = torch.zeros(shape[0], *([shape[1]] if len(shape) == 3 else []), 1, dtype=torch.bool)
    if site is None:
        return mask
    rows = slice(None) if site.positions is None else list(site.positions)
    if site.kind in HEAD_KINDS:
        mask[rows, site.head] = True
    else:
        mask[rows] = True
    return mask


@torch.no_grad()
def patched_outputs(
    model: HookedViT,
    source: Float[torch.Tensor, "batch c h w"],
    target: Float[torch.Tensor, "batch c h w"],
    sites: Sequence[Site],
    output: Literal["logits", "features", "embeddings", "tokens"] = "logits",
    max_rows: int = 256,
    engine: Engine = "exact",
) -> torch.Tensor:
    """The target run's output with each site patched from the source run: [n_sites, B, ...].

    engine: "exact" (batched suffix recompute; max_rows bounds the stacked batch, sites x images, of one
    suffix run) or "naive" (one full forward of the target images per site: the reference).
    """
    if engine not in ("exact", "naive"):
        raise PatchingError(f"engine must be 'exact' or 'naive', got {engine!r}")
    sites = _check_sites(model, sites)
    check_pair(model, source, target)
    source_cache = cached(model, source, sorted({s.hook_name for s in sites}))
    if engine == "naive":
        return _one_forward_per_site(model, target, sites, source_cache, output)
    return outputs_with_sources(model, target, sites, source_cache, output=output, max_rows=max_rows)


def cached(model: HookedViT, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The activations `names` of one run on `images` (no output computed)."""
    _, cache = model.run_with_cache(images, names_filter=list(names), return_type=None, return_cache_object=False)
    return cast(dict[str, torch.Tensor], cache)


@torch.no_grad()
def outputs_with_sources(
    model: HookedViT,
    target: Float[torch.Tensor, "batch c h w"],
    sites: Sequence[Site],
    sources: Mapping[str, torch.Tensor],
    output: Literal["logits", "features", "embeddings", "tokens"] = "logits",
    max_rows: int = 256,
    start_resid: Mapping[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The target run's output with each site's activation taken from `sources[site.hook_name]` (same
    shape as the target run's activation there): [n_sites, B, ...]. The batched suffix engine behind
    `patched_outputs` and path patching; `start_resid` may give the target run's resid_pre per layer."""
    sites = _check_sites(model, sites)
    batch = target.shape[0]
    layers = sorted({s.layer for s in sites})
    if start_resid is None or any(layer not in start_resid for layer in layers):
        start_names = [get_act_name("resid_pre", layer) for layer in layers]
        cache = cached(model, target, start_names)
        start_resid = {layer: cache[get_act_name("resid_pre", layer)] for layer in layers}
    per_chunk = max(1, max_rows // batch)
    results: list[torch.Tensor | None] = [None] * len(sites)
    for layer in layers:
        indices = [i for i, s in enumerate(sites) if s.layer == layer]
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            k = len(chunk)
            resid = repeat(start_resid[layer], "b p d -> (k b) p d", k=k)
            hooks: Hooks = []
            for name in sorted({sites[i].hook_name for i in chunk}):
                src = sources[name]
                masks = torch.stack(
                    [_site_mask(sites[i] if sites[i].hook_name == name else None, tuple(src.shape[1:])) for i in chunk]
                ).to(src.device)
                hooks.append((name, _swap_hook(src, masks)))
            out = model.run_with_hooks(resid, start_at_layer=layer, return_type=output, fwd_hooks=hooks)
            out = rearrange(out, "(k b) ... -> k b ...", k=k)
            for j, i in enumerate(chunk):
                results[i] = out[j]
    return torch.stack([r for r in results if r is not None])


def _swap_hook(source: torch.Tensor, masks: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """Hook replacing, in variant k's rows, the activation by `source` where masks[k] is True."""
    k = masks.shape[0]

    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        stacked = rearrange(activation, "(k b) ... -> k b ...", k=k)
        swapped = torch.where(masks[:, None], source[None].to(activation.dtype), stacked)
        return rearrange(swapped, "k b ... -> (k b) ...")

    return hook


def _one_forward_per_site(
    model: HookedViT,
    target: Float[torch.Tensor, "batch c h w"],
    sites: Sequence[Site],
    sources: Mapping[str, torch.Tensor],
    output: Literal["logits", "features", "embeddings", "tokens"],
) -> torch.Tensor:
    """`patched_outputs`' naive engine: each site patched in its own full forward of `target`, [n_sites, B, ...]."""
    outputs = []
    for site in sites:
        clean = sources[site.hook_name]

        def patch(activation: torch.Tensor, hook: Any, site: Site = site, clean: torch.Tensor = clean) -> torch.Tensor:
            positions = slice(None) if site.positions is None else list(site.positions)
            patched = activation.clone()
            if site.kind in HEAD_KINDS:
                patched[:, positions, site.head] = clean[:, positions, site.head]
            else:
                patched[:, positions] = clean[:, positions]
            return patched

        outputs.append(model.run_with_hooks(target, return_type=output, fwd_hooks=[(site.hook_name, patch)]))
    return torch.stack(outputs)


@dataclass
class PatchingResult:
    """Activation patching over sites.

    Attributes:
        sites: the patched sites, in order.
        values: the metric with each site patched, per image [n_sites, B].
        clean: the metric on the clean run [B]; corrupted: on the corrupted run [B].
        metric: the metric's description (name and parameters).
        source, target: which run gave the activations and which run was patched.
        n_tokens, grid, n_prefix: the token layout (for maps on the patch grid).
    """

    sites: list[Site]
    values: Float[torch.Tensor, "site batch"]
    clean: Float[torch.Tensor, " batch"]
    corrupted: Float[torch.Tensor, " batch"]
    metric: dict[str, Any]
    source: str = "clean"
    target: str = "corrupted"
    grid: tuple[int, int] = (0, 0)
    n_prefix: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """mean m(clean) - mean m(corrupted): the difference patching can restore."""
        return float(self.clean.mean() - self.corrupted.mean())

    @property
    def restored(self) -> Float[torch.Tensor, " site"]:
        """(mean m(patched) - mean m(corrupted)) / gap per site; NaN when the gap is zero."""
        gap = self.gap
        if gap == 0 or not math.isfinite(gap):
            return torch.full((len(self.sites),), float("nan"))
        return (self.values.mean(1) - self.corrupted.mean()) / gap

    @property
    def restored_se(self) -> Float[torch.Tensor, " site"]:
        """Standard error of `restored` over images (paired: per-image m(patched) - m(corrupted)), the gap held fixed."""
        n = self.values.shape[1]
        if n < 2:
            return torch.full((len(self.sites),), float("nan"))
        diff = self.values - self.corrupted[None]
        return diff.std(1, unbiased=True) / math.sqrt(n) / abs(self.gap)

    def to_frame(self) -> pd.DataFrame:
        rows = []
        restored, se = self.restored, self.restored_se
        for i, site in enumerate(self.sites):
            rows.append(
                {
                    "site": site.describe(),
                    "kind": site.kind,
                    "layer": site.layer,
                    "head": site.head,
                    "positions": "all" if site.positions is None else ",".join(map(str, site.positions)),
                    "patched": float(self.values[i].mean()),
                    "restored": float(restored[i]),
                    "restored_se": float(se[i]),
                }
            )
        return pd.DataFrame(rows)

    def head_grid(self) -> Float[np.ndarray, "layer head"]:
        """Restored fraction of the head sites as [n_layers, n_heads] (NaN where a head was not patched);
        each head must appear once."""
        heads = [(i, s) for i, s in enumerate(self.sites) if s.kind == "head"]
        if not heads:
            raise PatchingError("no head sites in this result")
        n_layers = max(s.layer for _, s in heads) + 1
        n_heads = max(s.head for _, s in heads if s.head is not None) + 1
        grid = np.full((n_layers, n_heads), np.nan)
        restored = self.restored.numpy()
        for i, s in heads:
            if not np.isnan(grid[s.layer, s.head]):
                raise PatchingError(f"head L{s.layer}H{s.head} appears more than once; select one position set")
            grid[s.layer, s.head] = restored[i]
        return grid

    def position_grid(self, kind: SiteKind = "resid_pre", head: int | None = None) -> Float[np.ndarray, "layer gh gw"]:
        """Restored fraction of single-position sites of `kind` on the patch grid: [n_layers, rows, cols]
        (NaN where not patched). `prefix_values` has the prefix tokens (class token, registers)."""
        grid = np.full((self._n_layers(), *self.grid), np.nan)
        restored = self.restored.numpy()
        for i, s in enumerate(self.sites):
            if s.kind != kind or s.head != head or s.positions is None or len(s.positions) != 1:
                continue
            patch = s.positions[0] - self.n_prefix
            if patch >= 0:
                grid[s.layer, patch // self.grid[1], patch % self.grid[1]] = restored[i]
        return grid

    def prefix_values(self, kind: SiteKind = "resid_pre", head: int | None = None) -> Float[np.ndarray, "layer prefix"]:
        """Restored fraction at the prefix tokens for single-position sites: [n_layers, n_prefix]."""
        out = np.full((self._n_layers(), self.n_prefix), np.nan)
        restored = self.restored.numpy()
        for i, s in enumerate(self.sites):
            if s.kind != kind or s.head != head or s.positions is None or len(s.positions) != 1:
                continue
            if s.positions[0] < self.n_prefix:
                out[s.layer, s.positions[0]] = restored[i]
        return out

    def _n_layers(self) -> int:
        return max(s.layer for s in self.sites) + 1


def restored_fraction(
    patched: Float[torch.Tensor, "... batch"],
    clean: Float[torch.Tensor, " batch"],
    corrupted: Float[torch.Tensor, " batch"],
) -> Float[torch.Tensor, "..."]:
    """(mean patched - mean corrupted) / (mean clean - mean corrupted), over the last (image) axis."""
    return (patched.mean(-1) - corrupted.mean()) / (clean.mean() - corrupted.mean())


@torch.no_grad()
def activation_patching(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted: Float[torch.Tensor, "batch c h w"],
    metric: MetricLike,
    sites: Sequence[Site],
    targets: torch.Tensor | None = None,
    source: Run = "clean",
    target: Run = "corrupted",
    engine: Engine = "exact",
    max_rows: int = 256,
) -> PatchingResult:
    """Patch each site from the `source` run into the `target` run and score the metric.

    Args:
        model: a HookedViT (eval mode).
        clean, corrupted: paired images [B, C, S, S] (image i of one is the counterfactual of image i of the other).
        metric: a name ("logit_diff", "cross_entropy", ...), a `Metric` (e.g. `logit_diff(a, b)`,
            `class_logit(k)` for a regression output k) or a function output -> [B].
        sites: from `head_sites`, `layer_sites`, `position_sites` or built by hand.
        targets: labels or regression values the metric needs (the clean images' labels, usually).
        source, target: "clean" into "corrupted" (default, denoising) or any other pair.
        engine: "exact" (batched suffix recompute) or "naive" (one forward per site).
        max_rows: the exact engine's largest stacked batch.
    """
    metric_obj: Metric = resolve_metric(metric)
    metric_obj.check_model(model)
    check_pair(model, clean, corrupted)
    for name, run in (("source", source), ("target", target)):
        if run not in ("clean", "corrupted"):
            raise PatchingError(f"{name} must be 'clean' or 'corrupted', got {run!r}")
    runs = {"clean": clean, "corrupted": corrupted}
    kind = metric_obj.output
    clean_out = model(clean, return_type=kind)
    corrupted_out = model(corrupted, return_type=kind)

    def score(out: torch.Tensor) -> torch.Tensor:
        return metric_obj(out, clean=clean_out, targets=targets).detach().float().cpu()

    outs = patched_outputs(model, runs[source], runs[target], sites, output=kind, max_rows=max_rows, engine=engine)
    layout = token_layout(model)
    return PatchingResult(
        sites=list(sites),
        values=torch.stack([score(o) for o in outs]),
        clean=score(clean_out),
        corrupted=score(corrupted_out),
        metric=metric_obj.to_dict(),
        source=source,
        target=target,
        grid=layout.grid,
        n_prefix=layout.n_prefix,
    )
