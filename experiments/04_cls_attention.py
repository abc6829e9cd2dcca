"""CLS attention by layer (as in the Galaxy Zoo fine-tuning study, docs/attention.md#the-galaxy-zoo-fine-tuning-table-and-the-scripts): entropy and top-k concentration of the CLS token's
attention over the patches, per layer and head; per-head maps of one image; layer progression.

Entropy in nats of the CLS row renormalised over the patches (uniform: ln N = 5.278 for 196 patches), per
head and of the head-mean map; top-k concentration = attention mass on the k most attended patches.

    python experiments/04_cls_attention.py                                        # embedded pair, 64 galaxies
    python experiments/04_cls_attention.py --models vit_base_patch16_224 --images path/to/folder
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any

import torch

from vitmech.analysis.attention import AttentionSettings
from vitmech.analysis.compare import ModelComparison, prepare_images, summarize_attention
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
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--raw-cls", action="store_true", help="do not renormalise CLS attention over the patches")
    parser.add_argument("--example-image", type=int, default=0, help="image shown in the per-head and layer plots")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-progress", action="store_true")
    add_output_argument(parser, "reports/04_cls_attention")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    loaded = load_models(args.models, comparable=True)
    images, image_note = load_images(args)
    if not 0 <= args.example_image < len(images):
        parser.error(f"--example-image must be in [0, {len(images)})")
    settings = AttentionSettings(renormalise=not args.raw_cls, k=args.top_k)
    summaries = [
        summarize_attention(
            model, images, name=name, settings=settings, batch_size=args.batch_size, progress=not args.no_progress
        )
        for name, (model, _) in zip(args.models, loaded)
    ]

    report = Report(args.out, title="CLS attention by layer")
    report.add_text(
        "\n".join(f"- `{name}`: {note}" for name, (_, note) in zip(args.models, loaded))
        + f"\n- images: {image_note}\n- settings: {settings.to_dict()}"
    )
    k = settings.k
    columns = [
        "layer",
        "cls_entropy_mean",
        "cls_entropy_std",
        "cls_entropy_head_mean_map_mean",
        f"cls_top{k}_mean",
        f"cls_top{k}_head_mean_map_mean",
    ]
    for s in summaries:
        report.add_table(
            f"by_layer_{_slug(s.name)}",
            s.metrics.layer_frame()[columns],
            caption=f"{s.name}: CLS attention by layer (entropy in nats; means over images)",
        )
    report.add_table("heads", _head_rows(summaries), caption="Per layer x head", show=False)
    if len(summaries) == 2:
        comparison = ModelComparison(before=summaries[0], after=summaries[1], weights=None, cka=None)
        report.add_table(
            "layer_change",
            comparison.layer_table(),
            caption=f"Change by layer ({args.models[1]} - {args.models[0]})",
            show=False,
        )
    frames = {s.name: s.metrics.layer_frame() for s in summaries}
    n_patches = loaded[0][0].cfg.n_patches
    for metric, label, ref in [
        ("cls_entropy", "CLS entropy, mean of per-head (nats)", math.log(n_patches)),
        ("cls_entropy_head_mean_map", "CLS entropy of the head-mean map (nats)", math.log(n_patches)),
        (f"cls_top{k}", f"top-{k} concentration, mean of per-head", k / n_patches),
        (f"cls_top{k}_head_mean_map", f"top-{k} concentration of the head-mean map", k / n_patches),
    ]:
        report.add_figure(
            f"by_layer_{metric}",
            viz.plot_metric_by_layer(
                frames, metric, ylabel=label, title=label, reference=ref, reference_label="uniform"
            ),
        )
    index = args.example_image
    progression: dict[str, dict[int, Any]] = {}
    shown = {}
    for s, (model, _) in zip(summaries, loaded):
        cfg = model.cfg
        shown[s.name] = viz.denormalize(
            prepare_images(model, images[index : index + 1])[0], model.preprocessing.mean, model.preprocessing.std
        )
        maps = s.metrics.cls_attention[index].reshape(cfg.n_layers, cfg.n_heads, cfg.grid_size, cfg.grid_size)
        report.add_figure(
            f"heads_{_slug(s.name)}",
            viz.plot_head_grid(maps, image=shown[s.name], title=f"{s.name}: CLS attention per head, image {index}"),
        )
        report.add_figure(
            f"entropy_heads_{_slug(s.name)}",
            viz.plot_head_heatmap(s.metrics.cls_entropy.mean(0), f"{s.name}: CLS entropy per head (nats)", "nats"),
        )
        layers = sorted({0, (cfg.n_layers - 1) // 2, cfg.n_layers - 1})
        progression[s.name] = {layer: maps[layer].mean(0) for layer in layers}
    report.add_figure(
        "layer_progression",
        viz.plot_layer_progression(shown, progression),
        caption=f"CLS attention (head mean) at early, middle and last layers, image {index}",
    )
    print(report.write())
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _head_rows(summaries: list[Any]) -> Any:
    import pandas as pd

    return pd.concat([s.metrics.to_frame().assign(model=s.name) for s in summaries], ignore_index=True)


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
