"""Circuits: positional QK, composition, direct logit attribution and logit lens, before/after fine-tuning.

For a model (and optionally its fine-tuned twin), on processed weights (LayerNorms folded, writing weights
centred, value biases folded: the logits are unchanged, checked):
  - positional QK grids by layer for one query patch, and each head's positional locality (pixels),
    next to the mean attention distance measured on the images;
  - the strongest composing head pairs (Q, K, V; minus the random-matrix baseline);
  - direct logit attribution per head to each image's predicted class, and a logit lens;
  - how each of these changed with fine-tuning (same architecture required for the per-head deltas).

    vitmech circuits                                       # the shipped pair on 16 synthetic galaxies
    vitmech circuits --before vit_base_patch16_224 --after none --images path/to/folder
"""

from __future__ import annotations

import argparse
from typing import Any

from vitmech.cli.args import add_images, add_pair, add_run
from vitmech.studies._common import SHARDS

LAUNCH = SHARDS  # under torchrun the images are dealt out to the ranks; rank 0 writes
QUICK = {"n_images": 2, "top_pairs": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair(parser)
    parser.add_argument("--model", dest="before", help=argparse.SUPPRESS)
    add_images(parser, n_images=16)  # images for DLA, logit lens and measured distances
    parser.add_argument(
        "--query", default="centre", help="query patch for the positional grids: 'centre', 'cls', k or row,col"
    )
    parser.add_argument("--positional-mode", choices=("ln1", "raw"), default="ln1", help="positional QK mode")
    parser.add_argument("--top-pairs", type=int, default=10, help="composing pairs listed per mode")
    parser.add_argument(
        "--no-baseline", action="store_true", help="do not subtract the random-matrix composition baseline"
    )
    parser.add_argument("--raw-weights", action="store_true", help="skip weight processing")
    add_run(parser)


IMAGE_BATCH = 16  # images per forward pass of the per-image measurements


def image_values(raw: Any, model: Any, pixels: Any) -> dict[str, Any]:
    """Per-image measurements of one batch: the mean attention distance per head ([b, L, H], px) and, for
    classifiers, the logit drift of weight processing, the DLA to the predicted class and the logit lens."""
    import torch

    from vitmech.analysis.attention import mean_attention_distance
    from vitmech.analysis.attribution import direct_logit_attribution, logit_lens
    from vitmech.tokens import token_layout

    layout, cfg = token_layout(model), model.cfg
    with torch.no_grad():
        _, cache = model.run_with_cache(pixels, names_filter=lambda n: n.endswith("hook_pattern"), return_type=None)
        values = {
            "distance": torch.stack(
                [
                    mean_attention_distance(cache["pattern", layer], cfg.patch_size, layout=layout)
                    for layer in range(cfg.n_layers)
                ],
                1,
            )
        }
        del cache
        if cfg.has_classifier:
            raw_logits = raw(pixels)
            values["drift"] = (model(pixels) - raw_logits).abs().amax(-1)
            values["logit_scale"] = raw_logits.abs().amax(-1)
            dla = direct_logit_attribution(model, pixels, batch_size=None)
            values.update(dla_attributions=dla.attributions, dla_classes=dla.classes, dla_logits=dla.logits)
            lens = logit_lens(model, pixels, batch_size=None)
            values.update(lens_logits=lens.logits, lens_classes=lens.final_classes)
    return values


def measure(entry: Any, images: list, args: argparse.Namespace) -> dict:
    """The image-dependent part of `analyse`, on every rank under a launch (the images are dealt out):
    the processed model, measured distances [L, H], logit drift, DLA and logit lens over all images."""
    import dataclasses

    from vitmech.analysis.attribution import direct_logit_attribution, logit_lens
    from vitmech.analysis.streaming import stream_per_image
    from vitmech.studies._common import image_stream
    from vitmech.weight_processing import process_weights

    raw = entry.model
    model = raw if args.raw_weights else process_weights(raw)
    values = stream_per_image(
        model,
        image_stream(images, IMAGE_BATCH),
        lambda m, pixels: image_values(raw, m, pixels),
        progress=not args.no_progress,
        desc=f"measurements ({entry.name})",
    )
    out = {"model": model, "measured": values["distance"].mean(0), "drift": 0.0, "scale": 1.0}
    if model.cfg.has_classifier:
        out["drift"] = float(values["drift"].max())
        out["scale"] = max(1.0, float(values["logit_scale"].max()))
        first = model.preprocess(images[:1])  # the component names and class names (one image)
        out["dla"] = dataclasses.replace(
            direct_logit_attribution(model, first),
            attributions=values["dla_attributions"],
            classes=values["dla_classes"],
            logits=values["dla_logits"],
        )
        out["lens"] = dataclasses.replace(
            logit_lens(model, first), logits=values["lens_logits"], final_classes=values["lens_classes"]
        )
    return out


def analyse(label: str, entry: Any, measured: dict, image_note: str, args: argparse.Namespace, report: Any) -> dict:
    """Rank 0's part: refuse a changed model, then the weight-based analyses; with `measured` (`measure`)."""
    from vitmech.analysis.circuits import composition_scores, ov_copying_scores, positional_qk

    name, weights, model = entry.name, entry.note, measured["model"]
    drift, scale = measured["drift"], measured["scale"]
    if drift > 1e-4 * scale:  # processing must not change the model: refuse to report circuits of another one
        raise SystemExit(
            f"error: weight processing changed {label}'s logits by {drift:.2e} (> 1e-4 x {scale:.3g}); "
            "rerun with --raw-weights and report this as a bug"
        )
    report.add_text(
        f"**{label}**: `{name}` ({weights}); {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, "
        f"{model.cfg.grid_size}x{model.cfg.grid_size} patches; {image_note}; weight processing: "
        f"{'none' if args.raw_weights else 'fold LN, centre writing weights, fold value biases'} "
        f"(max |logit change| {drift:.2e})."
    )
    pqk = positional_qk(model, mode=args.positional_mode)
    out = {
        **measured,
        "pqk": pqk,
        "locality": pqk.locality(),
        "composition": composition_scores(model, subtract_baseline=not args.no_baseline, seed=args.seed),
        "copying": ov_copying_scores(model),
    }
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.analysis.circuits import composition_changes
    from vitmech.cli.inputs import load_images
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import is_main, models, start
    from vitmech.viz.circuits import (
        plot_composition,
        plot_head_change,
        plot_head_dla,
        plot_locality,
        plot_logit_lens,
        plot_positional_grids,
    )

    if "," in args.query:
        args.query = tuple(int(v) for v in args.query.split(","))
    elif args.query.lstrip("-").isdigit():
        args.query = int(args.query)
    out = start(args)
    names = {"pretrained": args.before}
    if args.after and args.after.lower() != "none":
        names["finetuned"] = args.after
    loaded = models(args, list(names.values()))
    source = load_images(args)
    measurements = [measure(entry, source.images, args) for entry in loaded]  # every rank: images dealt out
    if not is_main():
        return 0
    report = study_report(out, "Circuits: positional QK, composition, direct logit attribution", loaded)
    results = {
        label: analyse(label, entry, values, source.note, args, report)
        for label, entry, values in zip(names, loaded, measurements)
    }

    report.add_text(
        "## Positional QK\n\nScores of each head from the position embeddings alone "
        f"(mode `{args.positional_mode}`, see docs/circuits.md); the grid shows the softmax over patch "
        f"keys for query {args.query!r}. Locality: mean attention distance of that softmax (pixels)."
    )
    for label, res in results.items():
        report.add_figure(
            f"positional_grids_{label}",
            plot_positional_grids(res["pqk"], args.query, title=f"{label}: positional attention, query {args.query}"),
        )
    localities = {label: res["locality"] for label, res in results.items()}
    measured = {label: res["measured"] for label, res in results.items()}
    report.add_figure(
        "locality",
        plot_locality(localities, measured),
        caption="positional locality by layer; vs measured mean attention distance",
    )
    rows = []
    for label, res in results.items():
        frame = res["locality"].to_frame()
        frame["measured_distance_px"] = res["measured"].flatten().tolist()
        frame.insert(0, "model", label)
        rows.append(frame)
        r = torch.corrcoef(torch.stack([res["locality"].mean_distance_px.flatten(), res["measured"].flatten()]))[0, 1]
        report.add_text(f"{label}: Pearson r between positional and measured distance over heads = {float(r):.3f}.")
    report.add_table("locality_by_head", [row for f in rows for row in f.to_dict(orient="records")], show=False)

    report.add_text(
        "## Composition\n\nElhage et al. 2021 scores ||OV_A M_B||_F / (||OV_A||_F ||M_B||_F) for earlier head A, "
        "later head B; `adjusted` subtracts the mean score of random matrices of the same shapes."
    )
    for label, res in results.items():
        comp = res["composition"]
        report.add_json(f"composition_baselines_{label}", comp.baselines)
        report.add_table(
            f"composition_top_{label}", comp.top_pairs(k=args.top_pairs), caption=f"{label}: strongest composing pairs"
        )
        report.add_table(f"composition_all_{label}", comp.to_frame(), show=False)
        report.add_figure(f"composition_K_{label}", plot_composition(comp, "K"), caption=f"{label}: K-composition")

    report.add_text(
        "## OV copying scores\n\nsum Re(lambda) / sum |lambda| over the eigenvalues of each head's OV circuit "
        "(residual basis): +1 writes back what it reads, -1 its negative."
    )
    for label, res in results.items():
        frame = res["copying"].to_frame()
        report.add_table(f"ov_copying_{label}", frame, show=False)
        top, bottom = frame.nlargest(3, "copying_score"), frame.nsmallest(3, "copying_score")
        report.add_text(
            f"{label}: most copying heads "
            + ", ".join(f"L{r.layer}H{r.head} {r.copying_score:+.2f}" for r in top.itertuples())
            + "; most negative "
            + ", ".join(f"L{r.layer}H{r.head} {r.copying_score:+.2f}" for r in bottom.itertuples())
            + "."
        )

    if any("dla" in res for res in results.values()):
        report.add_text(
            "## Direct logit attribution and logit lens\n\nEach image's predicted class; the components sum "
            "to the logit (max error below)."
        )
        dlas = {label: res["dla"] for label, res in results.items() if "dla" in res}
        report.add_figure(
            "dla_heads", plot_head_dla(dlas), caption="per-head DLA to the predicted class (mean over images)"
        )
        for label, dla in dlas.items():
            report.add_text(
                f"{label}: max |sum of components - logit| = {dla.max_abs_error:.2e}; "
                + ", ".join(f"{k} {float(v.mean()):+.3f}" for k, v in dla.by_kind().items())
            )
            summary = dla.summary_frame().sort_values("mean_abs_attribution", ascending=False)
            report.add_table(
                f"dla_top_{label}", summary.head(10), caption=f"{label}: largest components (mean over images)"
            )
            report.add_table(f"dla_all_{label}", dla.to_frame(), show=False)
        lenses = {label: res["lens"] for label, res in results.items() if "lens" in res}
        report.add_figure("logit_lens", plot_logit_lens(lenses), caption="logit lens on the CLS residual")
        for label, lens in lenses.items():
            report.add_table(f"logit_lens_{label}", lens.summary_frame(), caption=f"{label}: logit lens")

    if len(results) == 2:
        before, after = results["pretrained"], results["finetuned"]
        same = before["model"].cfg.replace(n_classes=0) == after["model"].cfg.replace(n_classes=0)
        report.add_text("## Changes with fine-tuning")
        if not same:
            report.add_text("The two models differ in architecture: per-head changes are not defined.")
        else:
            report.add_figure(
                "locality_change",
                plot_head_change(
                    before["locality"].mean_distance_px,
                    after["locality"].mean_distance_px,
                    "positional distance (px)",
                    ("pretrained", "fine-tuned"),
                ),
            )
            report.add_figure(
                "copying_change",
                plot_head_change(
                    before["copying"].scores, after["copying"].scores, "OV copying score", ("pretrained", "fine-tuned")
                ),
            )
            report.add_table(
                "composition_changes",
                composition_changes(before["composition"], after["composition"]).head(args.top_pairs),
                caption="pairs whose adjusted composition changed most",
            )
            if "dla" in before and "dla" in after:
                report.add_text(
                    "DLA: each model's attribution to its own predicted class (the class spaces may differ)."
                )
                report.add_figure(
                    "dla_change",
                    plot_head_change(
                        before["dla"].head_attributions().mean(0),
                        after["dla"].head_attributions().mean(0),
                        "mean head DLA",
                        ("pretrained", "fine-tuned"),
                    ),
                )
    report.add_json(
        "settings",
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k not in ("parser",)},
    )
    path = report.write()
    print(f"report written to {path}")
    return 0
