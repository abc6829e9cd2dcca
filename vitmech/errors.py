"""Errors vitmech raises, each saying what was expected; all of them are `VitmechError`s.

Catch `VitmechError` for anything vitmech rejects, `InputError` for any bad input (it is also a
`ValueError`, so code written against the built-in types keeps working), or a specific kind:

    VitmechError
    └── InputError (ValueError)
        ├── IndexOutOfRangeError (IndexError): a layer, head or token index outside the model
        ├── UnknownNameError (KeyError): a region, column, split, cell or cached hook looked up by a name it lacks
        ├── InputTypeError (TypeError): an argument of the wrong type, or arguments that only apply together
        ├── PathNotFoundError (FileNotFoundError): a file or folder that is not there, or lacks what it needs
        ├── UnsupportedModelError, UnknownModelError, CheckpointMismatchError (ResumeMismatchError,
        │   NonFiniteWeightsError), CacheBudgetError (also MemoryError)
        ├── ImageInputError, ModelMismatchError
        ├── DataError: SchemaError, UnknownLabelError, UnreadableImageError, EmptySplitError,
        │   InsufficientDataError
        ├── TrainingDataError, HeadMismatchError, NonFiniteLossError (FloatingPointError)
        ├── AblationError: HeadIndexError (also IndexOutOfRangeError), EmptyReferenceError, MetricError,
        │   StoreMismatchError
        ├── RuntimeSettingError, BatchSourceError, PatchingError
        ├── HubError (also OSError): the hub is offline, unreachable, lacks the model or refuses an upload
        └── vitmech.io.errors.StorageError: CorruptFileError, IncompleteWriteError, LockHeldError (and the data
            and ablation stores' kinds built on them)
"""

from __future__ import annotations


class VitmechError(Exception):
    """The root of every error vitmech raises on purpose."""


class InputError(VitmechError, ValueError):
    """A value a function cannot use (shape, range, option, combination); the message names it and what is valid."""


class IndexOutOfRangeError(InputError, IndexError):
    """A layer, head or token index outside the model (the message gives the valid range)."""


class UnknownNameError(InputError, KeyError):
    """A name or key that is not there (a region, column, split, sweep cell, cached hook); the message lists
    what is. Also a `KeyError`, and shown as its message (a plain KeyError shows the message's repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputTypeError(InputError, TypeError):
    """An argument of a type the function does not take, or keyword arguments that do not apply to the
    call (the message names what is accepted). Also a `TypeError`."""


class PathNotFoundError(InputError, FileNotFoundError):
    """A file or folder that is not there, or a folder without the files it needs (the message names the path
    and what was looked for). Also a `FileNotFoundError`."""


# ---------------------------------------------------------------------------------------------- models
class UnsupportedModelError(InputError):
    """The source model has an architectural feature HookedViT does not represent (named in the message)."""


class CheckpointMismatchError(InputError):
    """A checkpoint's keys or shapes do not match the model it should load into (listed in the message)."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])


class UnknownModelError(InputError):
    """A model name that no source knows; the message lists close matches."""


class ImageInputError(InputError):
    """Model input of the wrong shape, dtype or with non-finite values."""


class ModelMismatchError(InputError):
    """Two models that cannot be compared head by head (depth, heads, image size or patch grid differ)."""


class NonFiniteWeightsError(CheckpointMismatchError):
    """Weights holding NaN or inf (the tensors are named; `.nonfinite` lists them); pass allow_nonfinite=True to load anyway."""

    def __init__(self, message: str, nonfinite: list[str] | None = None) -> None:
        super().__init__(message)
        self.nonfinite = list(nonfinite or [])


class CacheBudgetError(InputError, MemoryError):
    """An activation cache that would exceed the memory budget (size, budget and advice in the message)."""


# ---------------------------------------------------------------------------------------------- data
class DataError(InputError):
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


# ---------------------------------------------------------------------------------------------- training
class TrainingDataError(InputError):
    """A training or evaluation set that cannot be used: empty, NaN targets, labels outside the head."""


class HeadMismatchError(InputError):
    """The model's output head does not fit the task (number of classes or targets)."""


class NonFiniteLossError(InputError, FloatingPointError):
    """The training loss became NaN or inf: weights that already held non-finite values (named), or a recipe
    (learning rate) or data that made training diverge. Also a `FloatingPointError`."""


class ResumeMismatchError(CheckpointMismatchError):
    """A resume checkpoint was written by another model, tier or recipe (the differences are listed)."""


# ---------------------------------------------------------------------------------------------- ablation
class AblationError(InputError):
    """Base class: an ablation request that cannot be carried out as asked."""


class HeadIndexError(AblationError, IndexOutOfRangeError):
    """A layer or head index outside the model."""


class EmptyReferenceError(AblationError):
    """A reference (or resample source) set with no images."""


class MetricError(AblationError):
    """A metric that cannot be used: wrong output shape, missing targets, or a model without the output it reads."""


class StoreMismatchError(AblationError):
    """A resumable sweep file whose recorded settings or data do not match the current run."""


# ---------------------------------------------------------------------------------------------- runtime, patching
class RuntimeSettingError(InputError):
    """A device, precision, thread or distributed setting that is not valid (the value and the choices named)."""


class BatchSourceError(InputError):
    """A dataset, loader or folder that does not yield image batches (what was found named in the message)."""


class PatchingError(InputError):
    """A patching, path-patching or circuit request that cannot run (bad sites, unpaired images, ...)."""


class HubError(InputError, OSError):
    """The model hub cannot serve or take a model: unreachable, offline (HF_HUB_OFFLINE), no such model or
    config, or not logged in / no write access; the message says which and how to fix it."""


__all__ = [
    "AblationError",
    "BatchSourceError",
    "CacheBudgetError",
    "CheckpointMismatchError",
    "DataError",
    "EmptyReferenceError",
    "EmptySplitError",
    "HeadIndexError",
    "HeadMismatchError",
    "HubError",
    "ImageInputError",
    "IndexOutOfRangeError",
    "InputError",
    "InputTypeError",
    "InsufficientDataError",
    "MetricError",
    "ModelMismatchError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "PatchingError",
    "PathNotFoundError",
    "ResumeMismatchError",
    "RuntimeSettingError",
    "SchemaError",
    "StoreMismatchError",
    "TrainingDataError",
    "UnknownLabelError",
    "UnknownModelError",
    "UnknownNameError",
    "UnreadableImageError",
    "UnsupportedModelError",
    "VitmechError",
]
