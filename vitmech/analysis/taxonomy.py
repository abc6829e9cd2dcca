"""Head taxonomy: which annotated region each attention head looks at, as numbers with a stated rule.

The head-ablation study of arXiv 2503.18762 calls heads monosemantic or polysemantic, and task-relevant
(the chirp) or not (text, axes, colour bar), by looking at their maps. Here that judgement is computed:

    regions = exclusive_regions(RegionMasks.from_chirps(samples), CHIRP_PRIORITY)   # + "background"
    maps = cls_attention_grid(model, collect_patterns(model, images, rows="cls"), rows="cls")  # [B, L, H, g, g]
    taxonomy = head_taxonomy(maps, regions, task_regions=("chirp",))
    taxonomy.to_frame()                          # one row per head: mass, enrichment, entropy, label
    taxonomy.join_ablation(sweep.to_frame())     # the same rows with each head's ablation effect

Definitions (docs/taxonomy.md#definitions). Each map (a head's class-token attention over the patches,
summing to 1) is upsampled to the image's pixels by nearest neighbour; the regions partition the pixels
(`exclusive_regions`: every pixel belongs to exactly one region type, the rest to "background").

- mass m_r: the share of the head's attention on region r, averaged over the images;
- area a_r: the share of the pixels in region r, averaged over the images;
- enrichment e_r = m_r / a_r (1 for every region under uniform attention);
- entropy H = -sum_r p_r log p_r / log R over the area-normalised distribution p_r = e_r / sum_r e_r
  (0: all attention on one region type, 1: each region type in proportion to its area).

The rule (thresholds are the module constants below):

A region type is *attended* when e_r >= `MIN_ENRICHMENT`.

1. monosemantic when the dominant region type (largest e_r) is attended, holds p_r >=
   `MONOSEMANTIC_MIN_SHARE` of the area-normalised distribution, and H <= `MONOSEMANTIC_MAX_ENTROPY`:
   "task-relevant monosemantic" when that region is a task region (the chirp; the galaxy's bar, arms or
   bulge), else "off-task monosemantic" (the region is named in `dominant`);
2. otherwise "polysemantic" when at least `POLYSEMANTIC_MIN_REGIONS` region types are attended;
3. otherwise "diffuse" (no region type attended, or one only weakly above the rest).

A region covering a share a of the image can reach at most e = 1 / a, so a region over 1 / MIN_ENRICHMENT
of the pixels can never be attended; the thresholds suit regions of up to about half the image.

Every map reaches the table through a few tensor contractions (`region_mass`), never a loop over heads;
`tests/unit/test_taxonomy.py` checks them against a naive per-pixel loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

from vitmech.analysis.alignment import RegionMasks
from vitmech.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    import pandas as pd

MONOSEMANTIC_MAX_ENTROPY = 0.5
"""Highest normalised entropy (0..1) of the area-normalised region distribution for a monosemantic head."""
MONOSEMANTIC_MIN_SHARE = 0.6
"""Smallest share p of the dominant region in the area-normalised distribution for a monosemantic head (two
equally attended regions have 0.5 each: polysemantic)."""
MIN_ENRICHMENT = 1.5
"""A head attends a region when its mass there is at least this many times the region's area share."""
POLYSEMANTIC_MIN_REGIONS = 2
"""Attended region types (enrichment >= MIN_ENRICHMENT) that make a head polysemantic."""

BACKGROUND = "background"
CHIRP_PRIORITY: tuple[str, ...] = ("chirp", "colorbar", "text", "axis")
"""Chirp region types in the order that claims a pixel (the chirp's box lies inside the axes box)."""
GALAXY_PRIORITY: tuple[str, ...] = ("bar", "bulge", "arms")
"""Galaxy region types in the order that claims a pixel; the rest of the image is the sky."""
SKY = "sky"
CHIRP_TASK_REGIONS: tuple[str, ...] = ("chirp",)
GALAXY_TASK_REGIONS: tuple[str, ...] = ("bar", "arms", "bulge")

TASK = "task-relevant monosemantic"
OFF_TASK = "off-task monosemantic"
POLYSEMANTIC = "polysemantic"
DIFFUSE = "diffuse"
LABELS: tuple[str, ...] = (TASK, OFF_TASK, POLYSEMANTIC, DIFFUSE)


def exclusive_regions(
    regions: RegionMasks, priority: Sequence[str] | None = None, background: str = BACKGROUND
) -> RegionMasks:
    """The regions made disjoint, plus `background` (the pixels in none of them).

    A pixel in several regions goes to the first of them in `priority` (default: the masks' own order);
    regions not named in `priority` are dropped. The result partitions every image's pixels."""
    order = list(priority) if priority is not None else list(regions.names)
    if background in order:
        raise InputError(f"{background!r} is added as the rest of the image; do not list it among {order}")
    masks = regions.select(order).masks
    claimed = torch.zeros_like(masks[:, 0])
    out = []
    for r in range(masks.shape[1]):
        own = masks[:, r] & ~claimed
        out.append(own)
        claimed = claimed | own
    out.append(~claimed)
    return RegionMasks(torch.stack(out, 1), (*order, background))


