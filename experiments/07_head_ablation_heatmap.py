"""Ablate every attention head and draw the 12 x 12 heatmap of the metric change (arXiv 2503.18762, Fig. 5 design).

For each head (one at a time) its context vector z is replaced (zero / mean / resample / uniform attention,
docs/ablation.md#interventions) and the metric over the images is compared with the clean model's: the report has the
[layer, head] heatmap of % change, the per-layer mean and std over heads, the full table, gradient
estimates beside the exact values (Spearman correlations), and optionally the speed-up and metric change
of physically pruning the least important heads. The sweep is exact, fast and resumable (rerun the same
command after an interruption: finished heads are read back from <out>/store).

    # the paper's setting: the chirp regressor on chirp spectrograms, % increase of the MSE loss
    python experiments/07_head_ablation_heatmap.py --model vitmech/mini-chirp --dataset chirps --n-images 256
    # any model on an image folder; targets (.npy / .csv, one row per sorted image file) enable mse / ce
    python experiments/07_head_ablation_heatmap.py --model path/to/model --images imgs/ --targets y.npy --metric mse
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vitmech.analysis.ablation import (
    MeanAblation,
    ResampleAblation,
    compare_estimates,
    estimate_head_effects,
    head_sweep,
    measure_pruning,
    prune_heads,
    resolve_ablation,
    resolve_metric,
)
from vitmech.cli import add_output_argument, load_model, read_image_folder
from vitmech.report import Report
from vitmech.viz.ablation import plot_estimates_vs_exact, plot_head_heatmap, plot_layer_summary

logger = logging.getLogger("07_head_ablation_heatmap")


def load_targets(path: str, rows: list[int], kind: str = "auto") -> torch.Tensor:
    """Rows `rows` of the targets in .npy or .csv (header-less numbers), one row per image file.

    kind "labels": class indices; "values": regression targets; "auto": integer-typed or whole-number
    single columns are labels, unless the model card says the model is a regressor (the caller passes "values").
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"no targets file at {file}")
    values = np.load(file) if file.suffix == ".npy" else np.loadtxt(file, delimiter=",", ndmin=2)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    n = max(rows) + 1
    if values.shape[0] < n:
        raise ValueError(f"{file} has {values.shape[0]} rows for {n} image files")
    values = values[rows]
    whole = values.ndim == 1 and np.all(values == np.round(values))
    if kind == "labels" or (kind == "auto" and (np.issubdtype(values.dtype, np.integer) or whole)):
        if not whole:
            raise ValueError(f"{file}: class labels must be one whole number per image")
        return torch.as_tensor(values.astype(np.int64))
    return torch.as_tensor(values, dtype=torch.float32)


CHIRP_STREAM_START = 1_000_000  # stream indices far beyond any training split (fine-tuning uses 0..n)


