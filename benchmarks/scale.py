"""Scale: memory and time per image as the number of images grows, processes, precision, and (with CUDA) a GPU.

    PYTHONPATH=. python benchmarks/scale.py [--sizes 64,256,1024,4096] [--dist-images 256] [--no-dist]

Sections (the last line printed is one JSON object with every ratio):
1. Streaming, tiny model on the CPU (2 layers, 4 heads, d_model 32, 32 px images, patch 8): for each number of
   images, a fresh process streams a lazily generated dataset (a DataLoader of seeded images, batch 64) through
   `stream_attention_metrics` and `stream_head_sweep` (exact, every head, kl_to_clean) and reports its peak
   resident memory (VmHWM), its peak anonymous resident memory (RssAnon, sampled every 2 ms: the heap and
   tensors, without the shared-library pages a busy machine evicts and re-reads), the memory before the
   analysis, wall and CPU time per image. Ratios: peak memory at the largest size / at 256 images (goal
   <= 1.2), for both measures, and the memory the analysis added above the process's start-up footprint.
2. Processes: the same sweep + metrics on `--dist-images` images under `torchrun --nproc_per_node=1` and `=2`
   (gloo, one thread per process), timed inside the workers from the first barrier to the merged result.
   Ratio: time with 1 process / time with 2 (the speed-up), and whether the two results are identical.
3. Precision: bf16 against float32 on the CPU for ViT-B/16 shapes (timm's initialisation, random weights:
   attention is nearly uniform, so this is a lower bound on what trained weights show).
4. GPU (only when CUDA is present; skipped with a line saying so otherwise): ViT-B/16 on the GPU, against
   timm on the same GPU (TF32 off, so fp32 is fp32 on both sides): HookedViT forward, `run_with_cache`, the
   exact 144-head sweep per image, streamed attention metrics per image, fp32 and bf16; and peak GPU memory
   (`torch.cuda.max_memory_allocated`) and time per image of the streamed attention metrics as the number
   of images grows (`--gpu-sizes`, 224 px seeded images, batch 64). Ratio: peak at the largest size / at 256.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, image_size=32, patch_size=8, n_classes=5)


class SeededImages(Dataset):
    """Image i is drawn from a generator seeded with i: any number of images, none held in memory."""

    def __init__(self, n: int, size: int = 32) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(i))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: peak only (KiB on Linux)


class AnonPeak:
    """Peak RssAnon of this process, sampled every `every_s` seconds by a thread while in the block."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s, self.peak_kib, self._stop = every_s, 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))
            self._stop.wait(self.every_s)

    def __enter__(self) -> AnonPeak:
        self.peak_kib = _status_kib("RssAnon")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))


def tiny_model():
    from vitmech import HookedViT, ViTConfig

    return HookedViT(ViTConfig(**TINY), seed=0).eval()


