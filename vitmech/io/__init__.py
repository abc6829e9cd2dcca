"""Durable files: atomic writes, manifests, single-writer locks, and readers whose errors name the file.

See docs/reliability.md for what survives a kill, a cut file or two writers, and how to resume.
"""

from vitmech.io.atomic import atomic_write, atomic_write_bytes, atomic_write_text, commit_dir, staging_dir
from vitmech.io.errors import CorruptFileError, IncompleteWriteError, LockHeldError, StorageError
from vitmech.io.lock import WriterLock
from vitmech.io.manifest import created_by, read_manifest, verify_manifest, write_manifest
from vitmech.io.readers import check_parquet, parse_json_line, read_json, read_safetensors

__all__ = [
    "CorruptFileError",
    "IncompleteWriteError",
    "LockHeldError",
    "StorageError",
    "WriterLock",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_parquet",
    "commit_dir",
    "created_by",
    "parse_json_line",
    "read_json",
    "read_manifest",
    "read_safetensors",
    "staging_dir",
    "verify_manifest",
    "write_manifest",
]
