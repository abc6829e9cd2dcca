"""Does fine-tuning move attention onto the annotated features? Attention-annotation alignment across tiers.

Five phases (docs/alignment.md#the-study): baseline IoU of every model's attention with the feature masks of
held-out synthetic galaxies (bar, arms, bulge, their union); fine-tuning of each model by every tier (linear
probe, LoRA, full, attention-supervised), cached under <out>/runs (a finished run is reused, an interrupted
one resumes); IoU after; change in IoU with paired t-tests, Cohen's d_z, bootstrap CIs and Holm's correction;
per feature / layer / head breakdowns and each fine-tuned model's accuracy. Writes a report folder.

    python experiments/11_attention_alignment.py                       # the shipped models, about 10 minutes on 2 cores
    python experiments/11_attention_alignment.py --quick               # one model, tiny budget (under 2 minutes)
    python experiments/11_attention_alignment.py --models path/to/saved_model --steps 200 --weight 0.5
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from vitmech.studies.alignment import (
    SHIPPED_MODELS,
    STUDY_TIERS,
    AlignmentStudyConfig,
    run_alignment_study,
    write_alignment_report,
)
from vitmech.train.attention_supervision import AttentionSupervision

QUICK = {"models": ("vitmech/mini-pretrained",), "n_train": 16, "n_eval": 8, "steps": 2, "batch_size": 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = AlignmentStudyConfig()
    parser.add_argument("--models", nargs="+", default=list(SHIPPED_MODELS), help="shipped names or saved folders")
    parser.add_argument("--tiers", nargs="+", default=list(STUDY_TIERS), choices=STUDY_TIERS)
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-eval", type=int, default=defaults.n_eval)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps of every tier")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--head-lr", type=float, default=defaults.head_lr)
    parser.add_argument("--backbone-lr", type=float, default=defaults.backbone_lr)
    parser.add_argument("--weight", type=float, default=1.0, help="lambda of the attention-supervised loss")
    parser.add_argument("--map-source", default="cls", choices=["cls", "rollout"], help="supervised map")
    parser.add_argument("--layers", type=int, nargs="+", default=[-1], help="supervised layers (source cls)")
    parser.add_argument("--heads", type=int, nargs="+", default=None, help="supervised heads (default: all)")
    parser.add_argument("--q", type=float, default=None, help="IoU's top fraction (default: the region's area)")
    parser.add_argument("--resamples", type=int, default=defaults.n_resamples)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one model, a tiny budget: a smoke run")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", default="reports/11_attention_alignment", help="report folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = {
        "models": tuple(args.models),
        "tiers": tuple(args.tiers),
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "head_lr": args.head_lr,
        "backbone_lr": args.backbone_lr,
        "q": args.q,
        "n_resamples": args.resamples,
        "seed": args.seed,
    }
    if args.quick:
        settings.update(QUICK)
    try:
        supervision = AttentionSupervision(
            weight=args.weight,
            source=args.map_source,
            layers=tuple(args.layers),
            heads=tuple(args.heads) if args.heads else None,
        )
        config = AlignmentStudyConfig(supervision=supervision, **settings)  # type: ignore[arg-type]
        study = run_alignment_study(config, f"{args.out}/runs", progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    command = "python experiments/11_attention_alignment.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = write_alignment_report(study, args.out, command=command.strip())
    print(f"report: {path}")
    print(study.comparisons[["model", "tier", "map", "iou_before", "iou_after", "delta_iou", "p_holm"]].to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
