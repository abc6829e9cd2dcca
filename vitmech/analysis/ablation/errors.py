"""Errors raised by the ablation engine on bad input, each saying what was expected."""

from __future__ import annotations

from vitmech.io.errors import CorruptFileError


class AblationError(ValueError):
    """Base class: an ablation request that cannot be carried out as asked."""


class HeadIndexError(AblationError, IndexError):
    """A layer or head index outside the model."""


class EmptyReferenceError(AblationError):
    """A reference (or resample source) set with no images."""


class MetricError(AblationError):
    """A metric that cannot be used: wrong output shape, missing targets, or a model without the output it reads."""


class StoreMismatchError(AblationError):
    """A resumable sweep file whose recorded settings or data do not match the current run."""


class StoreCorruptError(StoreMismatchError, CorruptFileError):
    """A sweep store file with a garbled line (the file and 1-based line are named; `.path`, `.line`)."""