def memory_worker(n: int) -> None:
    """One size of section 1, in its own process (peak memory is per process)."""
    from vitmech.analysis.streaming import stream_attention_metrics, stream_head_sweep

    model = tiny_model()
    loader = DataLoader(SeededImages(n), batch_size=64)
    before, anon_before = _status_kib("VmRSS"), _status_kib("RssAnon")
    wall, cpu = time.perf_counter(), time.process_time()
    with AnonPeak() as anon:
        metrics = stream_attention_metrics(model, loader, batch_size=64, progress=False)
        sweep = stream_head_sweep(model, loader, "kl_to_clean", batch_size=64, max_batch=512, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert metrics.n_images == n and sweep.n_examples == n
    print(
        json.dumps(
            {
                "n": n,
                "rss_before_mib": before / 1024,
                "peak_mib": _status_kib("VmHWM") / 1024,
                "anon_before_mib": anon_before / 1024,
                "anon_peak_mib": anon.peak_kib / 1024,
                "wall_s": wall,
                "cpu_s": cpu,
            }
        )
    )


def dist_worker(n: int) -> None:
    """Section 2's work, under torchrun."""
    from vitmech.analysis.streaming import stream_attention_metrics, stream_head_sweep
    from vitmech.distributed import barrier, distributed_session

    torch.set_num_threads(1)
    with distributed_session("gloo") as ranks:
        model = tiny_model()
        images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        stream_attention_metrics(model, images[:64], batch_size=32, progress=False)  # warm-up
        barrier()
        start = time.perf_counter()
        metrics = stream_attention_metrics(model, images, batch_size=32, progress=False)
        sweep = stream_head_sweep(model, images, "kl_to_clean", batch_size=32, max_batch=256, progress=False)
        elapsed = time.perf_counter() - start
        if ranks.is_main:
            print(
                json.dumps(
                    {
                        "processes": ranks.world_size,
                        "seconds": elapsed,
                        "sweep": sweep.ablated.tolist(),
                        "entropy": metrics.to_frame()["cls_entropy_mean"].tolist(),
                    }
                )
            )


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def _run(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return _last_json(out.stdout)


def streaming_section(sizes: list[int], env: dict[str, str]) -> dict:
    rows = [_run([sys.executable, __file__, "--memory-worker", str(n)], env) for n in sizes]
    print("1. streaming, tiny model, CPU, 1 thread: attention metrics + exact all-head sweep")
    print(
        f"   {'images':>7} {'peak MiB':>9} {'added MiB':>10} {'anon peak MiB':>14} {'anon added MiB':>15} "
        f"{'ms/image wall':>14} {'ms/image CPU':>13}"
    )
    for r in rows:
        r["added_mib"] = r["peak_mib"] - r["rss_before_mib"]
        r["anon_added_mib"] = r["anon_peak_mib"] - r["anon_before_mib"]
        print(
            f"   {r['n']:>7} {r['peak_mib']:>9.1f} {r['added_mib']:>10.1f} {r['anon_peak_mib']:>14.1f} "
            f"{r['anon_added_mib']:>15.1f} {1e3 * r['wall_s'] / r['n']:>14.3f} {1e3 * r['cpu_s'] / r['n']:>13.3f}"
        )
    base = next((r for r in rows if r["n"] == 256), rows[0])
    top = rows[-1]
    return {
        "sizes": sizes,
        "peak_mib": [round(r["peak_mib"], 1) for r in rows],
        "added_mib": [round(r["added_mib"], 1) for r in rows],
        "anon_peak_mib": [round(r["anon_peak_mib"], 1) for r in rows],
        "anon_added_mib": [round(r["anon_added_mib"], 1) for r in rows],
        "cpu_ms_per_image": [round(1e3 * r["cpu_s"] / r["n"], 3) for r in rows],
        f"peak_{top['n']}_over_{base['n']}": round(top["peak_mib"] / base["peak_mib"], 3),
        f"added_{top['n']}_over_{base['n']}": round(top["added_mib"] / max(base["added_mib"], 1e-9), 3),
        f"anon_peak_{top['n']}_over_{base['n']}": round(top["anon_peak_mib"] / base["anon_peak_mib"], 3),
        f"anon_added_{top['n']}_over_{base['n']}": round(top["anon_added_mib"] / max(base["anon_added_mib"], 1e-9), 3),
        f"cpu_per_image_{top['n']}_over_{base['n']}": round((top["cpu_s"] / top["n"]) / (base["cpu_s"] / base["n"]), 3),
    }


def dist_section(n: int, env: dict[str, str]) -> dict:
    runs = {}
    for k in (1, 2):
        runs[k] = _run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={k}",
                __file__,
                "--dist-worker",
                str(n),
            ],
            env,
        )
    same = runs[1]["sweep"] == runs[2]["sweep"] and all(
        abs(a - b) <= 1e-6 for a, b in zip(runs[1]["entropy"], runs[2]["entropy"])
    )
    speedup = runs[1]["seconds"] / runs[2]["seconds"]
    print(
        f"2. processes ({n} images, metrics + sweep, gloo, 1 thread each, {os.cpu_count()} CPUs on this machine): "
        f"1 process {runs[1]['seconds']:.2f} s, 2 processes {runs[2]['seconds']:.2f} s -> speed-up {speedup:.2f}x; "
        f"results identical: {same}"
    )
    return {
        "dist_images": n,
        "speedup_2_over_1": round(speedup, 3),
        "dist_results_identical": same,
        "cpu_count": os.cpu_count(),
    }


