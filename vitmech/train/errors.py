"""The training code's errors (defined with every other vitmech error in `vitmech.errors`)."""

from __future__ import annotations

from vitmech.errors import HeadMismatchError, ResumeMismatchError, TrainingDataError

__all__ = ["HeadMismatchError", "ResumeMismatchError", "TrainingDataError"]
