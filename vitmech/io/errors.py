"""Errors of vitmech's file layer: each names the file (and line for text formats) and the problem."""

from __future__ import annotations

from pathlib import Path

from vitmech.errors import InputError


class StorageError(InputError):
    """A file or folder vitmech wrote or reads is damaged, incomplete, or held by another writer.

    Attributes:
        path: the file or folder concerned (None when not known).
        line: 1-based line number for text formats (None otherwise).
    """

    def __init__(self, message: str, *args: object, path: str | Path | None = None, line: int | None = None) -> None:
        super().__init__(message, *args)
        self.path = Path(path) if path is not None else None
        self.line = line


class CorruptFileError(StorageError):
    """A file that cannot be parsed (cut, garbled, not the format its name says) or whose hash is wrong."""


class IncompleteWriteError(StorageError):
    """A folder whose writer did not finish: files listed in its manifest (or its shard names) are missing."""


class LockHeldError(StorageError):
    """Another live process holds the single-writer lock of a folder or file (the holder is named)."""


__all__ = ["CorruptFileError", "IncompleteWriteError", "LockHeldError", "StorageError"]