def region_mass(
    maps: Float[Tensor, "batch *units gh gw"], regions: RegionMasks
) -> tuple[Float[Tensor, "batch *units region"], Float[Tensor, "batch region"]]:
    """Share of each map's total on each region (nearest upsampling to the masks' pixels) and each
    region's area share |R| / N. Maps are normalised to sum 1 here (non-negative maps, e.g. attention)."""
    if maps.shape[0] != len(regions):
        raise InputError(f"{maps.shape[0]} maps but region masks for {len(regions)} images")
    if bool((maps < 0).any()):
        raise InputError("region mass needs non-negative maps (attention weights)")
    grid = (int(maps.shape[-2]), int(maps.shape[-1]))
    counts, cells = regions.grid_counts(grid)  # [B, R, cell], [cell]
    flat = rearrange(maps.float(), "b ... gh gw -> b ... (gh gw)")
    flat = flat / flat.sum(-1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    share = counts / cells  # fraction of each cell's pixels in each region
    mass = einsum(flat, share, "b ... c, b r c -> b ... r")
    area = counts.sum(-1) / cells.sum()
    return mass, area


def normalised_entropy(enrichment: Float[Tensor, "*units region"]) -> Float[Tensor, " *units"]:
    """-sum p log p / log R of p = e / sum e (0 log 0 = 0); 0 for one region type, 1 for uniform."""
    n = enrichment.shape[-1]
    if n < 2:
        raise InputError("the entropy over region types needs at least two region types")
    p = enrichment / enrichment.sum(-1, keepdim=True).clamp_min(torch.finfo(enrichment.dtype).tiny)
    terms = torch.where(p > 0, p * p.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.zeros_like(p))
    return -terms.sum(-1) / math.log(n)


def classify(
    enrichment: Float[Tensor, "*units region"],
    region_names: Sequence[str],
    task_regions: Sequence[str],
    *,
    max_entropy: float = MONOSEMANTIC_MAX_ENTROPY,
    min_share: float = MONOSEMANTIC_MIN_SHARE,
    min_enrichment: float = MIN_ENRICHMENT,
    min_regions: int = POLYSEMANTIC_MIN_REGIONS,
) -> tuple[np.ndarray, np.ndarray, Float[Tensor, " *units"]]:
    """The rule of the module docstring: (label per unit, dominant region per unit, entropy per unit)."""
    unknown = [r for r in task_regions if r not in region_names]
    if unknown:
        raise UnknownNameError(f"task regions {unknown} are not among the regions {list(region_names)}")
    entropy = normalised_entropy(enrichment)
    top = enrichment.argmax(-1)
    top_value = enrichment.max(-1).values
    attended = (enrichment >= min_enrichment).sum(-1)
    names = np.asarray(region_names, dtype=object)
    dominant = names[top.cpu().numpy()]
    is_task = np.isin(dominant, np.asarray(task_regions, dtype=object))
    top_share = top_value / enrichment.sum(-1).clamp_min(torch.finfo(enrichment.dtype).tiny)
    mono = ((top_value >= min_enrichment) & (top_share >= min_share) & (entropy <= max_entropy)).cpu().numpy()
    poly = (attended >= min_regions).cpu().numpy()
    labels = np.where(mono, np.where(is_task, TASK, OFF_TASK), np.where(poly, POLYSEMANTIC, DIFFUSE)).astype(object)
    return labels, dominant, entropy


@dataclass
class HeadTaxonomy:
    """Per head: attention mass, area, enrichment and entropy over region types, and its label.

    Attributes:
        mass: [layer, head, region] mean over images of the share of the head's attention on each region.
        mass_se: [layer, head, region] standard error of that mean over images (0 for one image).
        area: [region] mean area share of each region.
        enrichment: [layer, head, region] mass / area.
        entropy: [layer, head] normalised entropy of the area-normalised distribution (0..1).
        labels: [layer, head] one of `LABELS`.
        dominant: [layer, head] region with the largest enrichment.
        region_names, task_regions: the region axis and which of its entries are the task's.
        thresholds: the rule's thresholds used.
        n_images: images averaged over.
    """

    mass: Float[Tensor, "layer head region"]
    mass_se: Float[Tensor, "layer head region"]
    area: Float[Tensor, " region"]
    enrichment: Float[Tensor, "layer head region"]
    entropy: Float[Tensor, "layer head"]
    labels: np.ndarray
    dominant: np.ndarray
    region_names: tuple[str, ...]
    task_regions: tuple[str, ...]
    thresholds: dict[str, float] = field(default_factory=dict)
    n_images: int = 0

    def counts(self) -> dict[str, int]:
        """Heads per label (every label listed, zeros included)."""
        return {label: int((self.labels == label).sum()) for label in LABELS}

    def to_frame(self) -> pd.DataFrame:
        """One row per head: label, dominant region, entropy, and mass / enrichment per region."""
        import pandas as pd

        n_layers, n_heads = self.entropy.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        frame = pd.DataFrame(
            {
                "layer": layer.ravel(),
                "head": head.ravel(),
                "label": self.labels.ravel(),
                "dominant_region": self.dominant.ravel(),
                "entropy": self.entropy.double().cpu().numpy().ravel(),
            }
        )
        mass = self.mass.double().cpu().numpy().reshape(n_layers * n_heads, -1)
        enrichment = self.enrichment.double().cpu().numpy().reshape(n_layers * n_heads, -1)
        for j, name in enumerate(self.region_names):
            frame[f"mass_{name}"] = mass[:, j]
        for j, name in enumerate(self.region_names):
            frame[f"enrichment_{name}"] = enrichment[:, j]
        return frame

    def join_ablation(self, ablation: pd.DataFrame) -> pd.DataFrame:
        """`to_frame()` with each head's ablation effect (a head sweep's `to_frame()`: layer, head, delta,
        pct_change, delta_se, ...) beside it; `significant` marks |delta| >= 2 standard errors."""
        needed = {"layer", "head", "delta"}
        if not needed <= set(ablation.columns):
            raise UnknownNameError(f"the ablation table needs columns {sorted(needed)}, got {list(ablation.columns)}")
        keep = [c for c in ("layer", "head", "delta", "pct_change", "delta_se") if c in ablation.columns]
        frame = self.to_frame().merge(ablation[keep], on=["layer", "head"], how="left", validate="one_to_one")
        if "delta_se" in frame:
            frame["significant"] = frame["delta"].abs() >= 2 * frame["delta_se"]
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "region_names": list(self.region_names),
            "task_regions": list(self.task_regions),
            "thresholds": dict(self.thresholds),
            "n_images": self.n_images,
            "area": self.area.tolist(),
            "mass": self.mass.tolist(),
            "enrichment": self.enrichment.tolist(),
            "entropy": self.entropy.tolist(),
            "labels": self.labels.tolist(),
            "dominant": self.dominant.tolist(),
            "counts": self.counts(),
        }