def precision_section(n_images: int = 8) -> dict:
    import timm

    from vitmech import HookedViT
    from vitmech.analysis.streaming import stream_attention_metrics
    from vitmech.device import forward_precision

    model = HookedViT.from_timm(timm.create_model("vit_base_patch16_224", pretrained=False).eval())
    images = torch.randn(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    frames = {
        p: stream_attention_metrics(model, images, batch_size=n_images, precision=p, progress=False).to_frame()
        for p in ("fp32", "bf16")
    }
    with torch.no_grad():
        reference = model(images)
        with forward_precision("bf16", "cpu"):
            reduced = model(images).float()
    out = {
        f"vit_b16_bf16_{c}_max_error": float((frames["fp32"][c] - frames["bf16"][c]).abs().max())
        for c in ("cls_entropy_mean", "cls_top10_mean", "mean_distance_mean")
    }
    out["vit_b16_bf16_logits_relative_error"] = float((reference - reduced).abs().max() / reference.abs().max())
    print(
        f"3. precision, ViT-B/16 shapes (random weights), {n_images} images, CPU bf16 vs fp32: "
        + ", ".join(f"{k.removeprefix('vit_b16_bf16_')} {v:.2e}" for k, v in out.items())
    )
    return {k: float(f"{v:.3g}") for k, v in out.items()}


def _time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def gpu_section(
    sizes: list[int],
    batch: int = 64,
    sweep_images: int = 32,
    repeats: int = 5,
    device: str = "cuda",
    model_name: str = "vit_base_patch16_224",
) -> dict:
    import timm

    from vitmech import HookedViT
    from vitmech.analysis.streaming import stream_attention_metrics, stream_head_sweep
    from vitmech.device import forward_precision

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (cuDNN convolutions default to TF32)
    torch.backends.cudnn.allow_tf32 = False
    timm_model = timm.create_model(model_name, pretrained=False).eval().to(device)
    hooked = HookedViT.from_timm(timm_model).to(device).eval()
    size = hooked.cfg.image_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    out: dict[str, float] = {"gpu": torch.cuda.get_device_name()}  # type: ignore[dict-item]
    with torch.no_grad():
        reference = timm_model(x)
        error = float((hooked(x) - reference).abs().max())
        assert error <= 1e-4 * max(1.0, float(reference.abs().max())), (
            f"HookedViT differs from timm on the GPU: {error}"
        )
        for precision in ("fp32", "bf16"):
            with forward_precision(precision, device):
                t_timm = _time(lambda: timm_model(x), repeats)
                t_fwd = _time(lambda: hooked(x), repeats)
                t_cache = _time(lambda: hooked.run_with_cache(x), repeats)
            out[f"{precision}_forward_over_timm"] = round(t_fwd / t_timm, 3)
            out[f"{precision}_run_with_cache_over_timm"] = round(t_cache / t_timm, 3)
            out[f"{precision}_timm_images_per_s"] = round(batch / t_timm, 1)
    xs = x[:sweep_images]
    t_timm = _time(lambda: timm_model(xs), repeats) / sweep_images
    for precision in ("fp32", "bf16"):
        t_sweep = (
            _time(
                lambda: stream_head_sweep(
                    hooked,
                    xs,
                    "kl_to_clean",
                    batch_size=sweep_images,  # noqa: B023
                    max_batch=sweep_images * 16,
                    precision=precision,  # noqa: B023
                    progress=False,
                ),
                2,
            )
            / sweep_images
        )
        t_metrics = (
            _time(
                lambda: stream_attention_metrics(
                    hooked,
                    x,
                    batch_size=batch,
                    precision=precision,  # noqa: B023
                    progress=False,
                ),
                2,
            )
            / batch
        )
        out[f"{precision}_sweep144_per_image_over_timm_forward"] = round(t_sweep / t_timm, 2)
        out[f"{precision}_metrics_per_image_over_timm_forward"] = round(t_metrics / t_timm, 2)
    peaks, per_image = {}, {}
    for n in sizes:  # streamed metrics over n images generated on the fly: GPU memory must stay flat
        loader = DataLoader(SeededImages(n, hooked.cfg.image_size), batch_size=batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = stream_attention_metrics(hooked, loader, batch_size=batch, progress=False)
        torch.cuda.synchronize()
        per_image[n] = (time.perf_counter() - start) / n
        peaks[n] = torch.cuda.max_memory_allocated() / 2**20
        assert metrics.n_images == n
    base, top = (256 if 256 in peaks else sizes[0]), sizes[-1]
    out["gpu_sizes"] = sizes  # type: ignore[assignment]
    out["gpu_metrics_peak_mib"] = [round(peaks[n], 1) for n in sizes]  # type: ignore[assignment]
    out["gpu_metrics_ms_per_image"] = [round(1e3 * per_image[n], 3) for n in sizes]  # type: ignore[assignment]
    out[f"gpu_metrics_peak_{top}_over_{base}"] = round(peaks[top] / peaks[base], 3)
    print(f"4. GPU, {model_name}: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256,1024,4096", help="numbers of images for section 1")
    parser.add_argument("--dist-images", type=int, default=1024, help="images for section 2")
    parser.add_argument("--no-dist", action="store_true", help="skip section 2")
    parser.add_argument("--no-precision", action="store_true", help="skip section 3")
    parser.add_argument("--gpu-sizes", default="256,1024,4096", help="numbers of images for section 4's memory")
    parser.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dist-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        torch.set_num_threads(1)
        memory_worker(args.memory_worker)
        return 0
    if args.dist_worker:
        dist_worker(args.dist_worker)
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(1)
    result: dict = {"load_average_1min_start": round(os.getloadavg()[0], 2)}
    result.update(streaming_section([int(s) for s in args.sizes.split(",")], env))
    if not args.no_dist:
        result.update(dist_section(args.dist_images, env))
    if not args.no_precision:
        result.update(precision_section())
    if torch.cuda.is_available():
        result.update(gpu_section([int(s) for s in args.gpu_sizes.split(",")]))
    else:
        print("4. GPU: skipped (no CUDA device)")
    result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
