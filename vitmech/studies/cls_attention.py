"""CLS attention by layer: entropy and top-k concentration of the CLS token's attention over the patches,
per layer and head; per-head maps of one image; layer progression.

Entropy in nats of the CLS row renormalised over the patches (uniform: ln N, 5.278 for 196 patches), per
head and of the head-mean map; top-k concentration = attention mass on the k most attended patches.

    vitmech cls                                             # the shipped pair, 64 synthetic galaxies
    vitmech cls --model vit_base_patch16_224 --images path/to/folder
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from vitmech.cli.args import FINETUNED, PRETRAINED, add_images, add_models, add_run
from vitmech.studies._common import SHARDS

LAUNCH = SHARDS  # under torchrun the images are dealt out to the ranks; rank 0 writes
QUICK = {"n_images": 4, "batch_size": 4, "top_k": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(
        parser, [PRETRAINED, FINETUNED], "model; repeat for several (with two, the second is compared to the first)"
    )
    add_images(parser, n_images=64)
    parser.add_argument("--top-k", type=int, default=10, help="k of the top-k concentration")
    parser.add_argument("--raw-cls", action="store_true", help="do not renormalise CLS attention over the patches")
    parser.add_argument("--example-image", type=int, default=0, help="image shown in the per-head and layer plots")
    parser.add_argument("--per-tile-scale", action="store_true", help="scale each head's map to its own range")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_run(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.analysis.attention import AttentionSettings
    from vitmech.analysis.compare import prepare_images, summarize_attention
    from vitmech.analysis.streaming import StreamedComparison
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import attention_summaries, head_rows, is_main, model_lines, models_and_images, slug
    from vitmech.viz import attention as viz

    out, loaded, source = models_and_images(args)
    names = [m.name for m in loaded]
    images = source.images
    if not 0 <= args.example_image < len(images):
        args.parser.error(f"--example-image must be in [0, {len(images)})")
    settings = AttentionSettings(renormalise=not args.raw_cls, k=args.top_k)
    summaries = attention_summaries(args, loaded, images, settings=settings)
    if not is_main():
        return 0
    report = study_report(out, "CLS attention by layer", loaded)
    report.add_text(f"{model_lines(loaded)}\n- images: {source.note}\n- settings: {settings.to_dict()}")
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
            f"by_layer_{slug(s.name)}",
            s.metrics.layer_frame()[columns],
            caption=f"{s.name}: CLS attention by layer (entropy in nats; means over images)",
        )
    report.add_table("heads", head_rows(summaries), caption="Per layer x head", show=False)
    if len(summaries) == 2:
        comparison = StreamedComparison(before=summaries[0], after=summaries[1], weights=None, cka=None)
        report.add_table(
            "layer_change", comparison.layer_table(), caption=f"Change by layer ({names[1]} - {names[0]})", show=False
        )
    frames = {s.name: s.metrics.layer_frame() for s in summaries}
    n_patches = loaded[0].model.cfg.n_patches
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
    for s, m in zip(summaries, loaded):
        model, cfg = m.model, m.model.cfg
        shown[s.name] = viz.denormalize(
            prepare_images(model, images[index : index + 1])[0], model.preprocessing.mean, model.preprocessing.std
        )
        with torch.no_grad():  # the example image's maps (one image, on rank 0)
            example = summarize_attention(model, images[index : index + 1], settings=settings, progress=False)
        example_metrics: Any = example.metrics  # cls_attention is kept by summarize_attention
        maps = example_metrics.cls_attention[0].reshape(cfg.n_layers, cfg.n_heads, cfg.grid_size, cfg.grid_size)
        report.add_figure(
            f"heads_{slug(s.name)}",
            viz.plot_head_grid(
                maps,
                image=shown[s.name],
                title=f"{s.name}: CLS attention per head, image {index}",
                per_tile=args.per_tile_scale,
            ),
        )
        report.add_figure(
            f"entropy_heads_{slug(s.name)}",
            viz.plot_head_heatmap(
                s.metrics.heads["cls_entropy"].mean, f"{s.name}: CLS entropy per head (nats)", "nats"
            ),
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