def load_chirps(model, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Chirp spectrogram figures (vitmech.data.chirps) and their targets, z-scored as the model was trained.

    The z-scoring mean/std come from the model card (`card["targets"]`, written by the chirp fine-tune);
    without them they are fitted on these images, and the note says so.
    """
    try:
        from vitmech.data.chirps import TARGETS, generate_chirps
    except ImportError as err:
        raise SystemExit(
            "--dataset chirps needs the chirp generator vitmech.data.chirps, which is not in this "
            "checkout; pass --images DIR [--targets FILE] instead"
        ) from err
    samples = generate_chirps(n, seed, start=CHIRP_STREAM_START, size=model.cfg.image_size)
    images = model.preprocess([s.image for s in samples])
    raw = torch.tensor([s.targets for s in samples], dtype=torch.float64)
    card_targets = model.card.get("targets") if isinstance(model.card, dict) else None
    if card_targets and "mean" in card_targets and "std" in card_targets:
        mean, std = (
            torch.tensor(card_targets["mean"], dtype=torch.float64),
            torch.tensor(card_targets["std"], dtype=torch.float64),
        )
        how = "z-scored with the mean/std of the model card (its training split)"
    else:
        mean, std = raw.mean(0), raw.std(0, unbiased=False)
        how = "z-scored with these images' own mean/std (the model card has no `targets` mean/std)"
    note = (
        f"{n} generated chirp spectrograms (seed {seed}, stream indices from {CHIRP_STREAM_START}); "
        f"targets {', '.join(TARGETS)} {how}"
    )
    return images, ((raw - mean) / std).float(), note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vitmech/mini-chirp", help="shipped name, local path, timm name or hub id")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder of images (default: --dataset chirps)")
    source.add_argument("--dataset", choices=["chirps"], help="generated data set with targets (default)")
    parser.add_argument("--targets", help=".npy/.csv targets aligned with the sorted image files")
    parser.add_argument(
        "--targets-are",
        choices=["auto", "labels", "values"],
        default="auto",
        help="class labels or regression values (auto: whole numbers are labels, unless the "
        "model card says regression)",
    )
    parser.add_argument("--n-images", type=int, default=64, help="images to average over (default 64)")
    parser.add_argument(
        "--metric",
        default=None,
        help="mse, cross_entropy, accuracy, class_logit, kl_to_clean, mse_to_clean, ... (default: mse "
        "for float targets, cross_entropy for class targets, kl_to_clean without targets)",
    )
    parser.add_argument(
        "--ablation",
        default="zero",
        choices=["zero", "mean", "resample", "uniform_attention"],
        help="how a head is removed (mean: over the images themselves; resample: within the batch)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8, help="images per stacked forward of the exact sweep")
    parser.add_argument("--no-estimates", action="store_true", help="skip the gradient estimates")
    parser.add_argument("--prune", type=int, default=0, help="also prune the N least important heads and time it")
    parser.add_argument("--seed", type=int, default=0, help="data generation and resampling seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    add_output_argument(parser, "reports/07_head_ablation_heatmap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_images < 1:
        parser.error("--n-images must be >= 1")

    try:
        model, weights = load_model(args.model)
    except Exception as err:  # the shipped chirp model arrives with the fine-tuning issue
        parser.error(f"cannot load model {args.model!r}: {err}. Pass --model <name or path>.")
    if args.images:
        pil_images, kept = read_image_folder(args.images, limit=args.n_images)
        images = model.preprocess(pil_images)
        kind = args.targets_are
        if kind == "auto" and isinstance(model.card, dict) and model.card.get("task") == "regression":
            kind = "values"
        targets = load_targets(args.targets, kept, kind) if args.targets else None
        data_note = f"{images.shape[0]} images from {args.images}" + (
            f", targets from {args.targets}" if targets is not None else ""
        )
    else:
        images, targets, data_note = load_chirps(model, args.n_images, args.seed)

    if args.metric is None:  # the loss the model would be trained with, else the drift of its output
        args.metric = (
            "kl_to_clean" if targets is None else "cross_entropy" if not targets.is_floating_point() else "mse"
        )
    metric = resolve_metric(args.metric)
    if metric.needs_targets and targets is None:
        parser.error(
            f"metric {args.metric!r} needs targets: pass --targets FILE or use --dataset "
            "(without targets: kl_to_clean for classifiers, mse_to_clean for regressors)"
        )
    if args.ablation == "mean":
        ablation = MeanAblation.from_reference(model, images, batch_size=args.batch_size)
    elif args.ablation == "resample":
        ablation = ResampleAblation(seed=args.seed)
    else:
        ablation = resolve_ablation(args.ablation)

    out = Path(args.out)
    start = time.perf_counter()
    result = head_sweep(
        model,
        images,
        metric,
        ablation,
        targets=targets,
        batch_size=args.batch_size,
        max_batch=args.max_batch,
        store=out / "store",
    )
    sweep_seconds = time.perf_counter() - start

    report = Report(out, title=f"Head ablation heatmap: {args.model}")
    cfg = model.cfg
    value = "pct_change" if result.clean != 0 else "delta"
    report.add_text(
        f"Model `{args.model}` ({weights}{'; card: ' + str(model.card['note']) if model.card.get('note') else ''}): "
        f"{cfg.n_layers} layers x {cfg.n_heads} heads, {cfg.n_tokens} tokens. "
        f"Data: {data_note}. Metric: `{result.metric['metric']}` (clean value {result.clean:.6g}, mean over "
        f"{result.n_examples} images). Ablation: `{ablation.name}` (docs/ablation.md#interventions: the head's z replaced before W_O). "
        f"Exact sweep of {len(result.cells)} heads: {sweep_seconds:.1f} s (results file `{result.store_path}`; "
        "rerunning resumes from it). Layers and heads are 0-based. "
        "% change = 100 (ablated - clean) / |clean|; delta_se is the standard error over images."
    )
    report.add_figure(
        "heatmap", plot_head_heatmap(result, value), caption=f"{value} of the metric when each head is ablated"
    )
    summary = result.layer_summary()
    report.add_table("layer_summary", summary, caption="Per layer: mean and std (ddof 1) over heads")
    report.add_figure("layers", plot_layer_summary(result, value), caption="Per-layer mean +- std over heads")
    frame = result.to_frame()
    top = frame.reindex(frame["delta"].abs().sort_values(ascending=False).index).head(10)
    report.add_table("top_heads", top, caption="The 10 heads with the largest |effect|")
    report.add_table("all_heads", frame, show=False)
    report.add_json("sweep", {**result.to_dict(), "seconds": sweep_seconds, "model": args.model, "weights": weights})

    if not args.no_estimates:
        start = time.perf_counter()
        estimates = estimate_head_effects(model, images, metric, ablation, targets=targets, batch_size=args.batch_size)
        est_seconds = time.perf_counter() - start
        comparison = compare_estimates(result, estimates)
        report.add_text(
            f"Gradient estimates (one forward + backward per batch, {est_seconds:.1f} s = "
            f"{est_seconds / sweep_seconds:.2f} x the exact sweep): Spearman correlation with the exact effects "
            f"{comparison.spearman_attribution:.3f} (attribution patching vs effect) and "
            f"{comparison.spearman_michel:.3f} (Michel importance vs |effect|)."
        )
        report.add_figure("estimates", plot_estimates_vs_exact(comparison), caption="Estimates vs exact effects")
        report.add_table("estimates", comparison.to_frame(), show=False)

    if args.prune > 0:
        order = np.argsort(np.abs(result.delta), kind="stable")[: args.prune]
        heads = [result.heads[i] for i in order]
        pruned = prune_heads(model, heads)
        measured = measure_pruning(model, pruned, images, metric, targets=targets, batch_size=args.batch_size)
        report.add_text(
            f"Pruning the {args.prune} least important heads (by |exact effect|) physically: "
            f"speed-up {measured.speedup:.3f}x wall-clock, {measured.cpu_speedup:.3f}x CPU time (fastest of 5 "
            f"alternating runs, this machine), metric "
            f"{measured.metric_before:.6g} -> {measured.metric_after:.6g} ({measured.pct_change:+.3f}%)."
        )
        report.add_table("pruning", measured.to_frame(), caption="Physically pruned model vs the original")

    path = report.write()
    print(f"report: {path}")
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
