"""Patch 16 against patch 32: the explanation study on two ViTs that differ in patch size, side by side.

For the same images: every explanation map of both models resampled to one pixel grid (the image's, at the
annotated masks' size), their alignment with the annotated bar / arms / bulge, the per-layer attention
metrics with pixel-comparable definitions, each model's accuracy, and how much the two models' maps agree;
per-image differences paired across the models (t-test, bootstrap CI, Holm). Definitions:
docs/explanations.md#patch-size.

    vitmech patch-size                         # mini-galaxy (patch 16) vs mini-galaxy-p32 on 64 galaxies
    vitmech patch-size --model my_p16 --model my_p32 --images my_images/ --labels label
"""

from __future__ import annotations

import argparse
from typing import Any

from vitmech.cli.args import FINETUNED, add_images, add_labels, add_models, add_run
from vitmech.studies.explain import add_map_options

PATCH32 = "vitmech/mini-galaxy-p32"
QUICK = {"n_images": 3, "ig_steps": 4, "batch_size": 3, "resamples": 200, "figure_images": 2, "top_k": 1}
DEFAULT_TOP_K = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(
        parser,
        [FINETUNED, PATCH32],
        "model: two ViTs that differ in patch size (the first is the reference of every difference)",
    )
    add_images(parser, n_images=64)
    add_labels(parser)
    add_map_options(parser, "comma-separated explanation methods (default: every ViT method; see docs/explanations.md)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help="top-k concentration: patches of the coarser model (the finer counts the same pixel area)",
    )
    parser.add_argument("--ig-steps", type=int, default=32, help="integration steps of integrated gradients")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pass")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of each CI")
    parser.add_argument("--figure-images", type=int, default=4, help="images (rows) in the maps figure")
    add_run(parser)


