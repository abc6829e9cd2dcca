"""The data layer's own errors: dataset folders a writer left unfinished or that were damaged since.

Every other error the data layer raises (``DataError``, ``SchemaError``, ...) is defined with the rest of
vitmech's errors in `vitmech.errors`.
"""

from __future__ import annotations

from vitmech.errors import DataError
from vitmech.io.errors import CorruptFileError, IncompleteWriteError

__all__ = ["IncompleteDatasetError", "CorruptDatasetError"]


class IncompleteDatasetError(DataError, IncompleteWriteError):
    """A dataset folder whose writer did not finish: missing shards or completion file (named)."""


class CorruptDatasetError(DataError, CorruptFileError):
    """A dataset file that cannot be read or whose size/hash differs from the completion file (named)."""
