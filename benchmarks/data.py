"""Data-layer throughput against the ViT-B/16 forward rate, measured in one run.

Measures (images per second, median of ``--repeats`` timed runs, best also printed):
  galaxies      generate_galaxies at 224 px, one batch of --galaxies, default num_threads=None
                (torch's thread setting, untouched)
  galaxies_1thread, galaxies_2thread   the same with the thread count fixed
  chirps        generate_chirps (raw array + rendered 224 px figure + boxes)
  write_gal     write_galaxy_dataset (generation + PNG + parquet)
  loader_gz2    load_gz2 + DataLoader(batch 8) + default preprocessing over a gz2-schema fixture of
                424 px JPEGs (what the real hub data costs to decode)
  loader_synth  the same over a written synthetic-galaxy dataset (224 px PNGs)
  loader_chirp  load_chirps + DataLoader(batch 8) + default preprocessing
  vit_forward   timm vit_base_patch16_224 (random weights), eval, batch 8, torch.no_grad
and the ratios loader / forward (data must never be the bottleneck: >= 3). The machine may be shared,
so numbers are noisy; ratios taken in the same run hold better. Last line: one JSON object.

    PYTHONPATH=. python benchmarks/data.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vitmech.data import default_preprocess, load_gz2, make_gz2_fixture
from vitmech.data.chirps import generate_chirps, load_chirps, write_chirp_dataset
from vitmech.data.galaxies import generate_galaxies, write_galaxy_dataset


def rate(run: Callable[[], int], repeats: int) -> dict[str, float]:
    """Images/s of ``run`` (which returns how many images it made), median and best of ``repeats``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "best": max(rates)}


def drain(dataset, n_batches: int, batch_size: int = 8) -> int:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    seen = 0
    for k, batch in enumerate(loader):
        if k >= n_batches:
            break
        seen += batch["pixel_values"].shape[0]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--galaxies", type=int, default=192, help="galaxies per timed run")
    parser.add_argument("--chirps", type=int, default=200, help="chirps per timed run")
    parser.add_argument("--loader-batches", type=int, default=16, help="DataLoader batches (of 8) per timed run")
    parser.add_argument("--vit-batches", type=int, default=2, help="ViT-B/16 batches (of 8) per timed run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    results: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]

    generate_galaxies(12, seed=0)  # warm-up
    results["galaxies"] = rate(lambda: len(generate_galaxies(args.galaxies, seed=1)), args.repeats)
    for threads in (1, 2):
        results[f"galaxies_{threads}thread"] = rate(
            lambda threads=threads: len(generate_galaxies(args.galaxies, seed=1, num_threads=threads)), args.repeats
        )
    generate_chirps(4, seed=0)
    results["chirps"] = rate(lambda: len(generate_chirps(args.chirps, seed=1)), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_write = 128
        counter = iter(range(10**6))
        results["write_gal"] = rate(
            lambda: write_galaxy_dataset(root / f"gal{next(counter)}", n_write, seed=3, progress=False) and n_write,
            args.repeats,
        )
        n_rows = 8 * args.loader_batches
        fixture = make_gz2_fixture(
            root / "gz2",
            train_summaries=["smooth_round", "barred_spiral"] * n_rows,
            test_summaries=["smooth_cigar"] * 8,
            image_size=424,
        )
        gz2 = load_gz2(
            fixture, preprocess=default_preprocess, val_fraction=0.0, cache_dir=root / "cache", progress=False
        )
        results["loader_gz2"] = rate(lambda: drain(gz2.train, args.loader_batches), args.repeats)
        synth_root = write_galaxy_dataset(root / "synth", 2 * n_rows, seed=4, test_fraction=0.1, progress=False)
        synth = load_gz2(
            synth_root, preprocess=default_preprocess, val_fraction=0.0, cache_dir=root / "cache", progress=False
        )
        results["loader_synth"] = rate(lambda: drain(synth.train, args.loader_batches), args.repeats)
        chirp_root = write_chirp_dataset(
            root / "chirps", n_rows + 16, seed=5, val_fraction=0.0, test_fraction=0.1, progress=False
        )
        chirps = load_chirps(chirp_root, preprocess=default_preprocess, cache_dir=root / "cache")
        results["loader_chirp"] = rate(lambda: drain(chirps.train, args.loader_batches), args.repeats)

    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(8, 3, 224, 224)

    def forward() -> int:
        with torch.no_grad():
            for _ in range(args.vit_batches):
                model(x)
        return 8 * args.vit_batches

    forward()  # warm-up
    results["vit_forward"] = rate(forward, args.repeats)

    vit = results["vit_forward"]["median"]
    ratios = {
        "loader_gz2_over_forward": results["loader_gz2"]["median"] / vit,
        "loader_synth_over_forward": results["loader_synth"]["median"] / vit,
        "loader_chirp_over_forward": results["loader_chirp"]["median"] / vit,
        "galaxies_over_forward": results["galaxies"]["median"] / vit,
        "chirps_over_forward": results["chirps"]["median"] / vit,
        "galaxies_over_200_target": results["galaxies"]["median"] / 200.0,
    }
    load_after = os.getloadavg()[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, 1-min load average {load_before:.1f} before / {load_after:.1f} after "
        "(shared machine: numbers are noisy)"
    )
    for name, r in results.items():
        print(f"{name:>13}: {r['median']:8.1f} img/s median, {r['best']:8.1f} best of {args.repeats}")
    for name, value in ratios.items():
        print(f"{name:>26}: {value:6.2f}")
    ok = (
        min(ratios["loader_gz2_over_forward"], ratios["loader_synth_over_forward"], ratios["loader_chirp_over_forward"])
        >= 3
    )
    print("data is not the bottleneck (every loader >= 3x forward):", ok)
    summary = {f"{k}_per_s": round(v["median"], 2) for k, v in results.items()}
    summary.update({k: round(v, 2) for k, v in ratios.items()})
    summary.update(
        {
            "loaders_at_least_3x_forward": ok,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_before": round(load_before, 2),
            "load_avg_after": round(load_after, 2),
        }
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
