"""Readers that turn a parser's bare exception into a vitmech error naming the file (and line).

JSON (`read_json`, `parse_json_line`), safetensors (`read_safetensors`, `read_safetensors_metadata`),
parquet/Arrow (`check_parquet`) and images (`vitmech.data._io.decode_image`) all raise
`CorruptFileError` (a `StorageError`) with `.path` and, for text, `.line`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitmech.io.errors import CorruptFileError


def _cut_hint(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return ""
    return " (the file is empty)" if size == 0 else f" ({size} bytes; cut short or overwritten?)"


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """json.loads of the file; CorruptFileError naming the file, line and column if it does not parse."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{what} {path} is not UTF-8 text: {exc}", path=path) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            f"{what} {path} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{_cut_hint(path)}",
            path=path,
            line=exc.lineno,
        ) from exc


def parse_json_line(text: str | bytes, path: str | Path, line: int, what: str = "record") -> Any:
    """One JSON-lines record; CorruptFileError naming the file and its 1-based line."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        shown = text[:60] if isinstance(text, str) else text[:60].decode(errors="replace")
        raise CorruptFileError(
            f"{Path(path)} line {line}: garbled {what} ({exc}); it starts {shown!r}", path=path, line=line
        ) from exc


def read_safetensors(path: str | Path, what: str = "weights file") -> dict[str, Any]:
    """All tensors of a .safetensors file; CorruptFileError naming the file if it is empty, cut or not safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{what} {path} is missing", path=path)
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, RuntimeError ...
        raise CorruptFileError(
            f"{what} {path} is not a readable safetensors file{_cut_hint(path)}: {exc}", path=path
        ) from exc


def read_safetensors_metadata(path: str | Path, what: str = "weights file") -> dict[str, str]:
    """The string metadata of a .safetensors header; CorruptFileError naming the file if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise CorruptFileError(
            f"{what} {path} is not a readable safetensors file{_cut_hint(path)}: {exc}", path=path
        ) from exc


def check_parquet(path: str | Path, what: str = "dataset shard") -> int:
    """Number of rows of a parquet file after reading its footer; CorruptFileError naming the file otherwise."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        return int(pq.read_metadata(str(path)).num_rows)
    except Exception as exc:  # ArrowInvalid, OSError
        raise CorruptFileError(
            f"{what} {path} is not a readable parquet file{_cut_hint(path)}: {exc}", path=path
        ) from exc


__all__ = ["check_parquet", "parse_json_line", "read_json", "read_safetensors", "read_safetensors_metadata"]
