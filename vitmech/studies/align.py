"""Does fine-tuning move attention onto the annotated features? (`vitmech align`)

Fine-tunes each model by every tier on synthetic galaxies and measures the IoU of its attention with the
annotated regions (bar, arms, bulge) before and after, with paired tests and Holm's correction; the study
itself is `vitmech.studies.alignment.run_alignment_study` (docs/alignment.md#the-study).

    vitmech align --quick                                     # one shipped model, a tiny budget
    vitmech align --model path/to/saved_model --steps 200 --weight 0.5

This module imports no torch, so `vitmech align --help` is fast; its defaults are those of
`AlignmentStudyConfig` (a test keeps them equal).
"""

from __future__ import annotations

from typing import Any

SHIPPED_MODELS = ("vitmech/mini-pretrained", "vitmech/mini-galaxy", "vitmech/mini-chirp", "vitmech/mini-chirp-full")
STUDY_TIERS = ("linear_probe", "lora", "full", "attention_supervised")
STUDY_DATA = ("galaxies", "chirps")
DEFAULTS: dict[str, Any] = dict(
    n_train=320, n_eval=64, steps=40, batch_size=16, head_lr=1e-3, backbone_lr=3e-4, n_resamples=10_000
)
"""AlignmentStudyConfig's defaults, as the flags show them (tests/integration/test_cli.py checks they agree)."""

QUICK = {"n_train": 16, "n_eval": 8, "steps": 2, "batch_size": 8}
"""`--quick`: one model (QUICK_MODELS, unless --model names others), a tiny budget: a smoke run of every phase."""
QUICK_MODELS: dict[str, str] = {"galaxies": "vitmech/mini-pretrained", "chirps": "vitmech/mini-chirp"}


def add_arguments(parser: Any) -> None:
    """Flags of `vitmech align` / experiments/11_attention_alignment.py."""
    from vitmech.cli.args import add_models, add_run

    add_models(parser, list(SHIPPED_MODELS), "model to fine-tune and measure; repeat for several")
    parser.add_argument("--tiers", nargs="+", default=list(STUDY_TIERS), choices=STUDY_TIERS)
    parser.add_argument(
        "--data",
        default="galaxies",
        choices=STUDY_DATA,
        help="annotated images: synthetic galaxies (bar / arms / bulge masks; tested region: their union) or "
        "chirp spectrogram figures (chirp / text / axis / colorbar boxes; tested region: the chirp track)",
    )
    parser.add_argument("--n-train", type=int, default=DEFAULTS["n_train"], help="training images (seed 0 stream)")
    parser.add_argument("--n-eval", type=int, default=DEFAULTS["n_eval"], help="held-out images (seed 12345 stream)")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps of every tier")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--head-lr", type=float, default=DEFAULTS["head_lr"])
    parser.add_argument("--backbone-lr", type=float, default=DEFAULTS["backbone_lr"])
    parser.add_argument("--weight", type=float, default=1.0, help="lambda of the attention-supervised loss")
    parser.add_argument("--map-source", default="cls", choices=["cls", "rollout"], help="supervised map")
    parser.add_argument("--layers", type=int, nargs="+", default=[-1], help="supervised layers (source cls)")
    parser.add_argument("--heads", type=int, nargs="+", default=None, help="supervised heads (default: all)")
    parser.add_argument("--q", type=float, default=None, help="IoU's top fraction (default: the region's area)")
    parser.add_argument("--resamples", type=int, default=DEFAULTS["n_resamples"], help="bootstrap resamples")
    add_run(parser, resumable=True)


def run(args: Any) -> int:
    """Run the study from parsed flags and write the report folder; with --resume the finished fine-tuning
    runs in <out>/runs are reused (--restart deletes them)."""
    from vitmech.cli.args import models_from
    from vitmech.studies._common import error, models, start
    from vitmech.studies.alignment import AlignmentStudyConfig, run_alignment_study, write_alignment_report
    from vitmech.train.attention_supervision import AttentionSupervision
    from vitmech.train.cards import command_line

    names = models_from(args)
    if args.quick and not (args.model or args.model_list):  # --quick: one shipped model unless --model is given
        names = [QUICK_MODELS[args.data]]
    try:
        supervision = AttentionSupervision(
            weight=args.weight,
            source=args.map_source,
            layers=tuple(args.layers),
            heads=tuple(args.heads) if args.heads else None,
        )
        config = AlignmentStudyConfig(
            models=tuple(names),
            tiers=tuple(args.tiers),
            data=args.data,
            n_train=args.n_train,
            n_eval=args.n_eval,
            steps=args.steps,
            batch_size=args.batch_size,
            head_lr=args.head_lr,
            backbone_lr=args.backbone_lr,
            supervision=supervision,
            q=args.q,
            n_resamples=args.resamples,
            seed=args.seed,
        )
    except ValueError as err:
        return int(error(args, str(err)) or 2)
    out = start(args, resumable_parts=("runs",))
    loaded = models(args, names)
    study = run_alignment_study(
        config, out / "runs", models=[(m.name, m.model) for m in loaded], progress=not args.no_progress
    )
    path = write_alignment_report(
        study,
        out,
        command=command_line(),
        random_models=[m.name for m in loaded if m.random],
    )
    print(f"report: {path}")
    print(study.comparisons[["model", "tier", "map", "iou_before", "iou_after", "delta_iou", "p_holm"]].to_string())
    return 0
