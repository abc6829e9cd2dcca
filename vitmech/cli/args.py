"""The one flag vocabulary every subcommand shares (no heavy imports here).

--model (repeatable) or --before/--after; --images (folder, file list, CSV/JSON, data set name);
--labels/--targets; --out, --force; --device, --seed, --quick, --no-progress, --random-init;
--resume/--restart for resumable studies.
"""

from __future__ import annotations

import argparse

PRETRAINED = "vitmech/mini-pretrained"
FINETUNED = "vitmech/mini-galaxy"
HELD_OUT_GALAXY_SEED = 12345
"""Galaxy stream the analyses use by default; fine-tuning (`vitmech finetune`) draws from seed 0."""

SYNTHETIC_GALAXIES = "synthetic-galaxies"
IMAGES_HELP = (
    "images: a folder (class sub-folders give labels), an image file, a .txt list of paths, a .csv/.json "
    "of paths with a label or target column, 'hf:NAME[:SPLIT]' for a HuggingFace data set, or "
    f"'{SYNTHETIC_GALAXIES}' (generated, offline)"
)


def add_models(parser: argparse.ArgumentParser, default: list[str], help_text: str = "") -> None:
    """--model NAME, repeatable (default: `default`)."""
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help=(
            help_text
            or "model: shipped name (vitmech/...), local folder or file, timm name or HF hub id; repeat for several"
        )
        + f" (default: {' '.join(default)})",
    )
    parser.add_argument("--models", nargs="+", dest="model_list", help=argparse.SUPPRESS)  # older scripts' spelling
    parser.set_defaults(default_models=list(default))


def models_from(args: argparse.Namespace) -> list[str]:
    names = list(args.model or []) + list(getattr(args, "model_list", None) or [])
    return names or list(args.default_models)


def add_pair(parser: argparse.ArgumentParser, before: str = PRETRAINED, after: str = FINETUNED) -> None:
    """--before / --after: a model and its fine-tuned twin."""
    parser.add_argument("--before", default=before, metavar="NAME", help="the model before fine-tuning")
    parser.add_argument(
        "--after", default=after, metavar="NAME", help="the model after fine-tuning ('none': one model)"
    )
    parser.add_argument("--pretrained", dest="before", help=argparse.SUPPRESS)
    parser.add_argument("--finetuned", dest="after", help=argparse.SUPPRESS)


def add_images(parser: argparse.ArgumentParser, n_images: int | None, default: str = SYNTHETIC_GALAXIES) -> None:
    parser.add_argument("--images", default=default, metavar="SOURCE", help=IMAGES_HELP)
    parser.add_argument(
        "--n-images", type=int, default=n_images, metavar="N", help="images to use (generated count, or a cap)"
    )
    parser.add_argument("--limit", dest="n_images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--synthetic-galaxies", dest="n_images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--split", default="train", help="split of an hf: data set")
    parser.add_argument(
        "--image-column", default="image", help="image column (hf: data sets) or path column (CSV/JSON)"
    )
    parser.add_argument(
        "--image-seed",
        type=int,
        default=HELD_OUT_GALAXY_SEED,
        help="seed of generated images (not the stream, seed 0, the shipped galaxy model was trained on)",
    )


def add_labels(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--labels",
        metavar="FILE|COLUMN",
        help="class labels: a .npy/.csv/.txt file (one per image, in image order) or a column of --images",
    )
    group.add_argument(
        "--targets", metavar="FILE|COLUMN", help="regression targets: a .npy/.csv file or column(s) of --images"
    )


def add_run(parser: argparse.ArgumentParser, *, seed: int = 0, resumable: bool = False, device: bool = True) -> None:
    """--out, --force, --device, --seed, --quick, --no-progress, --random-init (and --resume/--restart)."""
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: runs/<command>-<time>/; must be new or empty)"
    )
    parser.add_argument("--force", action="store_true", help="write into an existing non-empty --out folder")
    if device:
        parser.add_argument(
            "--device", default=None, help="torch device: cpu, cuda, cuda:1, mps (default: cuda when present, else cpu)"
        )
    parser.add_argument("--seed", type=int, default=seed, help="random seed")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole pipeline")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="allow random weights when a model's pretrained weights are not available (stamped on every output)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    if resumable:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
        mode.add_argument("--restart", action="store_true", help="discard --out's checkpoints and start over")
