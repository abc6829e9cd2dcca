"""Splitting a stack of images (or any N items) into batches, and joining the results of batches: one
implementation for every batched loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from typing import Any, TypeVar

import torch
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


def cat_if_all(tensors: Sequence[Tensor | None], dim: int = 0) -> Tensor | None:
    """torch.cat(tensors, dim), or None when any part is None (an optional field of batched results)."""
    present = [t for t in tensors if t is not None]
    return torch.cat(present, dim) if present and len(present) == len(tensors) else None


Result = TypeVar("Result")


def concat_results(parts: Sequence[Result], dim: int = 0, extend: Collection[str] = ()) -> Result:
    """Join dataclass results of batches into one of the same class: tensor fields concatenated along `dim`
    (optional ones None when any part lacks them, `cat_if_all`), the sequence fields named in `extend` joined
    end to end into a tuple, and every other field (settings, layouts) required equal across parts and kept.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Scores:
    ...     values: Tensor
    ...     unit: str
    >>> concat_results([Scores(torch.zeros(2), "nats"), Scores(torch.ones(1), "nats")])
    Scores(values=tensor([0., 0., 1.]), unit='nats')
    """
    if not parts:
        raise InputError("nothing to concatenate")
    first = parts[0]
    joined: dict[str, Any] = {}
    for field in dataclasses.fields(first):  # type: ignore[arg-type]
        column = [getattr(part, field.name) for part in parts]
        if field.name in extend:
            joined[field.name] = tuple(item for value in column for item in value)
        elif any(isinstance(value, Tensor) for value in column):
            joined[field.name] = cat_if_all(column, dim)
        elif any(value != column[0] for value in column[1:]):
            raise InputError(f"can only join results with the same {field.name}; got {column[0]!r} and others")
        else:
            joined[field.name] = column[0]
    return type(first)(**joined)
