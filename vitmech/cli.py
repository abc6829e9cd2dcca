"""Plumbing shared by the experiment scripts: model names with an offline fallback, image folders, outputs.

Scripts stay thin: they parse arguments and call these and the analysis functions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from jaxtyping import Float
from PIL import Image

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
        return HookedViT.from_timm(name, pretrained=False), "RANDOM INIT (no hub reachable: its attention means nothing)"
    return HookedViT.from_pretrained(name), "pretrained weights"  # raises a clear error offline


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


def load_image_folder(model: HookedViT, path: str | Path, limit: int | None = None) -> Float[torch.Tensor, "batch c h w"]:
    """Images from a folder, preprocessed for `model`; unreadable files are skipped with a count in the log."""
    files = image_files(path)[:limit]
    images, skipped = [], 0
    for file in files:
        try:
            with Image.open(file) as im:
                images.append(im.convert("RGB"))
        except OSError:
            skipped += 1
    if skipped:
        logger.warning("skipped %d unreadable image files of %d under %s", skipped, len(files), path)
    if not images:
        raise ValueError(f"none of the {len(files)} image files under {path} could be read")
    return model.preprocess(images)


def add_output_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default, help=f"report folder (default: {default})")
