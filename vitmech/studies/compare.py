"""Before vs after fine-tuning: the attention comparison on any two models and the same images.

Writes a report folder: the before/after table (last-layer CLS entropy, top-k concentration, rollout
entropy: before, after, change, paired tests over images, Holm-adjusted), locality change by layer, per
layer x head tables of every metric, per-head weight-space change, linear CKA of the residual streams,
accuracy on labelled images, and the plots.

    vitmech compare                                            # the shipped pair on 64 synthetic galaxies
    vitmech compare --before vit_base_patch16_224 --after path/to/saved_model --images path/to/folder
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from vitmech.cli.args import add_images, add_labels, add_pair, add_run
from vitmech.studies._common import SHARDS

LAUNCH = SHARDS  # under torchrun the images are dealt out to the ranks; rank 0 writes
QUICK = {"n_images": 4, "batch_size": 4, "top_k": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair(parser)
    add_images(parser, n_images=64)
    add_labels(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--top-k", type=int, default=10, help="k of the top-k concentration")
    parser.add_argument("--raw-cls", action="store_true", help="do not renormalise CLS attention over the patches")
    parser.add_argument("--alpha", type=float, default=0.5, help="rollout: attention weight against the identity")
    parser.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="rollout head fusion")
    parser.add_argument("--discard-ratio", type=float, default=0.0, help="rollout discard ratio")
    parser.add_argument("--cka-tokens", default="all", choices=["all", "cls", "patches", "none"], help="CKA rows")
    parser.add_argument("--example-image", type=int, default=0, help="image shown in the per-head and overlay plots")
    add_run(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.analysis.attention import AttentionSettings
    from vitmech.analysis.compare import summarize_attention
    from vitmech.analysis.rollout import RolloutSettings
    from vitmech.analysis.streaming import stream_compare_models
    from vitmech.cli.inputs import load_images
    from vitmech.cli.outputs import study_report
    from vitmech.errors import BatchSourceError, ModelMismatchError
    from vitmech.studies._common import image_stream, is_main, model_lines, models, start

    out = start(args)
    started = time.perf_counter()
    loaded = models(args, [args.before, args.after])
    before, after = loaded[0].model, loaded[1].model
    source = load_images(args, minimum=2)
    images = source.images
    if not 0 <= args.example_image < len(images):
        args.parser.error(f"--example-image must be in [0, {len(images)})")
    try:
        settings = AttentionSettings(renormalise=not args.raw_cls, k=args.top_k)
        rollout_settings = RolloutSettings(args.alpha, args.head_fusion, args.discard_ratio)
        with torch.no_grad():
            comparison = stream_compare_models(
                before,
                after,
                image_stream(images, args.batch_size),
                names=("before", "after"),
                settings=settings,
                rollout_settings=rollout_settings,
                batch_size=args.batch_size,
                cka_tokens=None if args.cka_tokens == "none" else args.cka_tokens,
                progress=not args.no_progress,
            )
    except (ModelMismatchError, ValueError, BatchSourceError) as error:
        raise SystemExit(f"error: {error}") from None
    accuracy = accuracy_rows(loaded, source, args.batch_size)  # sharded too: every rank takes part
    if not is_main():
        return 0
    with torch.no_grad():  # the example image's maps for the figures (one image, on rank 0)
        examples = [
            summarize_attention(
                m.model,
                images[args.example_image : args.example_image + 1],
                name=name,
                settings=settings,
                rollout_settings=rollout_settings,
                progress=False,
            )
            for m, name in zip(loaded, ("before", "after"))
        ]

    report = study_report(out, "Attention before vs after fine-tuning", loaded)
    report.add_text(
        f"{model_lines(loaded)}\n- images: {source.note}\n- attention settings: {settings.to_dict()}\n"
        f"- rollout settings: {rollout_settings.to_dict()}\n- change = after - before; means over images; "
        "paired t-tests over images, Holm-adjusted within each table; 95% percentile bootstrap CI (10,000 "
        "resamples). Direction words only where the Holm-adjusted p < 0.05, else 'no significant change'."
    )
    summary = comparison.summary_table()
    report.add_table("summary", summary.drop(columns=["key"]), caption="Before/after table", float_format=".4g")
    report.add_text(
        "For reference, ViT-B/16 (google/vit-base-patch16-224) fine-tuned on Galaxy Zoo 2 was reported at "
        "last-layer CLS entropy 4.81 -> 3.09 nats, top-10 concentration 20.8% -> 79.4%, rollout entropy "
        "4.85 -> 4.74; that metric code is not public, so both head variants are shown (docs/attention.md)."
    )
    report.add_table("locality", comparison.locality_table(), caption="Locality: mean attention distance by layer (px)")
    report.add_table(
        "layers", comparison.layer_table(), caption="Per-layer metrics (means over heads and images)", show=False
    )
    report.add_table("heads", comparison.head_table(), caption="Per layer x head metrics and weight change", show=False)
    if comparison.cka is not None:
        report.add_table(
            "cka", comparison.cka.to_frame(), caption="Linear CKA of the residual streams (before vs after)"
        )
    if comparison.weights is not None:
        w = comparison.weights
        report.add_table(
            "weight_change_by_layer",
            [
                {
                    "layer": layer,
                    "qk_mean": float(w.qk[layer].mean()),
                    "qk_max": float(w.qk[layer].amax()),
                    "ov_mean": float(w.ov[layer].mean()),
                    "ov_max": float(w.ov[layer].amax()),
                }
                for layer in range(w.qk.shape[0])
            ],
            caption="Relative Frobenius change of W_QK and W_OV (over heads)",
        )
    if accuracy:
        report.add_table(
            "accuracy", accuracy, caption="Accuracy on these images (models whose classes match the labels)"
        )
    report.add_json("comparison", comparison.to_dict())
    report.add_json(
        "per_image",
        {s.name: {k: v.tolist() for k, v in s.image_scalars().items()} for s in (comparison.before, comparison.after)},
    )
    add_figures(
        report,
        comparison,
        before,
        after,
        images[args.example_image : args.example_image + 1],
        examples,
        args.example_image,
    )
    elapsed = time.perf_counter() - started
    report.add_text(f"Run time: {elapsed:.1f} s.")
    path = report.write()
    print(summary.drop(columns=["key"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {path} ({elapsed:.1f} s)")
    return 0


def accuracy_rows(loaded: list[Any], source: Any, batch_size: int) -> list[dict[str, Any]]:
    """Top-1 accuracy of each classifier whose class count matches the labels' classes (chance alongside)."""
    import torch

    from vitmech.analysis.streaming import stream_per_image
    from vitmech.studies._common import image_stream

    if source.labels is None:
        return []
    n_classes = len(source.class_names) if source.class_names else int(source.labels.max()) + 1
    rows = []
    for entry in loaded:
        model = entry.model
        if not model.cfg.has_classifier or model.cfg.n_classes != n_classes:
            continue
        with torch.no_grad():
            predicted = stream_per_image(
                model,
                image_stream(source.images, batch_size),
                lambda m, pixels: {"class": m(pixels).argmax(-1)},
                progress=False,
            )["class"]
        correct = (predicted == torch.as_tensor(source.labels)).float()
        rows.append(
            {"model": entry.name, "accuracy": float(correct.mean()), "chance": 1 / n_classes, "n_images": len(correct)}
        )
    return rows


