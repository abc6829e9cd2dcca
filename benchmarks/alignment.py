"""Cost of the whole alignment table (144 heads x 64 images) against the forward pass that filled the cache.

    python benchmarks/alignment.py [--images 64] [--repeats 3] [--threads 2] [--model vitmech/mini-pretrained]

Ratios (one run; each part's fastest repeat; timings interleaved):
- table_over_forward: from the cache of `model.run_with_cache(images)` (every hook), the class-token maps of
  all 12 x 12 heads and the 12 head-mean maps, their IoU (q = each region's area), energy share and pointing
  game against 4 regions (bar, arms, bulge, union) of 64 synthetic galaxies, and the long table
  (`to_frame()`, one row per image x head x region) / that `run_with_cache` call.
- table_over_pattern_forward: the same / `collect_patterns(model, images, rows="cls")` (a forward keeping
  only the class-token rows).
- bilinear_over_nearest: the same table with bilinear upsampling on the 224 x 224 pixel grid / nearest
  (computed on the patch grid), over 8 images (both exact; the nearest path is the default).
Equality is asserted between the table from the cache and from the pattern-only forward. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vitmech import HookedViT  # noqa: E402
from vitmech.analysis.alignment import (  # noqa: E402
    RegionMasks,
    alignment_scores,
    cls_attention_grid,
    head_mean_grid,
)
from vitmech.analysis.attention import collect_patterns  # noqa: E402
from vitmech.data import generate_galaxies  # noqa: E402


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def alignment_table(model: HookedViT, maps: torch.Tensor, regions: RegionMasks) -> Any:
    """Per-head and head-mean scores and their long table from class-token maps [B, L, H, g, g]; the masks'
    patch counts are computed afresh (RegionMasks keeps them between calls)."""
    regions = RegionMasks(regions.masks, regions.names)
    heads = alignment_scores(maps, regions, source="cls attention")
    means = alignment_scores(head_mean_grid(maps), regions, source="head mean")
    return heads, means, heads.to_frame(), means.to_frame()


def cached_maps(model: HookedViT, cache: Any) -> torch.Tensor:
    """Class-token maps [B, L, H, g, g] of every layer of a full cache (one layer's patterns at a time)."""
    layers = range(model.cfg.n_layers)
    return torch.stack([cls_attention_grid(model, cache[f"blocks.{layer}.attn.hook_pattern"]) for layer in layers], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vitmech/mini-pretrained")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = HookedViT.from_pretrained(args.model).eval()
    batch = generate_galaxies(args.images, seed=7, size=model.cfg.image_size)
    images = model.preprocess(list(batch.images))
    regions = RegionMasks.from_galaxies(batch).with_union()

    times: dict[str, list[float]] = {"forward": [], "pattern_forward": [], "table": [], "nearest8": [], "bilinear8": []}
    small = RegionMasks(regions.masks[:8], regions.names)
    for _ in range(args.repeats):
        with torch.no_grad():
            t, (_, cache) = timed(lambda: model.run_with_cache(images))
        times["forward"].append(t)
        t, rows = timed(lambda: collect_patterns(model, images, rows="cls", progress=False, batch_size=64))
        times["pattern_forward"].append(t)
        t, table = timed(lambda cache=cache: alignment_table(model, cached_maps(model, cache), regions))
        times["table"].append(t)
        del cache
        maps8 = cls_attention_grid(model, rows[:8], rows="cls")
        times["nearest8"].append(timed(lambda maps8=maps8: alignment_scores(maps8, small))[0])
        times["bilinear8"].append(timed(lambda maps8=maps8: alignment_scores(maps8, small, upsample="bilinear"))[0])
    check = alignment_table(model, cls_attention_grid(model, rows, rows="cls"), regions)
    assert torch.allclose(check[0].iou, table[0].iou, atol=1e-6, equal_nan=True)
    best = {k: min(v) for k, v in times.items()}
    out = {
        "benchmark": "alignment",
        "model": args.model,
        "images": args.images,
        "heads": model.cfg.n_layers * model.cfg.n_heads,
        "regions": list(regions.names),
        "table_rows": len(table[2]) + len(table[3]),
        "threads": args.threads,
        "forward_s": round(best["forward"], 4),
        "pattern_forward_s": round(best["pattern_forward"], 4),
        "table_s": round(best["table"], 4),
        "table_over_forward": round(best["table"] / best["forward"], 4),
        "table_over_pattern_forward": round(best["table"] / best["pattern_forward"], 4),
        "bilinear_over_nearest": round(best["bilinear8"] / best["nearest8"], 1),
        "goal_table_over_forward": 0.10,
    }
    print(f"forward (run_with_cache, {args.images} images): {best['forward']:.3f} s")
    print(f"alignment table ({out['table_rows']} rows): {best['table']:.3f} s")
    print(f"table / forward: {out['table_over_forward']:.4f} (goal <= 0.10)")
    print(f"table / pattern-only forward: {out['table_over_pattern_forward']:.4f}")
    print(f"bilinear / nearest (8 images): {out['bilinear_over_nearest']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
