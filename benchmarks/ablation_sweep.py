"""Benchmark: the exact 144-head ablation sweep and the gradient estimates against the naive loop.

ViT-B/16 (timm architecture, seeded O(1) random weights: no hub here, and timing does not depend on the
weights), a batch of 8 images, cross-entropy. In one run:

- naive loop: one full `model.run_with_hooks` forward per head (+ one clean forward per group of heads),
  over all 144 heads by default (about 4 minutes on 2 idle CPU cores), in groups of one head per
  layer, half of the groups before and half after the exact sweep (to bracket load changes on a shared
  machine); the time is normalised to the 145 forwards of one plain naive loop.
  `--naive-heads-per-layer K` times only K heads per layer and extrapolates (a quick check);
- exact sweep: `head_sweep` over all 144 heads (recompute from the ablated layer, CLS-only last layer);
- estimates: `estimate_head_effects` (one forward + one backward: attribution patching and Michel).

Equality of exact and naive results is asserted on every head both computed (1e-4). Ratios are given for
wall-clock time and for process CPU time (less sensitive to other jobs on a shared machine). The last
line printed is one JSON object.

    PYTHONPATH=. python benchmarks/ablation_sweep.py                 # ViT-B/16, batch 8, 2 threads
    PYTHONPATH=. python benchmarks/ablation_sweep.py --arch vit_tiny_patch16_224 --batch 2   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import timm
import torch
from torch import nn

from vitmech import HookedViT
from vitmech.analysis.ablation import compare_estimates, estimate_head_effects, head_sweep, naive_head_sweep


@torch.no_grad()
def seeded_weights_(model: nn.Module, seed: int) -> nn.Module:
    """O(1) random weights (peaked attention, O(1) logits) so that equality checks are not trivial."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (1.5 / module.weight[0].numel()) ** 0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.2)
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=g))
            module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
    for name in ("cls_token", "pos_embed"):
        param = getattr(model, name)
        param.copy_(0.5 * torch.randn(param.shape, generator=g))
    return model


class Clock:
    """Wall-clock and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--naive-heads-per-layer",
        type=int,
        default=None,
        help="heads per layer run in the naive loop (default: all, no extrapolation)",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="head_sweep's max_batch (images per stacked forward)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    source = seeded_weights_(timm.create_model(args.arch, pretrained=False), args.seed).eval()
    model = HookedViT.from_timm(source)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    g = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randn(args.batch, 3, model.cfg.image_size, model.cfg.image_size, generator=g)
    labels = torch.randint(model.cfg.n_classes, (args.batch,), generator=g)
    kwargs = dict(targets=labels, batch_size=args.batch, progress=False)
    with torch.no_grad():
        model(images)  # warm-up

    per = n_heads if args.naive_heads_per_layer is None else max(1, min(args.naive_heads_per_layer, n_heads))
    offsets = [round(i * n_heads / per) for i in range(per)]
    subsets = [[(layer, (layer + o) % n_heads) for layer in range(n_layers)] for o in offsets]
    first, second = subsets[: (per + 1) // 2], subsets[(per + 1) // 2 :]

    naive_results, naive_wall, naive_cpu, naive_forwards = [], 0.0, 0.0, 0

    def run_naive(groups: list) -> None:
        nonlocal naive_wall, naive_cpu, naive_forwards
        for heads in groups:
            with Clock() as clock:
                naive_results.append(naive_head_sweep(model, images, "cross_entropy", heads=heads, **kwargs))
            naive_wall, naive_cpu, naive_forwards = (
                naive_wall + clock.wall,
                naive_cpu + clock.cpu,
                naive_forwards + len(heads) + 1,
            )

    run_naive(first)
    with Clock() as exact_clock:
        exact = head_sweep(model, images, "cross_entropy", max_batch=args.max_batch, **kwargs)
    run_naive(second)
    with Clock() as estimate_clock:
        estimates = estimate_head_effects(model, images, "cross_entropy", targets=labels, batch_size=args.batch)

    exact_by_head = dict(zip(exact.heads, exact.ablated))
    pairs = [(exact_by_head[h], v) for result in naive_results for h, v in zip(result.heads, result.ablated)]
    max_abs_diff = float(max(abs(a - b) for a, b in pairs))
    assert max_abs_diff <= 1e-4, f"exact sweep differs from the naive loop by {max_abs_diff:.3g}"
    assert abs(exact.clean - naive_results[0].clean) <= 1e-5

    n_total = n_layers * n_heads
    naive_full_wall = naive_wall / naive_forwards * (n_total + 1)
    naive_full_cpu = naive_cpu / naive_forwards * (n_total + 1)
    comparison = compare_estimates(exact, estimates)
    out = {
        "arch": args.arch,
        "batch": args.batch,
        "threads": args.threads,
        "heads": n_total,
        "naive_heads_timed": len(pairs),
        "naive_extrapolated_per_forward": len(pairs) < n_total,
        "naive_seconds_per_forward": naive_wall / naive_forwards,
        "naive_full_seconds": naive_full_wall,
        "exact_seconds": exact_clock.wall,
        "estimate_seconds": estimate_clock.wall,
        "exact_over_naive": exact_clock.wall / naive_full_wall,
        "estimate_over_naive": estimate_clock.wall / naive_full_wall,
        "exact_over_naive_cpu": exact_clock.cpu / naive_full_cpu,
        "estimate_over_naive_cpu": estimate_clock.cpu / naive_full_cpu,
        "max_abs_diff_exact_vs_naive": max_abs_diff,
        "spearman_attribution_vs_exact": comparison.spearman_attribution,
        "spearman_michel_vs_abs_exact": comparison.spearman_michel,
        "max_abs_effect": float(np.abs(exact.delta).max()),
    }
    print(f"{args.arch}, batch {args.batch}, {args.threads} threads, {n_total} heads")
    how = "extrapolated from" if len(pairs) < n_total else "normalised from"
    print(
        f"naive loop : {out['naive_seconds_per_forward']:.3f} s per forward x {n_total + 1} = "
        f"{naive_full_wall:.1f} s ({how} {naive_forwards} forwards, {len(pairs)} heads)"
    )
    print(
        f"exact sweep: {exact_clock.wall:.1f} s -> ratio {out['exact_over_naive']:.3f} (CPU time {out['exact_over_naive_cpu']:.3f}); "
        f"max |exact - naive| = {max_abs_diff:.2e} on {len(pairs)} heads"
    )
    print(
        f"estimates  : {estimate_clock.wall:.2f} s -> ratio {out['estimate_over_naive']:.4f} (CPU time "
        f"{out['estimate_over_naive_cpu']:.4f}); Spearman vs exact: attribution {comparison.spearman_attribution:.3f}, "
        f"Michel vs |effect| {comparison.spearman_michel:.3f}"
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
