"""Attention-annotation alignment over a whole dataset, one batch at a time (and across ranks).

    regions = RegionMasks.from_galaxies(batch)                 # or a function (start, stop) -> RegionMasks
    result = stream_alignment(model, images, regions)          # AlignmentResult over every image

The class-token attention of every (layer, head) is scored batch by batch with `alignment_scores`
(docs/alignment.md); only the per-image scores [image, layer, head, region] are kept, never patterns or
masks of more than one batch. The result equals `alignment_scores` on one big batch (tested). Under
`torchrun` batches are dealt out as in `vitmech.analysis.streaming` and every rank returns the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vitmech.analysis.alignment import AlignmentResult, RegionMasks, alignment_scores, cls_attention_grid
from vitmech.analysis.attention import collect_patterns, resolve_layers
from vitmech.analysis.streaming import _at_least_float32, _gather_images, _progress, iter_batches
from vitmech.device import check_precision, forward_precision
from vitmech.distributed import current
from vitmech.errors import BatchSourceError

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

RegionSource = RegionMasks | Callable[[int, int], RegionMasks]
_PER_IMAGE = ("iou", "energy", "pointing", "area_share", "iou_chance", "k")


def _regions_for(regions: RegionSource, start: int, stop: int) -> RegionMasks:
    if isinstance(regions, RegionMasks):
        if stop > len(regions):
            raise BatchSourceError(f"the stream has more images ({stop}+) than regions ({len(regions)})")
        return regions.subset(range(start, stop))
    found = regions(start, stop)
    if not isinstance(found, RegionMasks) or len(found) != stop - start:
        raise BatchSourceError(f"regions({start}, {stop}) must return RegionMasks of {stop - start} images")
    return found


def stream_alignment(
    model: HookedViT,
    source: Any,
    regions: RegionSource,
    *,
    q: float | None = None,
    upsample: str = "nearest",
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    image_key: str | None = None,
    progress: bool = True,
) -> AlignmentResult:
    """Alignment of every (layer, head)'s class-token attention map with `regions`, streamed over `source`.

    Args:
        source: any batch source of `vitmech.analysis.streaming.iter_batches` (tensor, HF Dataset, folder,
            DataLoader); image i of the stream is scored against region image i.
        regions: RegionMasks of every image, or a function (start, stop) -> RegionMasks of images
            [start, stop) of the stream (constant memory for large sets).
        q, upsample: as `alignment_scores`.
    Returns:
        AlignmentResult with unit axes ("layer", "head"): [image, layer, head, region] scores.
    """
    check_precision(precision)
    layers = resolve_layers(model, layers)
    ranks = current()
    local: list[tuple[int, dict[str, Tensor]]] = []
    first: AlignmentResult | None = None
    bar = _progress(source, progress, "alignment", ranks)
    for batch in iter_batches(source, batch_size=batch_size, ranks=ranks, image_key=image_key):
        pixels = batch.pixels(model)
        with torch.no_grad(), forward_precision(precision, model.device):
            rows = collect_patterns(
                model, pixels, layers=layers, batch_size=pixels.shape[0], rows="cls", progress=False
            )
        maps = cls_attention_grid(model, _at_least_float32(rows), rows="cls")  # [B, L, H, gh, gw]
        result = alignment_scores(
            maps,
            _regions_for(regions, batch.start, batch.start + batch.size),
            q=q,
            upsample=upsample,  # type: ignore[arg-type]  # checked by alignment_scores
            unit_names=("layer", "head"),
            source="cls attention",
        )
        first = first or result
        local.append((batch.start, {name: getattr(result, name) for name in _PER_IMAGE}))
        bar.update(batch.size)
    bar.close()
    gathered = _gather_images(local)
    if not gathered:
        raise BatchSourceError("the batch source yielded no images")
    template = first
    if template is None:  # settings and names come from this rank's own first batch
        raise BatchSourceError("this rank received no batch: use fewer ranks than batches")
    return AlignmentResult(
        **gathered,
        unit_names=template.unit_names,
        region_names=template.region_names,
        settings={**template.settings, "layers": list(layers)},
        source=template.source,
    )
