"""Cost of vitmech's circuit analyses against the TransformerLens way of computing the same numbers, ViT-B/16.

    python benchmarks/circuits.py [--batch 4] [--repeats 3] [--threads 2]

Ratios (lower is better for vitmech; each checked for equality in the same run):
- composition_over_transformer_lens: `composition_scores(model)` (Q, K, V for all 144 x 144 head pairs, one
  later layer at a time) / transformer_lens.utilities.matrix.composition_scores broadcasting every pair at once
  (TransformerBridge.all_composition_scores' method), masked to earlier -> later pairs.
- dla_over_transformer_lens: `direct_logit_attribution(model, images)` (CLS-only hooks: z, mlp_out, embeddings,
  final-LN scale) / a full `run_with_cache` + `stack_head_results` + `decompose_resid` + `logit_attrs`.

Timings are interleaved (each repeat runs every method once); ratios use each method's fastest repeat.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from transformer_lens.utilities.matrix import composition_scores as tl_composition_scores  # noqa: E402

from vitmech import HookedViT  # noqa: E402
from vitmech.analysis.attribution import direct_logit_attribution  # noqa: E402
from vitmech.analysis.circuits import composition_scores, ov_circuits, qk_circuits  # noqa: E402


def tl_all_composition(model: HookedViT) -> dict[str, torch.Tensor]:
    """TransformerBridge.all_composition_scores' computation, for each mode."""
    left = ov_circuits(model)
    readers = {"Q": qk_circuits(model), "K": qk_circuits(model).T, "V": ov_circuits(model)}
    n = model.cfg.n_layers
    mask = torch.arange(n)[:, None, None, None] < torch.arange(n)[None, None, :, None]
    return {
        m: torch.where(mask, tl_composition_scores(left, r, broadcast_dims=True), torch.nan) for m, r in readers.items()
    }


def tl_head_dla(model: HookedViT, images: torch.Tensor) -> torch.Tensor:
    """Per-head DLA [batch, L*H] to the predicted class the TransformerLens way, plus the rest of the decomposition."""
    logits, cache = model.run_with_cache(images)
    classes = logits.argmax(-1)
    heads = cache.stack_head_results(layer=-1, pos_slice=0)
    rest = cache.decompose_resid(layer=-1, pos_slice=0)
    cache.logit_attrs(rest, tokens=classes, pos_slice=0)
    return cache.logit_attrs(heads, tokens=classes, pos_slice=0).T


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = HookedViT.from_timm(timm.create_model("vit_base_patch16_224", pretrained=False)).eval()
    images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    methods: dict[str, Callable[[], object]] = {
        "composition_vitmech": lambda: composition_scores(model),
        "composition_transformer_lens": lambda: tl_all_composition(model),
        "dla_vitmech": lambda: direct_logit_attribution(model, images),
        "dla_transformer_lens": lambda: tl_head_dla(model, images),
    }
    with torch.no_grad():
        ours, theirs = composition_scores(model), tl_all_composition(model)
        for mode in "QKV":
            assert torch.allclose(ours.scores[mode], theirs[mode], atol=1e-5, equal_nan=True), (
                f"{mode}-composition differs"
            )
        dla = direct_logit_attribution(model, images)
        assert (dla.head_attributions().flatten(1) - tl_head_dla(model, images)).abs().max() < 1e-4, "DLA differs"
        assert dla.max_abs_error < 1e-4
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"ViT-B/16 (random init), batch {args.batch}, {args.threads} threads, {args.repeats} interleaved repeats")
    for name in methods:
        print(f"  {name:30s} best {best[name]:.3f} s  median {med[name]:.3f} s")
    result = {
        "composition_over_transformer_lens": round(
            best["composition_vitmech"] / best["composition_transformer_lens"], 3
        ),
        "dla_over_transformer_lens": round(best["dla_vitmech"] / best["dla_transformer_lens"], 3),
        "median_composition_over_transformer_lens": round(
            med["composition_vitmech"] / med["composition_transformer_lens"], 3
        ),
        "median_dla_over_transformer_lens": round(med["dla_vitmech"] / med["dla_transformer_lens"], 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
