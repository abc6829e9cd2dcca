"""The ablation engine's errors (defined with every other vitmech error in `vitmech.errors`)."""

from __future__ import annotations

from vitmech.errors import AblationError, EmptyReferenceError, HeadIndexError, MetricError, StoreMismatchError

__all__ = ["AblationError", "EmptyReferenceError", "HeadIndexError", "MetricError", "StoreMismatchError"]