def head_taxonomy(
    maps: Float[Tensor, "batch layer head gh gw"],
    regions: RegionMasks,
    task_regions: Sequence[str],
    *,
    max_entropy: float = MONOSEMANTIC_MAX_ENTROPY,
    min_share: float = MONOSEMANTIC_MIN_SHARE,
    min_enrichment: float = MIN_ENRICHMENT,
    min_regions: int = POLYSEMANTIC_MIN_REGIONS,
) -> HeadTaxonomy:
    """Label every head of `maps` (e.g. `cls_attention_grid` of `collect_patterns(..., rows="cls")`) against
    disjoint `regions` (see `exclusive_regions`); `task_regions` name the regions the task is about."""
    if maps.ndim != 5:
        raise InputError(f"maps must be [batch, layer, head, gh, gw], got {list(maps.shape)}")
    coverage = regions.masks.sum(1)
    if bool((coverage != 1).any()):
        raise InputError(
            "the regions must partition the pixels (each pixel in exactly one region); "
            "pass them through exclusive_regions(...) first"
        )
    per_image, area_per_image = region_mass(maps, regions)  # [B, L, H, R], [B, R]
    n = per_image.shape[0]
    mass = per_image.mean(0)
    mass_se = per_image.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.zeros_like(mass)
    area = area_per_image.mean(0)
    enrichment = mass / area.clamp_min(torch.finfo(area.dtype).tiny)
    labels, dominant, entropy = classify(
        enrichment,
        regions.names,
        task_regions,
        max_entropy=max_entropy,
        min_share=min_share,
        min_enrichment=min_enrichment,
        min_regions=min_regions,
    )
    thresholds = {
        "monosemantic_max_entropy": max_entropy,
        "monosemantic_min_share": min_share,
        "min_enrichment": min_enrichment,
        "polysemantic_min_regions": min_regions,
    }
    return HeadTaxonomy(
        mass, mass_se, area, enrichment, entropy, labels, dominant, regions.names, tuple(task_regions), thresholds, n
    )


__all__ = [
    "BACKGROUND",
    "CHIRP_PRIORITY",
    "CHIRP_TASK_REGIONS",
    "DIFFUSE",
    "GALAXY_PRIORITY",
    "GALAXY_TASK_REGIONS",
    "LABELS",
    "MIN_ENRICHMENT",
    "MONOSEMANTIC_MAX_ENTROPY",
    "MONOSEMANTIC_MIN_SHARE",
    "OFF_TASK",
    "POLYSEMANTIC",
    "POLYSEMANTIC_MIN_REGIONS",
    "SKY",
    "TASK",
    "HeadTaxonomy",
    "classify",
    "exclusive_regions",
    "head_taxonomy",
    "normalised_entropy",
    "region_mass",
]