def _patch_label(model: Any) -> str:
    return f"p{model.cfg.patch_size}"


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from vitmech.analysis.explain import explain, is_vit
    from vitmech.analysis.patch_size import (
        common_grid,
        equal_area_k,
        layer_attention,
        map_agreement,
        paired_table,
    )
    from vitmech.cli.args import models_from
    from vitmech.cli.outputs import study_report
    from vitmech.errors import InputError
    from vitmech.studies._common import model_lines, models, start
    from vitmech.studies.explain import alignment_rows, load_explain_images, methods_for, model_input, parse_methods
    from vitmech.viz.explain import plot_explanations
    from vitmech.viz.patch_size import plot_layer_metrics

    for flag in ("top_k", "ig_steps", "batch_size", "resamples", "figure_images"):
        if getattr(args, flag) < 1:
            args.parser.error(f"--{flag.replace('_', '-')} must be positive")
    names = models_from(args)
    if len(names) != 2:
        args.parser.error(f"patch-size compares two models (--model twice), got {len(names)}")
    wanted = parse_methods(args)
    out = start(args)
    loaded = models(args, names)
    if not all(is_vit(m.model) for m in loaded):
        raise SystemExit("error: patch-size compares two ViTs; a CNN has no patch size")
    patch_sizes = [int(m.model.cfg.patch_size) for m in loaded]
    try:
        top_ks = equal_area_k(patch_sizes, args.top_k)
    except InputError as err:  # patch sizes that do not nest (12 and 16 px)
        raise SystemExit(f"error: {err}") from None
    for m, k in zip(loaded, top_ks):
        if k > m.model.cfg.grid_size**2:
            args.parser.error(f"--top-k {args.top_k} asks {k} of the {m.model.cfg.grid_size**2} patches of {m.name}")
    data = load_explain_images(args)
    if args.target == "true" and data.labels is None:
        args.parser.error("--target true needs labelled images (--labels, class folders or synthetic galaxies)")
    labels = [_patch_label(m.model) for m in loaded]
    if labels[0] == labels[1]:
        labels = [f"{label} ({name})" for label, name in zip(labels, names)]
    grid = data.regions.size if data.regions is not None else (loaded[0].model.cfg.image_size,) * 2
    methods = [method for method in methods_for(loaded[0].model, wanted)]
    target = torch.as_tensor(data.labels) if args.target == "true" else None

    report = study_report(out, f"Patch size: {names[0]} vs {names[1]}", loaded)
    report.add_text(
        f"{model_lines(loaded)}\n- patch sizes: {patch_sizes[0]} and {patch_sizes[1]} px "
        f"(grids {loaded[0].model.cfg.grid_size} x {loaded[0].model.cfg.grid_size} and "
        f"{loaded[1].model.cfg.grid_size} x {loaded[1].model.cfg.grid_size})\n- images: {data.note}\n"
        f"- maps resampled to one grid: the {grid[0]} x {grid[1]} pixel grid (bilinear, align_corners=False)\n"
        f"- class-specific maps explain the {args.target} class; differences are {labels[1]} - {labels[0]}, "
        "paired over images (t-test, 95% percentile bootstrap CI, Holm within each table); direction words only "
        "where the Holm-adjusted p < 0.05"
    )
    explanations, on_grid, attention, alignments, accuracy = {}, {}, [], [], []
    for m, label, k in zip(loaded, labels, top_ks):
        x = model_input(m.model, data.rgb)
        ex = explain(
            m.model, x, methods, target, batch_size=args.batch_size, ig_steps=args.ig_steps, random_weights=m.random
        )
        explanations[label] = ex
        on_grid[label] = {method: common_grid(values, grid) for method, values in ex.maps.items()}
        frame = layer_attention(m.model, x, k, batch_size=args.batch_size, progress=not args.no_progress)
        frame.insert(0, "model", label)
        attention.append(frame)
        if data.regions is not None:
            alignments.append(alignment_rows(on_grid[label], data.regions, label))
        if data.labels is not None and len(data.labels) == len(ex.predicted):
            correct = (ex.predicted.numpy() == torch.as_tensor(data.labels).numpy()).astype(float)
            accuracy.append(pd.DataFrame({"model": label, "image": range(len(correct)), "value": correct}))

    shown = min(args.figure_images, len(data.rgb))
    report.add_figure(
        "maps",
        plot_explanations(
            data.rgb[:shown],
            {label: _head(ex, shown) for label, ex in explanations.items()},
            columns="method",
            panel_size=1.3,
        ),
        caption=f"Image x method x model: each method's map of {labels[0]} next to {labels[1]}'s, both on the "
        f"{grid[0]} x {grid[1]} pixel grid; one colour scale per column (its colour bar below it).",
    )
    models_pair = (labels[0], labels[1])
    summary: dict[str, Any] = {"models": dict(zip(labels, names)), "patch_sizes": dict(zip(labels, patch_sizes))}
    if accuracy:
        table = paired_table(
            pd.concat(accuracy, ignore_index=True).assign(what="accuracy"),
            ["what"],
            models_pair,
            n_resamples=args.resamples,
        )
        report.add_table("accuracy", table, caption=f"Accuracy on the same {len(data.rgb)} images (paired over images)")
        summary["accuracy"] = table.to_dict("records")
    if alignments:
        scores = pd.concat(alignments, ignore_index=True)
        report.add_table("alignment", scores, caption="Alignment of every map with each region", show=False)
        long = scores.melt(
            id_vars=["model", "method", "image", "region"],
            value_vars=["iou", "energy", "pointing"],
            var_name="score",
        )
        union = long[long["region"] == "union"]
        table = paired_table(union, ["method", "score"], models_pair, n_resamples=args.resamples)
        table.insert(2, "chance", [_chance(scores, r["method"], r["score"]) for _, r in table.iterrows()])
        report.add_table(
            "alignment_comparison",
            table,
            caption="Alignment with the union of bar, arms and bulge: each model's mean, the paired difference "
            f"({labels[1]} - {labels[0]}) with its 95% CI, Holm over this table. Chance: the random-ranking IoU, "
            "and the region's area share for energy and pointing.",
        )
        summary["alignment"] = table.to_dict("records")
    attention_frame = pd.concat(attention, ignore_index=True)
    per_layer = paired_table(attention_frame, ["metric", "layer"], models_pair, n_resamples=args.resamples)
    mean_over_layers = attention_frame.groupby(["model", "image", "metric"], sort=False)["value"].mean().reset_index()
    overall = paired_table(mean_over_layers, ["metric"], models_pair, n_resamples=args.resamples)
    report.add_table(
        "attention_comparison",
        overall,
        caption=f"Attention metrics, mean over layers (entropy in nats and relative to ln N; top-k over the same "
        f"pixel area: {top_ks[0]} patches of {patch_sizes[0]} px, {top_ks[1]} of {patch_sizes[1]} px; distance in "
        "pixels); Holm over this table",
    )
    report.add_table("attention_by_layer", per_layer, caption="The same per layer (Holm over all rows)", show=False)
    report.add_figure(
        "attention_by_layer",
        plot_layer_metrics(attention_frame, list(models_pair)),
        caption="Per layer: mean over images with its 95% t interval (shaded), for each model",
    )
    summary["attention"] = overall.to_dict("records")
    agreement = []
    for method in methods:
        r = map_agreement(on_grid[labels[0]][method], on_grid[labels[1]][method])
        agreement.append(pd.DataFrame({"model": "r", "image": range(len(r)), "method": method, "value": r}))
    if agreement:
        frame = pd.concat(agreement, ignore_index=True)
        zeros = frame.assign(model="zero", value=0.0)
        table = paired_table(pd.concat([zeros, frame]), ["method"], ("zero", "r"), n_resamples=args.resamples)
        report.add_table(
            "map_agreement",
            table[["method", "mean_r", "ci_low", "ci_high", "p", "p_holm", "n_images"]],
            caption=f"Pearson r between the two models' maps of each image on the {grid[0]} x {grid[1]} grid: mean "
            "over images, 95% bootstrap CI; p tests mean r = 0 (Holm over methods)",
        )
        summary["map_agreement"] = table.to_dict("records")
    report.add_json("summary", summary)
    print(report.write())
    return 0


def _head(ex: Any, n: int) -> Any:
    """The first n images of an Explanation."""
    from dataclasses import replace

    return replace(ex, maps={k: v[:n] for k, v in ex.maps.items()}, targets=ex.targets[:n], logits=ex.logits[:n])


def _chance(scores: Any, method: str, score: str) -> float:
    """Mean chance level of a score on the union region: IoU of a random ranking; area share otherwise."""
    rows = scores[(scores["method"] == method) & (scores["region"] == "union")]
    column = "iou_chance" if score == "iou" and "iou_chance" in rows else "area_share"
    return float(rows[column].mean()) if column in rows else float("nan")