def add_figures(
    report: Any, comparison: Any, before: Any, after: Any, example: list[Any], summaries: list[Any], number: int
) -> None:
    """The study's figures: metrics by layer and head from the (streamed) comparison, and the maps of the
    example image (`example`: that one image; `summaries`: each model's `summarize_attention` of it)."""
    import torch

    from vitmech.analysis.compare import prepare_images
    from vitmech.viz import attention as viz

    b, a = comparison.before, comparison.after
    frames = {"before": b.metrics.layer_frame(), "after": a.metrics.layer_frame()}
    n_patches = summaries[0].metrics.cls_attention.shape[-1]
    for metric, label, ref in [
        ("cls_entropy", "CLS entropy, mean of per-head (nats)", math.log(n_patches)),
        ("cls_entropy_head_mean_map", "CLS entropy of the head-mean map (nats)", math.log(n_patches)),
        (
            f"cls_top{b.metrics.settings.k}_head_mean_map",
            f"top-{b.metrics.settings.k} concentration (head-mean map)",
            None,
        ),
        ("mean_distance", "mean attention distance (px)", None),
    ]:
        report.add_figure(
            f"by_layer_{metric}",
            viz.plot_metric_by_layer(
                frames, metric, ylabel=label, title=label, reference=ref, reference_label="uniform" if ref else None
            ),
        )
    report.add_figure(
        "distance_by_head",
        viz.plot_distance_by_head(
            {"before": b.metrics.heads["mean_distance"].mean, "after": a.metrics.heads["mean_distance"].mean},
            image_size=before.cfg.image_size,
        ),
    )
    head_table = comparison.head_table()
    n_layers, n_heads = before.cfg.n_layers, before.cfg.n_heads
    report.add_figure(
        "entropy_change_per_head",
        viz.plot_head_heatmap(
            torch.tensor(head_table["cls_entropy_change"].to_numpy()).reshape(n_layers, n_heads),
            "CLS entropy change per head (after - before, nats)",
            "nats",
            diverging=True,
        ),
    )
    if comparison.weights is not None:
        report.add_figure(
            "qk_change_per_head",
            viz.plot_head_heatmap(
                comparison.weights.qk, "Relative change of W_QK per head", "relative Frobenius change"
            ),
        )
        report.add_figure(
            "ov_change_per_head",
            viz.plot_head_heatmap(
                comparison.weights.ov, "Relative change of W_OV per head", "relative Frobenius change"
            ),
        )
    if comparison.cka is not None:
        cka = comparison.cka.to_frame().rename(columns={"linear_cka": "linear_cka_mean"})
        report.add_figure(
            "cka_by_layer",
            viz.plot_metric_by_layer(
                {"before vs after": cka},
                "linear_cka",
                ylabel="linear CKA",
                title="Residual-stream CKA (layer -1: embeddings)",
            ),
        )
    index = 0  # the example image: the only one of `example` and `summaries`
    shown = {
        name: viz.denormalize(prepare_images(model, example)[0], model.preprocessing.mean, model.preprocessing.std)
        for name, model in (("before", before), ("after", after))
    }
    grid = before.cfg.grid_size
    for name, summary in zip(("before", "after"), summaries):
        maps = summary.metrics.cls_attention[index].reshape(n_layers, n_heads, grid, grid)
        report.add_figure(
            f"heads_{name}",
            viz.plot_head_grid(maps, image=shown[name], title=f"{name}: CLS attention per head, image {number}"),
        )
    progression = sorted({0, (n_layers - 1) // 2, n_layers - 1})
    head_mean = {
        name: s.metrics.cls_attention[index].mean(1).reshape(n_layers, grid, grid)
        for name, s in zip(("before", "after"), summaries)
    }
    report.add_figure(
        "layer_progression",
        viz.plot_layer_progression(
            shown, {name: {layer: maps[layer] for layer in progression} for name, maps in head_mean.items()}
        ),
    )
    report.add_figure(
        "rollout_vs_last_layer",
        viz.plot_rollout_vs_last_layer(
            shown,
            {name: s.rollout.grid()[index] for name, s in zip(("before", "after"), summaries)},
            {name: maps[-1] for name, maps in head_mean.items()},
        ),
    )
