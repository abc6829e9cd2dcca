"""Before vs after fine-tuning: the Galaxy Zoo fine-tuning study's attention comparison (docs/attention.md#the-galaxy-zoo-fine-tuning-table-and-the-scripts) on any two models and the same images.

Writes a report folder: the study's table (last-layer CLS entropy, top-10 concentration, rollout entropy:
before, after, change, with paired tests), locality change by layer, per layer x head tables of every
metric, per-head weight-space change, linear CKA of the residual streams, and the plots.

    python experiments/06_before_after_comparison.py                                  # embedded pair, 64 galaxies
    python experiments/06_before_after_comparison.py --pretrained vit_base_patch16_224 \\
        --finetuned path/to/saved_model --images path/to/folder --limit 64
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from typing import Any

import pandas as pd
import torch

from vitmech.analysis.attention import AttentionSettings
from vitmech.analysis.compare import ModelMismatchError, compare_models, prepare_images
from vitmech.analysis.rollout import RolloutSettings
from vitmech.cli import add_image_arguments, add_output_argument, load_images, load_models
from vitmech.report import Report
from vitmech.viz import attention as viz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="vitmech/mini-pretrained", help="model before fine-tuning")
    parser.add_argument("--finetuned", default="vitmech/mini-galaxy", help="model after fine-tuning")
    add_image_arguments(parser, default_galaxies=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--raw-cls", action="store_true", help="do not renormalise CLS attention over the patches")
    parser.add_argument("--alpha", type=float, default=0.5, help="rollout: attention weight against the identity")
    parser.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"])
    parser.add_argument("--discard-ratio", type=float, default=0.0)
    parser.add_argument("--cka-tokens", default="all", choices=["all", "cls", "patches", "none"])
    parser.add_argument("--example-image", type=int, default=0, help="image shown in the per-head and overlay plots")
    parser.add_argument("--no-progress", action="store_true")
    add_output_argument(parser, "reports/06_before_after_comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    (before, note_before), (after, note_after) = load_models([args.pretrained, args.finetuned])
    images, image_note = load_images(args)
    if len(images) < 2:
        parser.error(f"the before/after tests are paired over images: give at least 2 (got {image_note})")
    if not 0 <= args.example_image < len(images):
        parser.error(f"--example-image must be in [0, {len(images)})")
    try:
        settings = AttentionSettings(renormalise=not args.raw_cls, k=args.top_k)
        rollout_settings = RolloutSettings(args.alpha, args.head_fusion, args.discard_ratio)
        with torch.no_grad():
            comparison = compare_models(
                before,
                after,
                images,
                names=("before", "after"),
                settings=settings,
                rollout_settings=rollout_settings,
                batch_size=args.batch_size,
                cka_tokens=None if args.cka_tokens == "none" else args.cka_tokens,
                progress=not args.no_progress,
            )
    except (ModelMismatchError, ValueError) as error:
        sys.exit(f"error: {error}")

    report = Report(args.out, title="Attention before vs after fine-tuning")
    report.add_text(
        f"- before: `{args.pretrained}` ({note_before})\n- after: `{args.finetuned}` ({note_after})\n"
        f"- images: {image_note}\n- attention settings: {settings.to_dict()}\n"
        f"- rollout settings: {rollout_settings.to_dict()}\n- change = after - before; means over images; "
        "paired t-tests over images, Holm-adjusted within each table; 95% percentile bootstrap CI (10,000 resamples)."
    )
    summary = comparison.summary_table()
    report.add_table(
        "summary", summary.drop(columns=["key"]), caption="The Galaxy Zoo fine-tuning table", float_format=".4g"
    )
    report.add_text(
        "The Galaxy Zoo fine-tuning study (google/vit-base-patch16-224 fine-tuned on Galaxy Zoo 2) reported last-layer CLS entropy "
        "4.81 -> 3.09 nats, top-10 concentration 20.8% -> 79.4%, rollout entropy 4.85 -> 4.74; its exact metric "
        "code is not public (docs/attention.md#definitions-and-sources), so both head variants are shown."
    )
    report.add_table("locality", comparison.locality_table(), caption="Locality: mean attention distance by layer (px)")
    layer_table = comparison.layer_table()
    report.add_table("layers", layer_table, caption="Per-layer metrics (means over heads and images)", show=False)
    report.add_table("heads", comparison.head_table(), caption="Per layer x head metrics and weight change", show=False)
    if comparison.cka is not None:
        report.add_table(
            "cka", comparison.cka.to_frame(), caption="Linear CKA of the residual streams (before vs after)"
        )
    if comparison.weights is not None:
        w = comparison.weights
        report.add_table(
            "weight_change_by_layer",
            pd.DataFrame(
                {
                    "layer": range(w.qk.shape[0]),
                    "qk_mean": w.qk.mean(1).tolist(),
                    "qk_max": w.qk.amax(1).tolist(),
                    "ov_mean": w.ov.mean(1).tolist(),
                    "ov_max": w.ov.amax(1).tolist(),
                }
            ),
            caption="Relative Frobenius change of W_QK and W_OV (over heads)",
        )
    report.add_json("comparison", comparison.to_dict())
    report.add_json(
        "per_image",
        {s.name: {k: v.tolist() for k, v in s.image_scalars().items()} for s in (comparison.before, comparison.after)},
    )
    add_figures(report, comparison, before, after, images, args.example_image)
    elapsed = time.perf_counter() - started
    report.add_text(f"Run time: {elapsed:.1f} s (torch threads: {torch.get_num_threads()}).")
    path = report.write()
    print(summary.drop(columns=["key"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {path} ({elapsed:.1f} s)")
    return 0


def add_figures(report: Report, comparison: Any, before: Any, after: Any, images: list[Any], index: int) -> None:
    b, a = comparison.before, comparison.after
    frames = {"before": b.metrics.layer_frame(), "after": a.metrics.layer_frame()}
    n_patches = b.metrics.cls_attention.shape[-1]
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
            {"before": b.metrics.mean_distance.mean(0), "after": a.metrics.mean_distance.mean(0)},
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
    shown = {
        name: viz.denormalize(
            prepare_images(model, images[index : index + 1])[0], model.preprocessing.mean, model.preprocessing.std
        )
        for name, model in (("before", before), ("after", after))
    }
    grid = before.cfg.grid_size
    for name, summary in (("before", b), ("after", a)):
        maps = summary.metrics.cls_attention[index].reshape(n_layers, n_heads, grid, grid)
        report.add_figure(
            f"heads_{name}",
            viz.plot_head_grid(maps, image=shown[name], title=f"{name}: CLS attention per head, image {index}"),
        )
    progression = sorted({0, (n_layers - 1) // 2, n_layers - 1})
    head_mean = {
        name: s.metrics.cls_attention[index].mean(1).reshape(n_layers, grid, grid)
        for name, s in (("before", b), ("after", a))
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
            {name: s.rollout.grid()[index] for name, s in (("before", b), ("after", a))},
            {name: maps[-1] for name, maps in head_mean.items()},
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
