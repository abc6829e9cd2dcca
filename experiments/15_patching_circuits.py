"""Activation patching, path patching and an EAP circuit on counterfactual galaxy pairs (with / without a bar).

On the shipped galaxy model: which layers, heads and patches restore the barred-vs-unbarred logit difference
when patched from the barred image into the unbarred one, the paths from the strongest heads to the logits
and to each other, and the smallest EAP-scored circuit reaching a chosen faithfulness (measured by running
it). Writes a report folder (report.md, CSV tables, PNG figures, summary.json).

    python experiments/15_patching_circuits.py                   # vitmech/mini-galaxy, 16 pairs
    python experiments/15_patching_circuits.py --quick           # 2 pairs, last layers only (a smoke test)
    python experiments/15_patching_circuits.py --feature arms --negative-class featured_without_bar_or_spiral
"""

from __future__ import annotations

import argparse
import logging
import sys

from vitmech.analysis.patching_study import PatchingStudyConfig, run_patching_study, summary_line

logger = logging.getLogger("15_patching_circuits")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vitmech/mini-galaxy", help="shipped name, local path, timm name or hub id")
    parser.add_argument("--feature", default="bar", choices=("bar", "arms", "bulge"), help="the galaxy feature toggled")
    parser.add_argument("--positive-class", default="barred_spiral")
    parser.add_argument("--negative-class", default="unbarred_spiral")
    parser.add_argument("--pairs", type=int, default=None, help="counterfactual pairs (default 16; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("eap", "eap-ig"), default=None, help="edge scores (default eap-ig)")
    parser.add_argument("--faithfulness", type=float, default=0.8, help="target faithfulness of the circuit")
    parser.add_argument("--quick", action="store_true", help="a small version (offline smoke test)")
    parser.add_argument("--out", default="reports/patching_circuits", help="report folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    changes = dict(
        model=args.model,
        feature=args.feature,
        positive_class=args.positive_class,
        negative_class=args.negative_class,
        seed=args.seed,
        target_faithfulness=args.faithfulness,
    )
    if args.pairs is not None:
        changes["n_pairs"] = args.pairs
    if args.method is not None:
        changes["eap_method"] = args.method
    config = PatchingStudyConfig.quick(**changes) if args.quick else PatchingStudyConfig(**changes)
    summary = run_patching_study(config, args.out)
    logger.info("%s; report in %s", summary_line(summary), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
