"""`--images` / `--labels` / `--targets` for the studies: generated galaxies or the user's own images."""

from __future__ import annotations

import argparse

from vitmech.cli.args import SYNTHETIC_GALAXIES
from vitmech.data.sources import ImageSource, load_image_source


def load_images(args: argparse.Namespace, minimum: int = 1) -> ImageSource:
    """Raw RGB images (each model preprocesses them its own way) with labels/targets and a note."""
    n = args.n_images
    if n is not None and n < minimum:
        raise SystemExit(f"error: --n-images must be at least {minimum}")
    if args.images == SYNTHETIC_GALAXIES:
        import numpy as np
        from PIL import Image

        from vitmech.data.galaxies import GALAXY_CLASSES, generate_galaxies

        batch = generate_galaxies(n, seed=args.image_seed, size=224)
        return ImageSource(
            [Image.fromarray(image) for image in batch.images],
            labels=np.asarray(batch.labels, dtype=np.int64),
            class_names=list(GALAXY_CLASSES),
            note=f"{len(batch)} synthetic galaxies (seed {args.image_seed}, classes balanced)",
        )
    try:
        source = load_image_source(
            args.images,
            limit=n,
            labels=getattr(args, "labels", None),
            targets=getattr(args, "targets", None),
            image_column=getattr(args, "image_column", None),
            split=getattr(args, "split", "train"),
            skip_unreadable=True,  # each skipped file is named in a warning
        )
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: --images {args.images}: {err}") from None
    if len(source) < minimum:
        raise SystemExit(f"error: --images {args.images}: {len(source)} images, need at least {minimum}")
    return source
