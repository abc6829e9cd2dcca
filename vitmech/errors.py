"""Errors vitmech raises on bad input, each saying what was expected."""

from __future__ import annotations


class UnsupportedModelError(ValueError):
    """The source model has an architectural feature HookedViT does not represent (named in the message)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model it should load into (listed in the message)."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])


class UnknownModelError(ValueError):
    """A model name that no source knows; the message lists close matches."""


class ImageInputError(ValueError):
    """Model input of the wrong shape, dtype or with non-finite values."""


class ModelMismatchError(ValueError):
    """Two models that cannot be compared head by head (depth, heads, image size or patch grid differ)."""


class NonFiniteWeightsError(CheckpointMismatchError):
    """Weights holding NaN or inf (the tensors are named; `.nonfinite` lists them); pass allow_nonfinite=True to load anyway."""

    def __init__(self, message: str, nonfinite: list[str] | None = None) -> None:
        super().__init__(message)
        self.nonfinite = list(nonfinite or [])


class CacheBudgetError(MemoryError, ValueError):
    """An activation cache that would exceed the memory budget (size, budget and advice in the message)."""


class RuntimeSettingError(ValueError):
    """A device, precision, thread or distributed setting that is not valid (the value and the choices named)."""


class BatchSourceError(ValueError):
    """A dataset, loader or folder that does not yield image batches (what was found named in the message)."""


class PatchingError(ValueError):
    """A patching, path-patching or circuit request that cannot run (bad sites, unpaired images, ...)."""
