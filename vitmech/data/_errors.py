"""Errors raised by the data layer.

Every error is a ``ValueError`` subclass (bad input, not a bug), so callers can catch
``DataError`` for all of them or a specific class for one failure.
"""

from __future__ import annotations

from vitmech.io.errors import CorruptFileError, IncompleteWriteError


class DataError(ValueError):
    """Base class of every data-layer input error."""


class SchemaError(DataError):
    """A dataset lacks a required column, or a column has the wrong type."""


class UnknownLabelError(DataError):
    """A label column holds values outside the known classes (and outside the excluded ones)."""


class UnreadableImageError(DataError):
    """An image could not be decoded (corrupt bytes, missing file, unknown format)."""


class EmptySplitError(DataError):
    """A split ended up with no rows (after filtering, or because of the requested fractions)."""


class InsufficientDataError(DataError):
    """More rows were requested than the source can give."""


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
