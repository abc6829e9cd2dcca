"""The data layer's errors (defined with every other vitmech error in `vitmech.errors`)."""

from __future__ import annotations

from vitmech.errors import (
    DataError,
    EmptySplitError,
    InsufficientDataError,
    SchemaError,
    UnknownLabelError,
    UnreadableImageError,
)
from vitmech.io.errors import CorruptFileError, IncompleteWriteError

__all__ = [
    "DataError",
    "SchemaError",
    "UnknownLabelError",
    "UnreadableImageError",
    "EmptySplitError",
    "InsufficientDataError",
    "IncompleteDatasetError",
    "CorruptDatasetError",
]


class IncompleteDatasetError(DataError, IncompleteWriteError):
    """A dataset folder whose writer did not finish: missing shards or completion file (named)."""


class CorruptDatasetError(DataError, CorruptFileError):
    """A dataset file that cannot be read or whose size/hash differs from the completion file (named)."""
