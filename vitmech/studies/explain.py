"""Explanation maps side by side: vitmech's attention maps, Grad-CAM (grad-cam package), Chefer et al. 2021's
LRP attribution, captum's integrated gradients and saliency, for ViTs and CNNs on the same images.

Writes the image x method figure, each map's summary, and (for the synthetic galaxies, whose bar / arms /
bulge are annotated) each method's alignment with the annotated regions. Definitions: docs/explanations.md.

    vitmech explain                                          # mini-galaxy and mini-cnn on 6 synthetic galaxies
    vitmech explain --model vitmech/mini-galaxy --model resnet18 --random-init --images my_images/
    vitmech explain --methods gradcam,transformer_attribution --target true
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from vitmech.cli.args import FINETUNED, SYNTHETIC_GALAXIES, add_images, add_labels, add_models, add_run

DEFAULT_CNN = "vitmech/mini-cnn"
QUICK = {"n_images": 2, "ig_steps": 4, "batch_size": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(
        parser,
        [FINETUNED, DEFAULT_CNN],
        "model: a ViT (shipped vitmech/..., folder, timm name, HF hub id) or a CNN (vitmech/mini-cnn, a timm CNN "
        "name); repeat for several",
    )
    add_images(parser, n_images=6)
    add_labels(parser)
    add_map_options(parser, "comma-separated methods (default: every method the model takes; see docs/explanations.md)")
    parser.add_argument("--ig-steps", type=int, default=32, help="integration steps of integrated gradients")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pass")
    add_run(parser)


# ------------------------------------------------------------------------ shared with misclassified and patch-size


def add_map_options(parser: argparse.ArgumentParser, methods_help: str) -> None:
    """--methods (comma-separated; None: every method the model takes, see `parse_methods`) and --target (the
    class the class-specific maps explain): the options of the studies that draw explanation maps."""
    parser.add_argument("--methods", default=None, help=methods_help)
    parser.add_argument(
        "--target",
        choices=("predicted", "true"),
        default="predicted",
        help="class the class-specific maps explain (true: needs labels)",
    )


@dataclass
class Images:
    """Raw RGB images (uint8 [H, W, 3] arrays), labels, class names, annotated regions (or None), a note."""

    rgb: list[Any]
    labels: Any
    class_names: list[str] | None
    regions: Any
    note: str


def load_explain_images(args: argparse.Namespace) -> Images:
    """--images: generated galaxies keep their feature masks (bar, arms, bulge); other sources have none."""
    import numpy as np

    if args.images == SYNTHETIC_GALAXIES:
        from vitmech.analysis.alignment import RegionMasks
        from vitmech.data.galaxies import GALAXY_CLASSES, generate_galaxies

        if args.n_images is not None and args.n_images < 1:
            raise SystemExit("error: --n-images must be at least 1")
        batch = generate_galaxies(args.n_images, seed=args.image_seed, size=224)
        return Images(
            list(batch.images),
            np.asarray(batch.labels, dtype=np.int64),
            list(GALAXY_CLASSES),
            RegionMasks.from_galaxies(batch).with_union(),
            f"{len(batch)} synthetic galaxies (seed {args.image_seed}); regions: bar, arms, bulge and their union",
        )
    from vitmech.cli.inputs import load_images

    source = load_images(args)
    rgb = [np.asarray(image.convert("RGB")) for image in source.images]
    return Images(rgb, source.labels, source.class_names, None, source.note)


def load_any_model(args: argparse.Namespace, name: str) -> Any:
    """A LoadedModel: a CNN (shipped, saved or timm name) or any ViT the studies load."""
    from vitmech.cli.models import RANDOM_WEIGHTS, LoadedModel, go_offline, hub_offline, hub_reachable
    from vitmech.errors import InputError
    from vitmech.studies._common import models
    from vitmech.train.cnn import is_cnn_name, load_cnn, zoo_cnns

    if name.startswith("vitmech/") and name not in zoo_cnns() and name.endswith("cnn"):
        raise SystemExit(f"error: the shipped CNN {name!r} is not in this installation (shipped: {list(zoo_cnns())})")
    if not is_cnn_name(name):
        return models(args, [name])[0]
    try:
        if name in zoo_cnns() or not _is_timm_name(name):
            return LoadedModel(load_cnn(name), name, "shipped/local weights")
        if not hub_offline() and not hub_reachable():
            go_offline()  # timm then reads its hub cache only, without retries
        try:
            return LoadedModel(load_cnn(name, pretrained=True), name, "pretrained weights")
        except (OSError, RuntimeError) as err:
            if not args.random_init:
                raise SystemExit(
                    f"error: cannot load CNN {name!r} with pretrained weights ({err}); pass --random-init to "
                    "study random weights (stamped on every output)"
                ) from None
            return LoadedModel(load_cnn(name), name, f"{RANDOM_WEIGHTS} (--random-init)", random=True)
    except InputError as err:
        raise SystemExit(f"error: {err}") from None


def _is_timm_name(name: str) -> bool:
    import timm

    return bool(timm.list_models(name))


def model_input(model: Any, rgb: list[Any]) -> Any:
    """The model's normalised input [B, C, S, S] from raw RGB images (its own preprocessing)."""
    from vitmech.preprocessing import preprocess

    return preprocess(rgb, model.preprocessing)


