"""Cost of every attention metric of vitmech (not flow) on a cached ViT-B/16 batch, against the forward pass
that filled the cache.

    python benchmarks/attention_metrics.py [--batch 32] [--repeats 2] [--threads 2] [--flow-images 1]

Ratios (one run; each method's fastest repeat; timings interleaved):
- metrics_over_forward: on the cached patterns [32, 12, 12, 197, 197] (715 MB), all of: per-head and
  head-mean-map CLS entropy, top-10 concentration (both), mean attention distance of all 144 heads, CLS maps,
  rollout maps of the CLS and one chosen token with mean, max and min head fusion (each fused once) and with
  discard_ratio 0.9, gradient rollout and GMAR maps (from cached gradients)
  / `collect_patterns(model, images)` (the forward that fills the cache).
- full_rollout_matrix_over_forward: the whole 197 x 197 rollout matrix (every token's map), mean fusion.
- each metric's share of the forward (breakdown).
- streamed_summary_over_plain_forward: `summarize_attention` (metrics and CLS rollout computed in hooks, no
  pattern stack) / a plain forward with fused attention (SDPA), batch 8: the end-to-end overhead of the analysis.
- gradients_over_forward: `attention_gradients` (forward + backward keeping d y / d A) / the cache-filling forward.
- flow_image_over_forward_image: attention flow of one image (197 max-flow problems) / the forward of one image.
- chunked_distance_speedup: the one-pass mean distance ((A * D).sum) / the chunked one used by vitmech.
Equality is asserted between the streamed summary and the metrics of the stacked cache, and between the
chunked and one-pass distances. Weights are seeded random (timings do not depend on them). The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vitmech import HookedViT, ViTConfig  # noqa: E402
from vitmech.analysis.attention import (  # noqa: E402
    AttentionSettings,
    attention_metrics,
    cls_attention_maps,
    collect_patterns,
    mean_attention_distance,
    patch_distances,
)
from vitmech.analysis.compare import summarize_attention  # noqa: E402
from vitmech.analysis.rollout import (  # noqa: E402
    attention_flow,
    attention_gradients,
    fuse_heads,
    gmar,
    gradient_rollout,
    rollout,
    rollout_from_fused,
)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _one_pass_distance(patterns: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Mean attention distance in one product over the whole stack (the reference for the chunked one)."""
    return ((patterns * distances).sum(-1)[..., 1:] / patterns[..., 1:, 1:].sum(-1)).mean(-1)


TOKENS = (0, 100)  # maps for the CLS and one chosen (patch) token


def rollout_family(patterns: torch.Tensor) -> dict[str, Any]:
    """Rollout maps (CLS and token 100) with mean, max and min fusion and mean + discard_ratio 0.9; each fusion
    computed once."""
    fused = {fusion: fuse_heads(patterns, fusion) for fusion in ("mean", "max", "min")}
    out = {fusion: rollout_from_fused(f, 0.5, tokens=TOKENS) for fusion, f in fused.items()}
    out["mean, discard 0.9"] = rollout_from_fused(fused["mean"], 0.5, discard_ratio=0.9, tokens=TOKENS)
    return out


def metric_suite(patterns: torch.Tensor, cfg: ViTConfig) -> dict[str, Callable[[], Any]]:
    return {
        "entropy_topk_distance": lambda: attention_metrics(patterns, cfg, AttentionSettings(k=10)),
        "cls_maps": lambda: cls_attention_maps(patterns),
        "rollout_mean_max_min_discard": lambda: rollout_family(patterns),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flow-images", type=int, default=1, help="images for the flow timing (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = ViTConfig(
        n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, image_size=224, patch_size=16, n_classes=1000
    )
    model = HookedViT(cfg, seed=0).eval()
    images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    print(f"ViT-B/16, batch {args.batch}, {args.threads} threads, {args.repeats} repeats", flush=True)

    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)
        print(f"  {name:<24} {seconds:8.3f} s", flush=True)

    patterns = None
    for repeat in range(args.repeats):
        print(f"repeat {repeat}", flush=True)
        patterns = None  # free the previous cache before refilling
        seconds, patterns = timed(lambda: collect_patterns(model, images, batch_size=args.batch, progress=False))
        record("forward_fill_cache", seconds)
        for name, fn in metric_suite(patterns, cfg).items():
            record(name, timed(fn)[0])
        record("full_rollout_matrix", timed(partial(rollout, patterns, 0.5, "mean"))[0])
        with torch.no_grad():
            record(
                "plain_forward_b8", sum(timed(partial(model, images[i : i + 8]))[0] for i in range(0, args.batch, 8))
            )
        seconds, summary = timed(lambda: summarize_attention(model, images, batch_size=8, progress=False))
        record("streamed_summary_b8", seconds)

    # the streamed summary equals the metrics of the stacked cache
    stacked = attention_metrics(patterns, cfg)
    torch.testing.assert_close(summary.metrics.cls_entropy, stacked.cls_entropy)
    torch.testing.assert_close(summary.metrics.mean_distance, stacked.mean_distance)
    torch.testing.assert_close(summary.rollout.rows[:, 0], rollout(patterns).rows[:, 0], atol=1e-5, rtol=1e-4)
    # chunked distance equals the one-pass product
    distances = torch.zeros(cfg.n_tokens, cfg.n_tokens)
    distances[1:, 1:] = patch_distances(cfg.grid_size, cfg.patch_size)
    one_pass_seconds, one_pass = timed(partial(_one_pass_distance, patterns, distances))
    chunked_seconds, chunked = timed(partial(mean_attention_distance, patterns, cfg.patch_size))
    torch.testing.assert_close(chunked, one_pass)
    del patterns, stacked

    seconds, grads = timed(lambda: attention_gradients(model, images, batch_size=8, progress=False))
    record("gradients_b8", seconds)
    for _ in range(args.repeats):
        record("gradient_rollout", timed(partial(gradient_rollout, grads.patterns, grads.gradients, tokens=TOKENS))[0])
        record("gmar", timed(partial(gmar, grads.patterns, grads.gradients, "l1", tokens=TOKENS))[0])
    flow_seconds = None
    if args.flow_images:
        flow_seconds, _ = timed(partial(attention_flow, grads.patterns[: args.flow_images], progress=False))
        flow_seconds /= args.flow_images
        print(f"  attention_flow           {flow_seconds:8.3f} s per image", flush=True)
    del grads

    best = {name: min(values) for name, values in times.items()}
    forward = best["forward_fill_cache"]
    parts = [*metric_suite(images, cfg), "gradient_rollout", "gmar"]  # the metric names
    metrics_total = sum(best[name] for name in parts)
    result = {
        "batch": args.batch,
        "threads": args.threads,
        "metrics_over_forward": round(metrics_total / forward, 4),
        "forward_images_per_second": round(args.batch / forward, 2),  # context: how busy the machine was
        "breakdown_over_forward": {name: round(best[name] / forward, 4) for name in parts},
        "full_rollout_matrix_over_forward": round(best["full_rollout_matrix"] / forward, 4),
        "streamed_summary_over_plain_forward": round(best["streamed_summary_b8"] / best["plain_forward_b8"], 3),
        "gradients_over_forward": round(best["gradients_b8"] / forward, 3),
        "flow_image_over_forward_image": round(flow_seconds / (forward / args.batch), 1) if flow_seconds else None,
        "chunked_distance_speedup": round(one_pass_seconds / chunked_seconds, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
