"""Locality of attention: mean attention distance per layer and head.

Mean attention distance (Dosovitskiy et al. 2020, Fig. 7): per head, the mean over query patches of the
attention-weighted pixel distance to the patch keys, in the model's own patch geometry. With two models,
also the change by layer (negative = more local; direction words only where Holm-significant).

    vitmech locality                                        # the shipped pair, 64 synthetic galaxies
    vitmech locality --model vit_base_patch16_224 --images path/to/folder
"""

from __future__ import annotations

import argparse

from vitmech.cli.args import FINETUNED, PRETRAINED, add_images, add_models, add_run
from vitmech.studies._common import SHARDS

LAUNCH = SHARDS  # under torchrun the images are dealt out to the ranks; rank 0 writes
QUICK = {"n_images": 4, "batch_size": 4}
DISTANCE_COLUMNS = ["layer", "head", "mean_distance_mean", "mean_distance_std", "n_images"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(
        parser, [PRETRAINED, FINETUNED], "model; repeat for several (with two, the second is compared to the first)"
    )
    add_images(parser, n_images=64)
    parser.add_argument(
        "--raw-distance",
        action="store_true",
        help="do not renormalise each query's attention over the patch keys (keras convention)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_run(parser)


def run(args: argparse.Namespace) -> int:
    from vitmech.analysis.attention import AttentionSettings
    from vitmech.analysis.streaming import StreamedComparison
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import attention_summaries, head_rows, is_main, model_lines, models_and_images, slug
    from vitmech.viz import attention as viz

    out, loaded, source = models_and_images(args)
    names = [m.name for m in loaded]
    settings = AttentionSettings(distance_renormalise=not args.raw_distance)
    summaries = attention_summaries(args, loaded, source.images, settings=settings)
    if not is_main():
        return 0
    report = study_report(out, "Locality: mean attention distance", loaded)
    report.add_text(f"{model_lines(loaded)}\n- images: {source.note}\n- settings: {settings.to_dict()}")
    for summary in summaries:
        frame = summary.metrics.layer_frame()[["layer", "mean_distance_mean", "mean_distance_std"]]
        per_head = summary.metrics.heads["mean_distance"].mean
        frame = frame.assign(min_head_px=per_head.amin(1).tolist(), max_head_px=per_head.amax(1).tolist())
        report.add_table(
            f"distance_{slug(summary.name)}", frame, caption=f"{summary.name}: mean attention distance by layer (px)"
        )
        report.add_figure(
            f"distance_heads_{slug(summary.name)}",
            viz.plot_head_heatmap(per_head, f"{summary.name}: mean attention distance per head (px)", "px"),
        )
    report.add_table(
        "heads", head_rows(summaries, DISTANCE_COLUMNS), caption="Mean attention distance per layer x head", show=False
    )
    report.add_figure(
        "distance_by_head",
        viz.plot_distance_by_head(
            {s.name: s.metrics.heads["mean_distance"].mean for s in summaries},
            image_size=loaded[0].model.cfg.image_size,
        ),
        caption="Each head's mean attention distance against its layer (Dosovitskiy et al. 2020, Fig. 7)",
    )
    report.add_figure(
        "distance_by_layer",
        viz.plot_metric_by_layer(
            {s.name: s.metrics.layer_frame() for s in summaries},
            "mean_distance",
            ylabel="px",
            title="Mean attention distance by layer (mean over heads, +-1 std over images)",
        ),
    )
    if len(loaded) == 2:
        comparison = StreamedComparison(before=summaries[0], after=summaries[1], weights=None, cka=None)
        report.add_table(
            "locality_change",
            comparison.locality_table(),
            caption=f"Locality change by layer ({names[1]} - {names[0]})",
        )
    print(report.write())
    return 0
