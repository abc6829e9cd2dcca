"""Forward-pass cost of HookedViT against its sources, ViT-B/16, measured as ratios in one run.

    python benchmarks/forward.py [--batch 8] [--repeats 5] [--threads 2] [--device cuda]

On a GPU (`--device cuda`, the default when CUDA is present) the same ratios are measured there, with
TF32 off so that fp32 means fp32 for both models, a batch of 64 unless --batch is given, and
`torch.cuda.synchronize()` around every timed call.

Ratios (goal in brackets):
- hooked_forward / timm_forward                          [<= 1.05]
- hooked_run_with_cache (every hook, per-head result off) / timm_forward   [<= 1.3]
- hooked_run_with_cache / transformer_lens TransformerBridge run_with_cache, same HF model [<= 0.5]
- bytes of HookedViT's full cache / bytes of the bridge's full cache (no goal; printed)

Timings are interleaved (each repeat runs every method once) and the ratio uses each method's
fastest repeat, the least disturbed by other load on the machine; medians are printed too.
Outputs are checked for equality in the same run. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402

from vitmech import HookedViT  # noqa: E402


def bridge_for(hf_model: torch.nn.Module, device: str = "cpu") -> Callable[[torch.Tensor], object] | None:
    """transformer_lens' own hooked wrapper of the same HF model, or None if it cannot boot offline."""
    try:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers("google/vit-base-patch16-224", hf_model=hf_model, device=device)
    except Exception as err:  # the bridge is an optional peer
        print(f"TransformerBridge unavailable: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    return bridge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=None, help="images per forward (default: 8 on CPU, 64 on GPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bridge", action="store_true", help="skip the TransformerBridge comparison")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if on_gpu:  # fp32 means fp32 on both sides (cuDNN convolutions use TF32 by default)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    args.batch = args.batch or (64 if on_gpu else 8)

    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval().to(device)
    hooked = HookedViT.from_timm(timm_model).to(device).eval()
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)

    methods: dict[str, Callable[[], object]] = {
        "timm_forward": lambda: timm_model(x),
        "hooked_forward": lambda: hooked(x),
        "hooked_run_with_cache": lambda: hooked.run_with_cache(x),
    }

    bridge = None
    if not args.no_bridge:
        from transformers import ViTConfig, ViTForImageClassification

        hf_config = ViTConfig()  # google/vit-base-patch16-224's shape
        hf_config.architectures = ["ViTForImageClassification"]
        hf_model = ViTForImageClassification(hf_config).eval().to(device)
        hooked_hf = HookedViT.from_hf(hf_model).to(device).eval()
        bridge = bridge_for(copy.deepcopy(hf_model), str(device))
        if bridge is not None:
            methods["hf_hooked_run_with_cache"] = lambda: hooked_hf.run_with_cache(x)
            methods["bridge_run_with_cache"] = lambda: bridge.run_with_cache(x)

    with torch.no_grad():
        # equality in the same run
        ref = timm_model(x)
        tolerance = 1e-4 * max(1.0, float(ref.abs().max()))  # GPU kernels differ in summation order
        assert (hooked(x) - ref).abs().max() <= tolerance, "HookedViT forward differs from timm"
        cached_out, cache = hooked.run_with_cache(x)
        assert (cached_out - ref).abs().max() <= tolerance, "run_with_cache output differs from timm"
        n_hooks = len(cache)
        del cache

        def cache_bytes(c) -> int:
            return sum(v.numel() * v.element_size() for v in c.values())

        if bridge is not None:
            ours_out, ours = hooked_hf.run_with_cache(x)
            theirs_out, theirs = bridge.run_with_cache(x)
            assert (ours_out - theirs_out).abs().max() <= tolerance, "bridge and HookedViT disagree"
            assert (ours["pattern", 11] - theirs["pattern", 11]).abs().max() <= 1e-5
            n_bridge_hooks = len(theirs)
            memory_ratio = cache_bytes(ours) / cache_bytes(theirs)
            del ours, theirs

        times: dict[str, list[float]] = {name: [] for name in methods}
        for fn in methods.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in methods.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)

    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    where = torch.cuda.get_device_name(device) if on_gpu else f"{args.threads} threads"
    print(
        f"ViT-B/16 on {device.type} ({where}), batch {args.batch}, {args.repeats} interleaved repeats; "
        f"{n_hooks} activations cached by HookedViT"
    )
    for name in methods:
        print(
            f"  {name:26s} best {best[name]:.3f} s  median {med[name]:.3f} s  ({args.batch / best[name]:.1f} images/s)"
        )
    result = {
        "device": str(device),
        "hooked_forward_over_timm": round(best["hooked_forward"] / best["timm_forward"], 3),
        "run_with_cache_over_timm": round(best["hooked_run_with_cache"] / best["timm_forward"], 3),
        "median_hooked_forward_over_timm": round(med["hooked_forward"] / med["timm_forward"], 3),
        "median_run_with_cache_over_timm": round(med["hooked_run_with_cache"] / med["timm_forward"], 3),
    }
    if bridge is not None:
        print(f"  (bridge caches {n_bridge_hooks} activations)")
        result["run_with_cache_over_bridge"] = round(
            best["hf_hooked_run_with_cache"] / best["bridge_run_with_cache"], 3
        )
        result["median_run_with_cache_over_bridge"] = round(
            med["hf_hooked_run_with_cache"] / med["bridge_run_with_cache"], 3
        )
        result["cache_bytes_over_bridge"] = round(memory_ratio, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
