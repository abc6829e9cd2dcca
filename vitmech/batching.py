"""Splitting a stack of images (or any N items) into batches: one implementation for every batched loop."""

from __future__ import annotations

from collections.abc import Iterator

from jaxtyping import Shaped
from torch import Tensor

from vitmech.errors import InputError


def batch_bounds(n_items: int, batch_size: int, min_batch: int = 1) -> list[tuple[int, int]]:
    """[start, stop) of each batch: `batch_size` items each; a last batch smaller than `min_batch` joins the one
    before it (so resampling within a batch never sees a batch of one).

    >>> batch_bounds(10, 4), batch_bounds(9, 4, min_batch=2)
    ([(0, 4), (4, 8), (8, 10)], [(0, 4), (4, 9)])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    bounds = [(start, min(start + batch_size, n_items)) for start in range(0, n_items, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_batch:
        (start, _), (_, stop) = bounds[-2], bounds.pop()
        bounds[-1] = (start, stop)
    return bounds


def image_batches(
    images: Shaped[Tensor, "batch ..."], batch_size: int, min_batch: int = 1
) -> Iterator[tuple[int, Tensor]]:
    """(start index, images[start:stop]) for each batch of `batch_bounds(len(images), batch_size, min_batch)`."""
    for start, stop in batch_bounds(images.shape[0], batch_size, min_batch):
        yield start, images[start:stop]
