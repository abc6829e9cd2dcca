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

from vitmech.errors import TrainingDataError
from vitmech.train.data import ArrayDataset

logger = logging.getLogger(__name__)

Render = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""(start, n) -> (uint8 images [n, S, S, 3], targets [n] or [n, K])."""


def render_in_chunks(
    render: Render, n: int, chunk: int = 256, desc: str = "render", progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    images, targets = [], []
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=not progress):
        im, tg = render(start, min(chunk, n - start))
        images.append(im)
        targets.append(tg)
    return np.concatenate(images), np.concatenate(targets)


def cached(
    cache_dir: str | Path | None, key: dict[str, Any], make: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
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


def procedural_dataset(
    n: int, seed: int, size: int = 112, *, start: int = 0, cache_dir: str | Path | None = None, progress: bool = True
) -> ArrayDataset:
    """`n` procedural scenes (images start.. of stream `seed`) at `size` px, 32 shape/fill classes."""
    from vitmech.data.procedural import PROCEDURAL_CLASSES, generate_procedural

    def make() -> tuple[np.ndarray, np.ndarray]:
        def render(offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            batch = generate_procedural(count, seed, start=start + offset, size=size)
            return batch.images, batch.labels

        return render_in_chunks(render, n, desc=f"procedural {size}px", progress=progress)

    images, labels = cached(
        cache_dir, {"kind": "procedural", "n": n, "seed": seed, "size": size, "start": start, "v": 2}, make
    )
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), list(PROCEDURAL_CLASSES), "classification")


def galaxy_dataset(
    n: int, seed: int, size: int = 224, *, start: int = 0, cache_dir: str | Path | None = None, progress: bool = True
) -> ArrayDataset:
    """`n` synthetic galaxies (vitmech.data.galaxies, balanced over the six gz2 classes) at `size` px."""
    from vitmech.data.galaxies import GALAXY_CLASSES, generate_galaxies

    def make() -> tuple[np.ndarray, np.ndarray]:
        def render(offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            batch = generate_galaxies(count, seed, start=start + offset, size=size)
            return batch.images, batch.labels

        return render_in_chunks(render, n, chunk=128, desc="galaxies", progress=progress)

    images, labels = cached(
        cache_dir, {"kind": "galaxies", "n": n, "seed": seed, "size": size, "start": start, "v": 1}, make
    )
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), list(GALAXY_CLASSES), "classification")


def chirp_dataset(
    n: int, seed: int, size: int = 224, *, start: int = 0, cache_dir: str | Path | None = None, progress: bool = True
) -> ArrayDataset:
    """`n` chirp spectrogram figures (vitmech.data.chirps, all distractors on) with their RAW targets
    [n, 3] (start time s, start frequency Hz, end frequency Hz); z-score them with `vitmech.data.TargetScaler`."""
    from vitmech.data.chirps import TARGETS, generate_chirps

    def make() -> tuple[np.ndarray, np.ndarray]:
        def render(offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            samples = generate_chirps(count, seed, start=start + offset, size=size)
            return np.stack([s.image for s in samples]), np.asarray([s.targets for s in samples], dtype=np.float32)

        return render_in_chunks(render, n, chunk=128, desc="chirps", progress=progress)

    images, targets = cached(
        cache_dir, {"kind": "chirps", "n": n, "seed": seed, "size": size, "start": start, "v": 1}, make
    )
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(targets), list(TARGETS), "regression")


def gz2_datasets(
    source: str,
    preprocessing: Any,
    *,
    n_train: int | None,
    n_test: int | None,
    at_most: bool = False,
    val_fraction: float = 0.1,
    seed: int = 42,
    progress: bool = True,
) -> tuple[dict[str, ArrayDataset], dict[str, Any]]:
    """Galaxy Zoo 2 (hub id or local copy with its schema) as train/val/test ArrayDatasets, each image
    resized (and cropped) once to the model's input size exactly as `model.preprocess` would; also the
    loader's report (requested / survived rows). With `at_most`, a source with fewer rows than
    requested gives all it has (logged) instead of raising InsufficientDataError."""
    from PIL import Image

    from vitmech.data import InsufficientDataError
    from vitmech.data.gz2 import load_gz2
    from vitmech.preprocessing import _resize_and_crop

    try:
        splits = load_gz2(
            source, n_train=n_train, n_test=n_test, val_fraction=val_fraction, seed=seed, progress=progress
        )
    except InsufficientDataError as exc:
        if not at_most:
            raise
        logger.warning("%s: taking every row there is", exc)
        splits = load_gz2(source, n_train=None, n_test=None, val_fraction=val_fraction, seed=seed, progress=progress)
    out: dict[str, ArrayDataset] = {}
    for name, raw in splits.raw.items():
        images = []
        for item in tqdm(raw, desc=f"gz2 {name}", disable=not progress):
            image = item["image"]
            if not isinstance(image, Image.Image):
                image = Image.open(image["path"]) if isinstance(image, dict) and image.get("path") else image
            images.append(np.asarray(_resize_and_crop(image.convert("RGB"), preprocessing)))
        labels = torch.from_numpy(np.asarray(splits.labels[name], dtype=np.int64))
        out[name] = ArrayDataset(torch.from_numpy(np.stack(images)), labels, list(splits.classes), "classification")
    return out, splits.report.to_dict()


__all__ = [
    "cached",
    "chirp_dataset",
    "galaxy_dataset",
    "gz2_datasets",
    "procedural_dataset",
    "render_in_chunks",
]


def image_source_dataset(source: Any, preprocessing: Any) -> ArrayDataset:
    """Your own images (a `vitmech.data.sources.ImageSource` with labels or targets) as an ArrayDataset:
    each image resized and centre-cropped by the model's own transform to image_size x image_size."""
    import dataclasses

    from vitmech.preprocessing import resize_and_crop

    spec = dataclasses.replace(preprocessing, crop_pct=1.0)
    images = np.stack([np.asarray(resize_and_crop(im.convert("RGB"), spec), dtype=np.uint8) for im in source.images])
    if source.labels is not None:
        names = list(source.class_names or [str(c) for c in range(int(source.labels.max()) + 1)])
        return ArrayDataset(torch.from_numpy(images), torch.as_tensor(source.labels), names, "classification")
    if source.targets is not None:
        targets = torch.as_tensor(source.targets, dtype=torch.float32)
        k = 1 if targets.ndim == 1 else targets.shape[1]
        return ArrayDataset(torch.from_numpy(images), targets, [f"target_{i}" for i in range(k)], "regression")
    raise TrainingDataError("fine-tuning needs labels (class sub-folders, --labels) or --targets for the images")