def parse_methods(args: argparse.Namespace) -> list[str] | None:
    from vitmech.analysis.explain import METHODS

    if args.methods is None:
        return None
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        args.parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    return chosen


def methods_for(model: Any, wanted: list[str] | None, class_specific_only: bool = False) -> list[str]:
    """The wanted methods this model takes (default: its family's defaults)."""
    from vitmech.analysis.explain import CNN_DEFAULT, METHODS, VIT_DEFAULT, is_vit

    vit = is_vit(model)
    base = wanted if wanted is not None else list(VIT_DEFAULT if vit else CNN_DEFAULT)
    chosen = [m for m in base if vit or not METHODS[m].vit_only]
    if class_specific_only:
        chosen = [m for m in chosen if METHODS[m].class_specific]
    return chosen


def alignment_rows(maps: dict[str, Any], regions: Any, model_name: str, extra: dict[str, Any] | None = None) -> Any:
    """Per image, method and region: IoU (top pixels, region's own area), energy share and pointing game."""
    import pandas as pd

    from vitmech.analysis.alignment import alignment_scores

    frames = []
    for method, values in maps.items():
        scores = alignment_scores(values.float(), regions, source=method).to_frame()
        scores.insert(0, "method", method)
        scores.insert(0, "model", model_name)
        for key, value in (extra or {}).items():
            scores[key] = value
        frames.append(scores)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------- the study


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from vitmech.analysis.explain import explain
    from vitmech.cli.args import models_from
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import model_lines, start
    from vitmech.viz.explain import plot_explanations

    if args.ig_steps < 1 or args.batch_size < 1:
        args.parser.error("--ig-steps and --batch-size must be positive")
    wanted = parse_methods(args)
    out = start(args)
    names = models_from(args)
    loaded = [load_any_model(args, name) for name in names]
    data = load_explain_images(args)
    if args.target == "true" and data.labels is None:
        args.parser.error("--target true needs labelled images (--labels, class folders or synthetic galaxies)")
    report = study_report(out, "Explanation methods side by side", loaded)
    report.add_text(
        f"{model_lines(loaded)}\n- images: {data.note}\n- class-specific maps explain the {args.target} class"
    )
    explanations, summaries, alignments = {}, [], []
    for m in loaded:
        methods = methods_for(m.model, wanted)
        if not methods:
            report.add_text(f"`{m.name}` takes none of the methods asked for.")
            continue
        x = model_input(m.model, data.rgb)
        target = torch.as_tensor(data.labels) if args.target == "true" else None
        ex = explain(
            m.model,
            x,
            methods,
            target,
            batch_size=args.batch_size,
            ig_steps=args.ig_steps,
            random_weights=m.random,
        )
        explanations[m.name] = ex
        frame = ex.to_frame()
        frame.insert(0, "model", m.name)
        summaries.append(frame)
        if data.regions is not None:
            alignments.append(alignment_rows(ex.maps, data.regions, m.name))
    if not explanations:
        raise SystemExit("error: no model takes the methods asked for")
    report.add_figure(
        "explanations",
        plot_explanations(data.rgb, explanations),
        caption="Each map over its image; one colour scale per column (its colour bar below it). Grad-CAM maps "
        "are min-max scaled per image by the grad-cam package; integrated gradients is signed.",
    )
    report.add_table("maps", pd.concat(summaries, ignore_index=True), caption="Every map's range", show=False)
    if alignments:
        table = pd.concat(alignments, ignore_index=True)
        report.add_table("alignment", table, caption="Alignment of every map with each annotated region", show=False)
        union = table[table["region"] == "union"]
        summary = union.groupby(["model", "method"], sort=False)[["iou", "energy", "pointing"]].mean().reset_index()
        summary["iou_chance"] = float(union["iou_chance"].mean()) if "iou_chance" in union else float("nan")
        summary["n_images"] = len(data.rgb)
        report.add_table(
            "alignment_summary",
            summary,
            caption=f"Mean over {len(data.rgb)} images of the alignment with the union of bar, arms and bulge "
            "(descriptive; energy and pointing have the region's area share as chance level). With few images "
            "these means are not comparisons between methods.",
        )
    print(report.write())
    return 0
