"""Generators -> in-memory ArrayDatasets (procedural scenes, synthetic galaxies, chirp spectrograms),
with an optional on-disk cache so a resumed run does not render its data again."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vitmech.train.data import ArrayDataset

logger = logging.getLogger(__name__)

Render = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""(start, n) -> (uint8 images [n, S, S, 3], targets [n] or [n, K])."""


def render_in_chunks(render: Render, n: int, chunk: int = 256, desc: str = "render", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    images, targets = [], []
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=not progress):
        im, tg = render(start, min(chunk, n - start))
        images.append(im)
        targets.append(tg)
    return np.concatenate(images), np.concatenate(targets)


def cached(cache_dir: str | Path | None, key: dict[str, Any], make: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """`make()` once per key: stored as .npy under cache_dir (None: no cache)."""
    if cache_dir is None:
        return make()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(cache_dir) / f"{key.get('kind', 'data')}_{digest}"
    img_file, tgt_file = base.with_suffix(".images.npy"), base.with_suffix(".targets.npy")
    if img_file.is_file() and tgt_file.is_file():
        logger.info("data from cache %s", img_file)
        return np.load(img_file), np.load(tgt_file)
    images, targets = make()
    img_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(img_file, images)
    np.save(tgt_file, targets)
    base.with_suffix(".json").write_text(json.dumps(key, indent=2) + "\n")
    return images, targets


def procedural_dataset(n: int, seed: int, size: int = 112, *, start: int = 0, cache_dir: str | Path | None = None, progress: bool = True) -> ArrayDataset:
    """`n` procedural scenes (images start.. of stream `seed`) at `size` px, 32 shape/fill classes."""
    from vitmech.data.procedural import PROCEDURAL_CLASSES, generate_procedural

    def make() -> tuple[np.ndarray, np.ndarray]:
        def render(offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            batch = generate_procedural(count, seed, start=start + offset, size=size)
            return batch.images, batch.labels

        return render_in_chunks(render, n, desc=f"procedural {size}px", progress=progress)

    images, labels = cached(cache_dir, {"kind": "procedural", "n": n, "seed": seed, "size": size, "start": start, "v": 1}, make)
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), list(PROCEDURAL_CLASSES), "classification")


def galaxy_dataset(n: int, seed: int, size: int = 224, *, start: int = 0, cache_dir: str | Path | None = None, progress: bool = True) -> ArrayDataset:
    """`n` synthetic galaxies (vitmech.data.galaxies, balanced over the six gz2 classes) at `size` px."""
    from vitmech.data.galaxies import GALAXY_CLASSES, generate_galaxies

    def make() -> tuple[np.ndarray, np.ndarray]:
        def render(offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            batch = generate_galaxies(count, seed, start=start + offset, size=size)
            return batch.images, batch.labels

        return render_in_chunks(render, n, chunk=128, desc="galaxies", progress=progress)

    images, labels = cached(cache_dir, {"kind": "galaxies", "n": n, "seed": seed, "size": size, "start": start, "v": 1}, make)
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), list(GALAXY_CLASSES), "classification")


__all__ = ["cached", "galaxy_dataset", "procedural_dataset", "render_in_chunks"]
