"""Locality of attention (Dosovitskiy et al. 2020, Fig. 7): mean attention distance per layer and head.

Mean attention distance (Dosovitskiy et al. 2020, Fig. 7): per head, the mean over query patches of the
attention-weighted pixel distance to the patch keys. With two models, also the change by layer
(negative = more local).

    python experiments/03_spatial_attention.py                                     # embedded pair, 64 galaxies
    python experiments/03_spatial_attention.py --models vit_base_patch16_224 --images path/to/folder
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import torch

from vitmech.analysis.attention import AttentionSettings
from vitmech.analysis.compare import ModelComparison, summarize_attention
from vitmech.cli import add_image_arguments, add_output_argument, load_images, load_models
from vitmech.report import Report
from vitmech.viz import attention as viz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["vitmech/mini-pretrained", "vitmech/mini-galaxy"],
        help="one or more models (names or folders); with two, the second is compared to the first",
    )
    add_image_arguments(parser, default_galaxies=64)
    parser.add_argument(
        "--raw-distance",
        action="store_true",
        help="do not renormalise each query's attention over the patch keys (keras convention)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-progress", action="store_true")
    add_output_argument(parser, "reports/03_spatial_attention")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    loaded = load_models(args.models, comparable=True)
    images, image_note = load_images(args)
    settings = AttentionSettings(distance_renormalise=not args.raw_distance)
    summaries = []
    for name, (model, _) in zip(args.models, loaded):
        summaries.append(
            summarize_attention(
                model, images, name=name, settings=settings, batch_size=args.batch_size, progress=not args.no_progress
            )
        )

    report = Report(args.out, title="Locality: mean attention distance")
    report.add_text(
        "\n".join(f"- `{name}`: {note}" for name, (_, note) in zip(args.models, loaded))
        + f"\n- images: {image_note}\n- settings: {settings.to_dict()}"
    )
    for summary in summaries:
        frame = summary.metrics.layer_frame()[["layer", "mean_distance_mean", "mean_distance_std"]]
        per_head = summary.metrics.mean_distance.mean(0)
        frame = frame.assign(min_head_px=per_head.amin(1).tolist(), max_head_px=per_head.amax(1).tolist())
        report.add_table(
            f"distance_{_slug(summary.name)}", frame, caption=f"{summary.name}: mean attention distance by layer (px)"
        )
        report.add_figure(
            f"distance_heads_{_slug(summary.name)}",
            viz.plot_head_heatmap(per_head, f"{summary.name}: mean attention distance per head (px)", "px"),
        )
    report.add_table("heads", _head_rows(summaries), caption="Mean attention distance per layer x head", show=False)
    first = loaded[0][0]
    report.add_figure(
        "distance_by_head",
        viz.plot_distance_by_head(
            {s.name: s.metrics.mean_distance.mean(0) for s in summaries}, image_size=first.cfg.image_size
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
        comparison = ModelComparison(before=summaries[0], after=summaries[1], weights=None, cka=None)
        report.add_table(
            "locality_change",
            comparison.locality_table(),
            caption=f"Locality change by layer ({args.models[1]} - {args.models[0]})",
        )
    print(report.write())
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _head_rows(summaries: list[Any]) -> Any:
    import pandas as pd

    columns = ["layer", "head", "mean_distance_mean", "mean_distance_std", "n_images"]
    return pd.concat([s.metrics.to_frame()[columns].assign(model=s.name) for s in summaries], ignore_index=True)


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
