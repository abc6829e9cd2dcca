"""Preprocessing fallback and the lazy batch transform applied through ``Dataset.with_transform``.

Preprocessing is the model's job (``model.preprocess(images) -> Float[Tensor, "B C H W"]``); the
``default_preprocess`` here is only a fallback for tests and quick looks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vitmech.data._io import decode_image
from vitmech.errors import DataError
from vitmech.preprocessing import HALF, IMAGENET_MEAN, IMAGENET_STD, ImageLike, Preprocessing, preprocess

logger = logging.getLogger(__name__)

Preprocess = Callable[[Sequence[ImageLike]], Any]
"""A model's preprocessing: list of PIL images (or uint8 arrays) -> ``Float[Tensor, "B C H W"]``
(a numpy array, or a mapping with ``"pixel_values"`` as HF image processors return, is accepted)."""


def default_preprocess(
    images: Sequence[ImageLike],
    size: int = 224,
    mean: Sequence[float] = HALF,
    std: Sequence[float] = HALF,
) -> Float[Tensor, "B 3 size size"]:
    """Fallback preprocessing: RGB, bilinear (antialiased) resize to ``size`` x ``size``, scale to [0, 1],
    normalise with ``mean``/``std``. Defaults are mean = std = 0.5 (google/vit-base-patch16-224, the
    model of the Galaxy Zoo study), giving values in [-1, 1]; pass ``IMAGENET_MEAN``/``IMAGENET_STD``
    for timm-style weights. Use the model's own ``preprocess`` for real work."""
    if len(images) == 0:
        raise DataError("default_preprocess got an empty batch")
    spec = Preprocessing(
        image_size=size,
        mean=tuple(mean),
        std=tuple(std),
        interpolation="bilinear",
        resize_mode="squash",
        crop_pct=1.0,
        source="vitmech.data.default_preprocess",
    )
    return preprocess(list(images), spec)


def _as_pixel_tensor(output: Any, batch_size: int) -> Float[Tensor, "B C H W"]:
    """Accept a tensor, an array, or a mapping with ``pixel_values``; check it is ``[B, C, H, W]``."""
    if isinstance(output, Mapping):
        if "pixel_values" not in output:
            raise DataError(f"preprocess returned a mapping without 'pixel_values' (keys {sorted(output)})")
        output = output["pixel_values"]
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(output)
    if not isinstance(output, Tensor):
        raise DataError(f"preprocess must return a Tensor [B, C, H, W], got {type(output).__name__}")
    if output.ndim != 4 or output.shape[0] != batch_size:
        raise DataError(f"preprocess must return [B={batch_size}, C, H, W], got shape {tuple(output.shape)}")
    return output


class LazyImageTransform:
    """Batch transform for ``Dataset.with_transform``: decode images, run ``preprocess``, attach targets.

    Input batch: a dict of column lists holding ``image_column`` (HF image dicts, not yet decoded)
    and whatever ``targets`` needs. Output: ``{"pixel_values": Tensor[B, C, H, W], **targets}`` with
    targets as tensors, or, without ``preprocess``, ``{"image": list[PIL.Image], **targets}`` with
    plain Python values. A picklable object, so DataLoader workers can use it.
    """

    def __init__(
        self,
        preprocess: Preprocess | None,
        targets: Callable[[Mapping[str, list]], dict[str, Any]],
        image_column: str = "image",
        id_column: str | None = None,
    ):
        self.preprocess = preprocess
        self.targets = targets
        self.image_column = image_column
        self.id_column = id_column

    def __call__(self, batch: Mapping[str, list]) -> dict[str, Any]:
        values = batch[self.image_column]
        ids = batch.get(self.id_column) if self.id_column else None
        images = [
            decode_image(value, where=f"({self.id_column}={ids[i]!r})" if ids is not None else "")
            for i, value in enumerate(values)
        ]
        out = self.targets(batch)
        if self.preprocess is None:
            out["image"] = images
            return out
        out["pixel_values"] = _as_pixel_tensor(self.preprocess(images), len(images))
        return {key: (value if isinstance(value, Tensor) else torch.as_tensor(value)) for key, value in out.items()}


__all__ = [
    "ImageLike",
    "Preprocess",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_preprocess",
    "LazyImageTransform",
]
