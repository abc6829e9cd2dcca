"""Errors the training code raises on bad input, each saying what was expected."""

from __future__ import annotations

from vitmech.errors import CheckpointMismatchError


class TrainingDataError(ValueError):
    """A training or evaluation set that cannot be used: empty, NaN targets, labels outside the head."""


class HeadMismatchError(ValueError):
    """The model's output head does not fit the task (number of classes or targets)."""


class ResumeMismatchError(CheckpointMismatchError):
    """A resume checkpoint was written by another model, tier or recipe (the differences are listed)."""


__all__ = ["HeadMismatchError", "ResumeMismatchError", "TrainingDataError"]
