"""Activation patching, path patching and an EAP circuit on counterfactual galaxy pairs (with / without a
feature such as a bar).

Which layers, heads and patches restore the positive-vs-negative logit difference when patched from the
image with the feature into the one without; the paths from the strongest heads to the logits and to each
other; and the smallest EAP-scored circuit reaching a chosen faithfulness (measured by running it).
docs/patching.md has the method.

    vitmech patch                          # vitmech/mini-galaxy, 16 barred / unbarred pairs
    vitmech patch --quick                  # 2 pairs, last layers only (a smoke test)
    vitmech patch --feature arms --negative-class featured_without_bar_or_spiral
"""

from __future__ import annotations

import argparse
from typing import Any

from vitmech.cli.args import add_models, add_run

QUICK: dict[str, object] = {}  # PatchingStudyConfig.quick() holds the small sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, ["vitmech/mini-galaxy"])
    parser.add_argument("--feature", default="bar", choices=("bar", "arms", "bulge"), help="the galaxy feature toggled")
    parser.add_argument("--positive-class", default="barred_spiral", help="class of the images with the feature")
    parser.add_argument("--negative-class", default="unbarred_spiral", help="class of the images without it")
    parser.add_argument("--pairs", type=int, default=None, help="counterfactual pairs (16; 2 with --quick)")
    parser.add_argument("--method", choices=("eap", "eap-ig"), default=None, help="edge scores (eap-ig)")
    parser.add_argument("--faithfulness", type=float, default=0.8, help="target faithfulness of the circuit")
    parser.add_argument(
        "--search-steps",
        type=int,
        default=None,
        help="halvings of the circuit-size search (all: exact smallest; 8 with --quick: within 1/256 of the edges)",
    )
    add_run(parser)


def run(args: argparse.Namespace) -> int:
    from vitmech.analysis.patching_study import PatchingStudyConfig, run_patching_study, summary_line
    from vitmech.cli.args import models_from
    from vitmech.studies._common import models, start

    names = models_from(args)
    if len(names) != 1:
        args.parser.error("patch takes one --model")
    out = start(args)
    loaded = models(args, names)
    changes: dict[str, Any] = dict(
        model=names[0],
        feature=args.feature,
        positive_class=args.positive_class,
        negative_class=args.negative_class,
        seed=args.seed,
        target_faithfulness=args.faithfulness,
    )
    if args.pairs is not None:
        changes["n_pairs"] = args.pairs
    if args.search_steps is not None:
        changes["search_steps"] = args.search_steps
    if args.method is not None:
        changes["eap_method"] = args.method
    config = PatchingStudyConfig.quick(**changes) if args.quick else PatchingStudyConfig(**changes)
    try:
        summary = run_patching_study(
            config, out, model=loaded[0].model, random_weights=[m.name for m in loaded if m.random]
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{summary_line(summary)}; report: {out / 'report.md'}")
    return 0
