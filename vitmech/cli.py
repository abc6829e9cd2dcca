"""Plumbing shared by the experiment scripts: model names with an offline fallback, image folders, outputs.

Scripts stay thin: they parse arguments and call these and the analysis functions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image

from vitmech.errors import CheckpointMismatchError, UnknownModelError
from vitmech.loading.registry import hub_reachable, zoo_models
from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_model(name: str) -> tuple[HookedViT, str]:
    """Load by name; returns the model and a note on its weights.

    Shipped and local models load as they are; hub models when a hub is reachable. Offline, a timm
    name falls back to its architecture with seeded random weights, and the note says so loudly.
    """
    if name in zoo_models() or Path(name).expanduser().exists():
        return HookedViT.from_pretrained(name), "shipped/local weights"
    if hub_reachable():
        return HookedViT.from_pretrained(name), "pretrained weights"
    import timm

    if timm.is_model(name):
        logger.warning("no model hub reachable: %s gets RANDOM weights", name)
        return HookedViT.from_timm(
            name, pretrained=False
        ), "RANDOM INIT (no hub reachable: its attention means nothing)"
    return HookedViT.from_pretrained(name), "pretrained weights"  # raises a clear error offline


def load_models(names: list[str], comparable: bool = False) -> list[tuple[HookedViT, str]]:
    """`load_model` for each name; a shipped name missing from this checkout, or (with comparable=True)
    models that cannot be compared head by head, exit with a clear message."""
    missing = [n for n in names if n.startswith("vitmech/") and n not in zoo_models()]
    if missing:
        raise SystemExit(
            f"error: the shipped model(s) {', '.join(missing)} are not in this checkout. Pass other models: "
            "a timm name, a HF hub id, or a folder written by model.save_pretrained()."
        )
    loaded = []
    for name in names:
        try:
            loaded.append(load_model(name))
        except (UnknownModelError, CheckpointMismatchError, FileNotFoundError, OSError) as err:
            raise SystemExit(f"error: cannot load model {name!r}: {err}") from None
    if comparable and len(loaded) > 1:
        from vitmech.analysis.compare import check_comparable
        from vitmech.errors import ModelMismatchError

        try:
            for model, _ in loaded[1:]:
                check_comparable(loaded[0][0], model)
        except ModelMismatchError as error:
            raise SystemExit(f"error: {error}") from None
    return loaded


HELD_OUT_GALAXY_SEED = 12345
"""Galaxy stream the scripts analyse by default; fine-tuning (02_fine_tune_galaxy.py) draws from seed 0."""


def add_image_arguments(parser: argparse.ArgumentParser, default_galaxies: int) -> None:
    """--images FOLDER, or --synthetic-galaxies N (default) with --seed; --limit caps a folder."""
    parser.add_argument("--images", help="folder of images (default: synthetic galaxies)")
    parser.add_argument(
        "--synthetic-galaxies",
        type=int,
        default=default_galaxies,
        metavar="N",
        help=f"number of synthetic galaxies when no --images (default {default_galaxies})",
    )
    parser.add_argument("--limit", type=int, help="use at most this many images from --images")
    parser.add_argument(
        "--seed",
        type=int,
        default=HELD_OUT_GALAXY_SEED,
        help=f"seed of the synthetic galaxies (default {HELD_OUT_GALAXY_SEED}: not the stream, seed 0, "
        "that the shipped galaxy model was trained on)",
    )


def load_images(args: argparse.Namespace) -> tuple[list[Any], str]:
    """Raw PIL images (each model preprocesses them its own way) and a one-line description."""
    if args.images:
        images, _ = read_image_folder(args.images, args.limit)
        return images, f"{len(images)} images from {args.images}"
    if args.synthetic_galaxies < 2:
        raise SystemExit("error: --synthetic-galaxies must be at least 2")
    from vitmech.data.galaxies import generate_galaxies

    batch = generate_galaxies(args.synthetic_galaxies, seed=args.seed, size=224)
    return list(batch.images), f"{len(batch)} synthetic galaxies (seed {args.seed}, classes balanced)"


def image_files(path: str | Path) -> list[Path]:
    """Image files under a folder (sorted), or the file itself."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no image file or folder at {path}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    return files


def read_image_folder(path: str | Path, limit: int | None = None) -> tuple[list[Image.Image], list[int]]:
    """RGB images from a folder (sorted file order) and the index of each among the files; unreadable
    files are skipped with a count in the log, so the indices say which rows of aligned targets to keep."""
    files = image_files(path)[:limit]
    images, kept = [], []
    for index, file in enumerate(files):
        try:
            with Image.open(file) as im:
                images.append(im.convert("RGB"))
            kept.append(index)
        except OSError:
            pass
    if len(kept) < len(files):
        logger.warning("skipped %d unreadable image files of %d under %s", len(files) - len(kept), len(files), path)
    if not images:
        raise ValueError(f"none of the {len(files)} image files under {path} could be read")
    return images, kept


def load_image_folder(
    model: HookedViT, path: str | Path, limit: int | None = None
) -> Float[torch.Tensor, "batch c h w"]:
    """Images from a folder, preprocessed for `model`; unreadable files are skipped with a count in the log."""
    return model.preprocess(read_image_folder(path, limit)[0])


def add_output_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default, help=f"report folder (default: {default})")
