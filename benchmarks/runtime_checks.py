"""Cost of the default test run's runtime type checks on a tiny HookedViT, measured as ratios in one run.

    python benchmarks/runtime_checks.py [--repeats 5] [--calls 100]

The default test run imports the whole `vitmech` package through jaxtyping's import hook
(`--jaxtyping-packages=vitmech,...` in pyproject.toml), which wraps every function and dataclass so that
beartype checks its annotations, jaxtyping shapes included, at every call. Each repeat starts two fresh
interpreters, one importing vitmech through that hook and one plain, in alternating order; each times, on one
thread, the forward pass and `run_with_cache` of the tests' tiny model (3 layers, 4 heads, d_model 32, 32 px
images, patch 8, batch 5: the size most tests use) and the import of every vitmech module, and counts the
checked calls one forward makes. The ratios use each method's fastest repeat (CPU time), the least disturbed
by other load; medians are printed too. Outputs are checked equal between the two interpreters.

Ratios (no goal; the suite's own overhead is in pyproject.toml's comment and README.md):
- checked forward / plain forward
- checked run_with_cache / plain run_with_cache
- checked import of every module / plain import

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("forward", "run_with_cache", "import_all")


def child(checked: bool, calls: int) -> dict[str, float]:
    """Times in one fresh interpreter (CPU seconds per call); prints nothing else."""
    sys.path.insert(0, str(ROOT))
    import_start = time.process_time()
    if checked:
        from jaxtyping import install_import_hook

        import tests.helpers.typecheck  # noqa: F401  (the checker named in pyproject's addopts)

        install_import_hook(["vitmech"], "tests.helpers.typecheck.beartype_tower")
    import importlib
    import pkgutil

    import torch

    import vitmech

    names = [info.name for info in pkgutil.walk_packages(vitmech.__path__, "vitmech.")]
    for name in names:
        if name != "vitmech.__main__":
            importlib.import_module(name)
    import_time = time.process_time() - import_start

    from vitmech import HookedViT, ViTConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ViTConfig(n_layers=3, n_heads=4, d_model=32, d_head=8, d_mlp=64, image_size=32, patch_size=8, n_classes=5)
    model = HookedViT(cfg).eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out: dict[str, float] = {"import_all": import_time}
    with torch.no_grad():
        logits = model(images)
        for name, call in (
            ("forward", lambda: model(images)),
            ("run_with_cache", lambda: model.run_with_cache(images)),
        ):
            call()
            start = time.process_time()
            for _ in range(calls):
                call()
            out[name] = (time.process_time() - start) / calls
    out["checksum"] = float(logits.double().sum())
    if checked:
        import jaxtyping

        counted = 0

        def count(frame, event, arg):
            nonlocal counted
            if event == "call" and frame.f_code.co_name == "wrapped_fn_impl":
                counted += 1

        sys.setprofile(count)
        with torch.no_grad():
            model(images)
        sys.setprofile(None)
        out["checked_calls_per_forward"] = counted
        assert jaxtyping.config.jaxtyping_disable is False
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100, help="timed calls of each method per interpreter")
    parser.add_argument("--child", choices=["checked", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "checked", args.calls)))
        return 0

    times: dict[str, dict[str, list[float]]] = {mode: {m: [] for m in METHODS} for mode in ("checked", "plain")}
    checksums: set[float] = set()
    per_forward = 0.0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for repeat in range(args.repeats):
        order = ("checked", "plain") if repeat % 2 == 0 else ("plain", "checked")
        for mode in order:
            cmd = [sys.executable, __file__, "--child", mode, "--calls", str(args.calls)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for m in METHODS:
                times[mode][m].append(result[m])
            checksums.add(round(result["checksum"], 9))
            per_forward = result.get("checked_calls_per_forward", per_forward)
    assert len(checksums) == 1, f"checked and plain models disagree: {checksums}"

    ratios = {}
    for m in METHODS:
        best = {mode: min(times[mode][m]) for mode in times}
        med = {mode: statistics.median(times[mode][m]) for mode in times}
        ratios[f"checked_{m}_over_plain"] = round(best["checked"] / best["plain"], 3)
        print(
            f"{m:15s} plain {best['plain'] * 1e3:9.2f} ms  checked {best['checked'] * 1e3:9.2f} ms  "
            f"ratio {best['checked'] / best['plain']:.3f} (median {med['checked'] / med['plain']:.3f})"
        )
    print(f"checked calls per forward of the tiny model: {per_forward:.0f}")
    extra_ms = (min(times["checked"]["forward"]) - min(times["plain"]["forward"])) * 1e3
    result = {
        "benchmark": "runtime_checks",
        **ratios,
        "checked_calls_per_forward": per_forward,
        "overhead_per_checked_call_us": round(extra_ms * 1e3 / max(per_forward, 1), 1),
        "repeats": args.repeats,
        "calls": args.calls,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
