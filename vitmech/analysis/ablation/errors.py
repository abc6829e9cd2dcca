"""The ablation engine's errors (defined with every other vitmech error in `vitmech.errors`)."""

from __future__ import annotations

from vitmech.errors import AblationError, EmptyReferenceError, HeadIndexError, MetricError, StoreMismatchError
from vitmech.io.errors import CorruptFileError


class StoreCorruptError(StoreMismatchError, CorruptFileError):
    """A sweep store file with a garbled line (the file and 1-based line are named; `.path`, `.line`)."""


__all__ = [
    "AblationError",
    "EmptyReferenceError",
    "HeadIndexError",
    "MetricError",
    "StoreCorruptError",
    "StoreMismatchError",
]
