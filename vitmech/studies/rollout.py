"""Attention rollout vs the last layer, and the rollout family on example images.

For every image: entropy of the CLS rollout map (Abnar & Zuidema 2020; alpha 0.5, mean over heads) and of
the last layer's head-mean CLS map, and rollout variants (max/min fusion, discard_ratio). For a few
example images: gradient-weighted rollout (Chefer et al. 2021), GMAR (L1 head weights) and attention flow
(max-flow; its cost is measured and reported).

    vitmech rollout                                         # the shipped pair, 64 synthetic galaxies
    vitmech rollout --model vit_base_patch16_224 --images path/to/folder --flow-images 1
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from vitmech.cli.args import FINETUNED, PRETRAINED, add_images, add_models, add_run
from vitmech.studies._common import SHARDS

LAUNCH = SHARDS  # under torchrun the images are dealt out to the ranks; rank 0 writes
QUICK = {"n_images": 4, "batch_size": 4, "gradient_images": 2, "flow_images": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [PRETRAINED, FINETUNED])
    add_images(parser, n_images=64)
    parser.add_argument("--alpha", type=float, default=0.5, help="attention weight against the identity")
    parser.add_argument("--discard-ratio", type=float, default=0.9, help="discard_ratio of the discard variant")
    parser.add_argument("--gradient-images", type=int, default=4, help="images for gradient rollout and GMAR")
    parser.add_argument("--flow-images", type=int, default=1, help="images for attention flow (0: skip)")
    parser.add_argument("--example-image", type=int, default=0, help="image shown in the overlays")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_run(parser)


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from vitmech.analysis.compare import prepare_images, summarize_attention
    from vitmech.analysis.rollout import RolloutSettings, rollout_maps
    from vitmech.analysis.stats import paired_comparison
    from vitmech.analysis.streaming import stream_attention_summary, stream_per_image
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import image_stream, is_main, model_lines, models_and_images, slug
    from vitmech.viz import attention as viz

    try:
        variants = {
            "rollout (mean)": RolloutSettings(args.alpha, "mean"),
            "rollout (max)": RolloutSettings(args.alpha, "max"),
            "rollout (min)": RolloutSettings(args.alpha, "min"),
            f"rollout (mean, discard {args.discard_ratio:g})": RolloutSettings(args.alpha, "mean", args.discard_ratio),
        }
    except ValueError as error:
        args.parser.error(str(error))
    out, loaded, source = models_and_images(args)
    images = source.images
    index = args.example_image
    if not 0 <= index < len(images):
        args.parser.error(f"--example-image must be in [0, {len(images)})")
    progress = not args.no_progress

    stream = image_stream(images, args.batch_size)
    measured = []  # per model: the streamed summary and the per-image entropy of each rollout variant
    for m in loaded:
        with torch.no_grad():
            summary = stream_attention_summary(
                m.model,
                stream,
                name=m.name,
                rollout_settings=variants["rollout (mean)"],
                batch_size=args.batch_size,
                progress=progress,
            )
            entropies = stream_per_image(
                m.model,
                stream,
                lambda model, pixels: {
                    k: v.entropy() for k, v in rollout_maps(model, pixels, variants, progress=False).items()
                },
                progress=progress,
                desc=f"rollout variants ({m.name})",
            )
        measured.append((summary, entropies))
    if not is_main():
        return 0

    report = study_report(out, "Attention rollout vs last layer", loaded)
    report.add_text(
        f"{model_lines(loaded)}\n- images: {source.note}\n- rollout variants: "
        + "; ".join(f"{k}: {v.to_dict()}" for k, v in variants.items())
    )
    rows, shown, last_maps, rollout_grids = [], {}, {}, {}
    for m, (summary, entropies) in zip(loaded, measured):
        name, model = m.name, m.model
        scalars = summary.image_scalars()
        test = paired_comparison(scalars["cls_entropy_last_head_mean_map"], scalars["rollout_entropy"])
        rows.append(
            {
                "model": name,
                "last_layer_entropy": test.mean_before,
                "rollout_entropy": test.mean_after,
                "rollout_minus_last": test.mean_change,
                "p": test.p,
                "n_images": test.n,
                **{f"{k} entropy": float(v.mean()) for k, v in entropies.items()},
            }
        )
        cfg = model.cfg
        with torch.no_grad():  # the example image's maps (one image, on rank 0)
            pixels = prepare_images(model, images[index : index + 1])
            example = summarize_attention(model, pixels, rollout_settings=variants["rollout (mean)"], progress=False)
            variant_maps = rollout_maps(model, pixels, variants, progress=False)
        shown[name] = viz.denormalize(pixels[0], model.preprocessing.mean, model.preprocessing.std)
        example_metrics: Any = example.metrics  # cls_attention is kept by summarize_attention
        last_maps[name] = example_metrics.cls_attention[0, -1].mean(0).reshape(cfg.grid_size, cfg.grid_size)
        rollout_grids[name] = example.rollout.grid()[0]
        maps = {"last layer": last_maps[name], **{k: v.grid()[0] for k, v in variant_maps.items()}}
        maps.update(family_maps(model, images, index, args, report, name, progress))
        report.add_figure(
            f"maps_{slug(name)}",
            viz.plot_overlays(shown[name], maps, ncols=4, title=name),
            caption=f"{name}: CLS maps of image {index} on one shared colour scale",
        )
    report.add_table(
        "rollout_vs_last_layer",
        pd.DataFrame(rows),
        caption="Entropy (nats) of the CLS map: last layer (head mean) vs rollout; means over images",
    )
    report.add_figure(
        "rollout_vs_last_layer",
        viz.plot_rollout_vs_last_layer(shown, rollout_grids, last_maps),
        caption=f"Last-layer CLS attention vs rollout, image {index}",
    )
    print(report.write())
    return 0


def family_maps(
    model: Any, images: list[Any], index: int, args: argparse.Namespace, report: Any, name: str, progress: bool
) -> dict[str, Any]:
    """Gradient rollout, GMAR and flow maps of the example image `index`; their entropies (over the first
    --gradient-images / --flow-images images) as a table."""
    from vitmech.analysis.compare import prepare_images
    from vitmech.analysis.rollout import attention_flow, attention_gradients, gmar, gradient_rollout
    from vitmech.studies._common import slug
    from vitmech.tokens import READOUT, token_layout

    maps: dict[str, Any] = {}
    layout = token_layout(model)
    rows: list[dict[str, Any]] = []
    n_grad = min(args.gradient_images, len(images))
    chosen = sorted({index, *range(n_grad)}) if n_grad else []
    if chosen and model.cfg.has_classifier:
        started = time.perf_counter()
        pixels = prepare_images(model, [images[i] for i in chosen])
        grads = attention_gradients(model, pixels, batch_size=args.batch_size, progress=progress)
        seconds = (time.perf_counter() - started) / len(chosen)
        position = chosen.index(index)
        for label, result in (
            ("gradient rollout", gradient_rollout(grads.patterns, grads.gradients, tokens=[READOUT], layout=layout)),
            ("GMAR (L1)", gmar(grads.patterns, grads.gradients, "l1", args.alpha, tokens=[READOUT], layout=layout)),
        ):
            maps[label] = result.grid()[position]
            rows.append(
                {
                    "method": label,
                    "images": len(chosen),
                    "entropy": float(result.entropy().mean()),
                    "seconds_per_image": seconds,
                }
            )
    n_flow = min(args.flow_images, len(images))
    if n_flow:
        from vitmech.analysis.attention import collect_patterns

        flow_images = sorted({index, *range(n_flow)})[:n_flow] if index < n_flow else [index]
        patterns = collect_patterns(model, prepare_images(model, [images[i] for i in flow_images]), progress=False)
        started = time.perf_counter()
        flow = attention_flow(patterns, alpha=args.alpha, progress=progress, layout=layout)
        seconds = (time.perf_counter() - started) / len(flow_images)
        if index in flow_images:
            maps["attention flow"] = flow.grid()[flow_images.index(index)]
        rows.append(
            {
                "method": "attention flow",
                "images": len(flow_images),
                "entropy": float(flow.entropy().mean()),
                "seconds_per_image": seconds,
            }
        )
    if rows:
        report.add_table(
            f"family_{slug(name)}",
            rows,
            caption=f"{name}: gradient rollout, GMAR and flow (CLS maps; seconds per image: the forward + backward "
            "pass for the gradient methods, the max-flow for flow)",
        )
    return maps
