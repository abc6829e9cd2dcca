"""Manifests: the size and SHA-256 of every file of a multi-file artifact, written last, checked on read.

    write_manifest(folder, ["model.safetensors", "config.json"], kind="vitmech-model")
    verify_manifest(folder, what="model folder x")   # IncompleteWriteError / CorruptFileError naming files

A manifest also records what made the artifact (`created_by`: vitmech version, host, pid, time,
command line), so every store, checkpoint and dataset says where it came from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vitmech.io.atomic import atomic_write_text
from vitmech.io.errors import CorruptFileError, IncompleteWriteError
from vitmech.io.readers import read_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vitmech-manifest"
_CHUNK = 1 << 22


def created_by() -> dict[str, Any]:
    """Who made an artifact: vitmech version, host, pid, UTC time and the command line."""
    package = sys.modules.get("vitmech")  # loaded before any of its submodules; no import (keeps io a leaf)
    return {
        "vitmech": getattr(package, "__version__", "unknown"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }


def file_digest(path: str | Path) -> dict[str, Any]:
    """{"size": bytes, "sha256": hex} of one file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def write_manifest(
    directory: str | Path,
    files: Iterable[str],
    *,
    kind: str,
    extra: dict[str, Any] | None = None,
    name: str = MANIFEST_NAME,
) -> Path:
    """Hash `files` (paths relative to `directory`) and write the manifest atomically; returns its path."""
    directory = Path(directory)
    payload = {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "created_by": created_by(),
        "files": {rel: file_digest(directory / rel) for rel in sorted(files)},
        **(extra or {}),
    }
    return atomic_write_text(directory / name, json.dumps(payload, indent=2) + "\n")


def read_manifest(directory: str | Path, name: str = MANIFEST_NAME) -> dict[str, Any] | None:
    """The manifest of `directory`, or None if it has none (CorruptFileError if it is damaged)."""
    path = Path(directory) / name
    if not path.is_file():
        return None
    manifest = read_json(path, what="manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptFileError(f"{path} is not a vitmech manifest (no 'files' table)", path=path)
    return manifest


def verify_manifest(
    directory: str | Path, *, what: str = "", name: str = MANIFEST_NAME, hashes: bool = True
) -> dict[str, Any] | None:
    """Check every file listed in the manifest (size, and SHA-256 unless hashes=False).

    Returns the manifest (None when there is none). Raises IncompleteWriteError naming missing files,
    CorruptFileError naming files whose size or hash differs.
    """
    directory = Path(directory)
    manifest = read_manifest(directory, name)
    if manifest is None:
        return None
    label = what or str(directory)
    missing, damaged = [], []
    for rel, expected in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            missing.append(rel)
            continue
        size = path.stat().st_size
        if size != expected.get("size"):
            damaged.append(f"{rel} ({size} bytes, expected {expected.get('size')})")
        elif hashes and file_digest(path)["sha256"] != expected.get("sha256"):
            damaged.append(f"{rel} (SHA-256 differs from the manifest)")
    if missing:
        raise IncompleteWriteError(
            f"{label} is incomplete: {len(missing)} file(s) listed in {directory / name} are missing: {missing[:10]}",
            path=directory / missing[0],
        )
    if damaged:
        raise CorruptFileError(
            f"{label} is damaged: {'; '.join(damaged[:10])} (checked against {directory / name})",
            path=directory / damaged[0].split(" (")[0],
        )
    return manifest


__all__ = ["MANIFEST_NAME", "created_by", "file_digest", "read_manifest", "verify_manifest", "write_manifest"]
