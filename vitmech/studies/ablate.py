"""Ablate every attention head and draw the layer x head heatmap of the metric change (arXiv 2503.18762,
Fig. 5 design).

For each head (one at a time) its context vector z is replaced (zero / mean / resample / uniform attention;
docs/ablation.md) and the metric over the images is compared with the clean model's: the report has the
[layer, head] heatmap of % change (cells within 2 standard errors of zero marked), the per-layer mean and
std over heads, the full table, gradient estimates beside the exact values (Spearman correlations), and
optionally the speed-up and metric change of physically pruning the least important heads. The sweep is
exact and resumable: after an interruption rerun the same command with --resume.

    vitmech ablate                                   # the chirp regressor on generated chirps, % change of MSE
    vitmech ablate --model path/to/model --images imgs/ --targets y.npy --metric mse
    vitmech ablate --model path/to/model --images root_with_class_folders/     # labels from the folders
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from vitmech.cli.args import add_images, add_labels, add_models, add_run
from vitmech.studies._common import SHARDS

LAUNCH = SHARDS
QUICK = {"n_images": 4, "batch_size": 4, "max_batch": 4, "no_estimates": True}
CHIRPS = "chirps"
CHIRP_STREAM_START = 1_000_000  # stream indices far beyond any training split (fine-tuning uses 0..n)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, ["vitmech/mini-chirp"])
    add_images(parser, n_images=64, default=CHIRPS)
    parser.add_argument("--dataset", dest="images", help=argparse.SUPPRESS)
    add_labels(parser)
    parser.add_argument(
        "--metric",
        default=None,
        help="mse, cross_entropy, accuracy, class_logit, kl_to_clean, mse_to_clean, ... (default: mse "
        "for --targets, cross_entropy for --labels, kl_to_clean without either; features_mse_to_clean for "
        "models without a classifier)",
    )
    parser.add_argument(
        "--ablation",
        default="zero",
        choices=["zero", "mean", "resample", "uniform_attention"],
        help="how a head is removed (mean: over the images themselves; resample: within the batch)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--max-batch", type=int, default=8, help="images per stacked forward of the exact sweep")
    parser.add_argument("--no-estimates", action="store_true", help="skip the gradient estimates")
    parser.add_argument("--prune", type=int, default=0, help="also prune the N least important heads and time it")
    parser.add_argument(
        "--no-taxonomy",
        action="store_true",
        help="skip the head taxonomy beside the heatmap (drawn for the generated chirps, whose regions are known)",
    )
    add_run(parser, resumable=True)


def load_chirps(model: Any, n: int, seed: int) -> tuple[Any, Any, str, Any]:
    """Chirp spectrogram figures (vitmech.data.chirps), their targets z-scored as the model was trained, a
    note, and the figures' annotated regions (chirp, text, axis, colour bar, background; for the taxonomy).

    The z-scoring mean/std come from the model card (`card["targets"]`, written by the chirp fine-tune);
    without them they are fitted on these images, and the note says so.
    """
    import torch

    from vitmech.analysis.alignment import RegionMasks
    from vitmech.analysis.taxonomy import CHIRP_PRIORITY, exclusive_regions
    from vitmech.data.chirps import TARGETS, generate_chirps

    samples = generate_chirps(n, seed, start=CHIRP_STREAM_START, size=model.cfg.image_size)
    regions = exclusive_regions(RegionMasks.from_chirps(samples), CHIRP_PRIORITY)
    images = model.preprocess([s.image for s in samples])
    raw = torch.tensor([s.targets for s in samples], dtype=torch.float64)
    card_targets = model.card.get("targets") if isinstance(model.card, dict) else None
    if card_targets and "mean" in card_targets and "std" in card_targets:
        mean = torch.tensor(card_targets["mean"], dtype=torch.float64)
        std = torch.tensor(card_targets["std"], dtype=torch.float64)
        how = "z-scored with the mean/std of the model card (its training split)"
    else:
        mean, std = raw.mean(0), raw.std(0, unbiased=False)
        how = "z-scored with these images' own mean/std (the model card has no `targets` mean/std)"
    note = (
        f"{n} generated chirp spectrograms (seed {seed}, stream indices from {CHIRP_STREAM_START}); "
        f"targets {', '.join(TARGETS)} {how}"
    )
    return images, ((raw - mean) / std).float(), note, regions


def run(args: argparse.Namespace) -> int:
    from vitmech.cli.args import models_from
    from vitmech.distributed import current
    from vitmech.studies._common import start

    if args.n_images < 1:
        args.parser.error("--n-images must be >= 1")
    names = models_from(args)
    if len(names) != 1:
        args.parser.error("ablate takes one --model")
    # under torchrun / accelerate launch (LAUNCH = SHARDS) every rank runs this study: the sweep and the
    # estimates are shared out (docs/cluster.md), rank 0 makes the output folder and writes the report
    out = start(args, resumable_parts=("store",))
    return _run(args, names, out, current())


def _run(args: argparse.Namespace, names: list[str], out: Any, ranks: Any) -> int:
    import numpy as np
    import torch

    from vitmech.analysis.ablation import (
        MeanAblation,
        ResampleAblation,
        compare_estimates,
        measure_pruning,
        prune_heads,
        resolve_ablation,
        resolve_metric,
    )
    from vitmech.analysis.streaming import stream_head_estimates, stream_head_sweep
    from vitmech.cli.inputs import load_images
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import models
    from vitmech.train.heads import check_labels
    from vitmech.viz.ablation import plot_estimates_vs_exact, plot_head_heatmap, plot_layer_summary

    loaded = models(args, names)
    model = loaded[0].model
    regions = None
    if args.images == CHIRPS:
        images, targets, data_note, regions = load_chirps(model, args.n_images, args.seed)
    else:
        source = load_images(args)
        images = model.preprocess(source.images)
        targets = None
        if source.targets is not None:
            targets = torch.as_tensor(source.targets, dtype=torch.float32)
        elif source.labels is not None:
            targets = torch.as_tensor(source.labels, dtype=torch.int64)
            try:
                check_labels(model, targets, source.class_names)
            except ValueError as err:
                raise SystemExit(f"error: --images {args.images}: {err}") from None
        data_note = source.note + (", with labels" if source.labels is not None else "")
        data_note += ", with targets" if source.targets is not None else ""
    if args.metric is None:  # the loss the model would be trained with, else the drift of its output
        args.metric = (
            ("kl_to_clean" if model.cfg.has_classifier else "features_mse_to_clean")
            if targets is None
            else "cross_entropy"
            if not targets.is_floating_point()
            else "mse"
        )
    metric = resolve_metric(args.metric)
    if metric.needs_targets and targets is None:
        args.parser.error(
            f"metric {args.metric!r} needs targets: pass --targets FILE, --labels FILE or class sub-folders "
            "(without targets: kl_to_clean for classifiers, mse_to_clean for regressors)"
        )
    ablation: Any
    if args.ablation == "mean":
        ablation = MeanAblation.from_reference(model, images, batch_size=args.batch_size)
    elif args.ablation == "resample":
        ablation = ResampleAblation(seed=args.seed)
    else:
        ablation = resolve_ablation(args.ablation)

    start_time = time.perf_counter()
    result = stream_head_sweep(
        model,
        images,
        metric,
        ablation,
        targets=targets,
        batch_size=args.batch_size,
        max_batch=args.max_batch,
        store=out / "store",
        progress=not args.no_progress,
    )
    sweep_seconds = time.perf_counter() - start_time
    estimates = None
    if not args.no_estimates:
        est_start = time.perf_counter()
        estimates = stream_head_estimates(
            model, images, metric, ablation, targets=targets, batch_size=args.batch_size, progress=False
        )
        est_seconds = time.perf_counter() - est_start
    if not ranks.is_main:
        return 0

    report = study_report(out, f"Head ablation heatmap: {names[0]}", loaded)
    cfg = model.cfg
    value = "pct_change" if result.clean != 0 else "delta"
    card_note = "; card: " + str(model.card["note"]) if isinstance(model.card, dict) and model.card.get("note") else ""
    report.add_text(
        f"Model `{names[0]}` ({loaded[0].note}{card_note}): "
        f"{cfg.n_layers} layers x {cfg.n_heads} heads, {cfg.n_tokens} tokens. "
        f"Data: {data_note}. Metric: `{result.metric['metric']}` (clean value {result.clean:.6g}, mean over "
        f"{result.n_examples} images). Ablation: `{ablation.name}` (the head's z replaced before W_O; "
        f"docs/ablation.md). Exact sweep of {len(result.cells)} heads: {sweep_seconds:.1f} s (results file "
        f"`{result.store_path}`; --resume continues from it). Layers and heads are 0-based. "
        "% change = 100 (ablated - clean) / |clean|; delta_se is the standard error over images; heatmap cells "
        "within 2 SE of zero are hatched and greyed."
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
    report.add_json(
        "sweep", {**result.to_dict(), "seconds": sweep_seconds, "model": names[0], "weights": loaded[0].note}
    )

    if estimates is not None:
        comparison = compare_estimates(result, estimates)
        report.add_text(
            f"Gradient estimates (one forward + backward per batch, {est_seconds:.1f} s = "
            f"{est_seconds / max(sweep_seconds, 1e-9):.2f} x the exact sweep): Spearman correlation with the exact "
            f"effects {comparison.spearman_attribution:.3f} (attribution patching vs effect) and "
            f"{comparison.spearman_michel:.3f} (Michel importance vs |effect|)."
        )
        report.add_figure("estimates", plot_estimates_vs_exact(comparison), caption="Estimates vs exact effects")
        report.add_table("estimates", comparison.to_frame(), show=False)

    if regions is not None and not args.no_taxonomy and model.cfg.class_token:
        _add_taxonomy(report, model, images, regions, result, value, args)

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


def _add_taxonomy(report: Any, model: Any, images: Any, regions: Any, result: Any, value: str, args: Any) -> None:
    """The head taxonomy of the same images (the readout query's attention against the figure's regions: the
    class token's row, or the mean patch-query row of a model whose head reads the patch tokens; rule and
    thresholds in docs/taxonomy.md) beside the ablation heatmap, the joined per-head table, and the layers
    ranked per image by their attention on the chirp."""
    from vitmech.analysis.alignment import cls_attention_grid, head_mean_grid
    from vitmech.analysis.attention import collect_patterns
    from vitmech.analysis.layer_ranking import rank_layers
    from vitmech.analysis.taxonomy import CHIRP_TASK_REGIONS, head_taxonomy
    from vitmech.tokens import token_layout
    from vitmech.viz.attention import denormalize
    from vitmech.viz.taxonomy import plot_taxonomy, plot_top_layers

    patterns = collect_patterns(model, images, batch_size=args.batch_size, rows="cls", progress=False)
    maps = cls_attention_grid(model, patterns, rows="cls")
    taxonomy = head_taxonomy(maps, regions, task_regions=CHIRP_TASK_REGIONS)
    counts = ", ".join(f"{label}: {n}" for label, n in taxonomy.counts().items())
    areas = ", ".join(f"{name} {a:.3f}" for name, a in zip(taxonomy.region_names, taxonomy.area.tolist()))
    layout = token_layout(model)  # the query row the model's output reads
    query = "class-token attention" if layout.readout_index is not None else "mean patch-query attention"
    report.add_text(
        f"Head taxonomy (docs/taxonomy.md#definitions): each head's {query} mass on each region type "
        f"relative to its area (mean area shares: {areas}), the entropy over region types, and the rule with "
        f"thresholds {taxonomy.thresholds}. Heads per label: {counts}."
    )
    report.add_figure(
        "taxonomy",
        plot_taxonomy(taxonomy, result, value),
        caption="Head taxonomy (left) beside the head-ablation heatmap (right), same layer x head grid",
    )
    joined = taxonomy.join_ablation(result.to_frame())
    report.add_table("taxonomy", joined, caption="Per head: taxonomy and ablation effect", show=False)
    by_label = joined.groupby("label")["delta"].agg(["count", "mean", "std"]).reset_index()
    report.add_table("taxonomy_by_label", by_label, caption="Ablation effect (delta) by taxonomy label")
    report.add_json("taxonomy", taxonomy.to_dict())

    layer_maps = head_mean_grid(maps)  # [B, L, g, g]
    ranking = rank_layers(layer_maps, regions, CHIRP_TASK_REGIONS[0])
    report.add_text(
        "Most-focused layers (docs/taxonomy.md#layer-ranking): per image, the layers ranked by the share of their "
        f"head-mean {query} on the chirp (chance: the chirp's area share, "
        f"{float(ranking.area_share.mean()):.3f} on average)."
    )
    report.add_table("layer_ranking", ranking.summary(), caption="Per layer: mean focus on the chirp and rank")
    report.add_table("layer_ranking_per_image", ranking.to_frame(), show=False)
    shown = [denormalize(image, model.preprocessing.mean, model.preprocessing.std) for image in images[:4]]
    report.add_figure(
        "top_layers",
        plot_top_layers(shown, layer_maps, ranking),
        caption=f"The three most-focused layers of the first images (head-mean {query})",
    )
