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

__all__ = [
    "DataError",
    "SchemaError",
    "UnknownLabelError",
    "UnreadableImageError",
    "EmptySplitError",
    "InsufficientDataError",
]
