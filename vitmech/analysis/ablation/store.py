"""Resumable sweep results: append-only JSON-lines files per settings hash, one file per writer.

    sweep-<key>.jsonl                 the first writer's file
    sweep-<key>.<shard>.jsonl         further writers (a second process, or one per rank: shard="rank3")
      {"type": "header", "key": ..., "settings": {...}, "version": 2, "created_by": {...}, "crc": ...}
      {"type": "clean", "batch": 0, "n": 32, "sum": ..., "crc": "1c291ca3"}
      {"type": "cell", "batch": 0, "cell": "L3H5", "n": 32, "sum": ..., "sum_delta_sq": ..., "crc": ...}

Each record is written (flushed and fsynced) as soon as its cells are computed, so an interrupted
sweep loses nothing already finished; rerunning with the same settings reads every file of the key
and computes only what is missing. Each file has one writer at a time (a lock file
`.sweep-<key>.jsonl.lock` naming pid and host): a second process writing the same sweep gets its own
shard file instead of interleaving lines, and readers merge all shards (identical settings give
identical records, so merging is order-free). A half-written last line (a kill mid-write) is dropped;
a garbled line elsewhere raises `StoreCorruptError` naming the file and line. Every line carries the
CRC-32 of its content (`crc`), so a line changed after it was written (a flipped bit that still parses as
JSON, an edit) is refused the same way instead of changing the table. Sums are float64 and JSON keeps
them exactly, so a resumed table equals an uninterrupted one. Files of version 1 (no `crc`) still read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

from vitmech.analysis.ablation.errors import StoreCorruptError, StoreMismatchError
from vitmech.io.atomic import fsync_dir, temporary_name
from vitmech.io.errors import CorruptFileError, LockHeldError
from vitmech.io.lock import WriterLock
from vitmech.io.manifest import created_by
from vitmech.io.readers import parse_json_line

logger = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: every line carries "crc"; 1: no checksums (still read)
READABLE_VERSIONS = (1, 2)
RECORD_FIELDS = {
    "clean": ("batch", "n", "sum"),
    "cell": ("batch", "cell", "n", "sum", "sum_delta_sq"),
}


class MemoryStore:
    """The store interface without a file (a sweep that need not survive an interruption)."""

    path: Path | None = None

    def __init__(self) -> None:
        self.clean: dict[int, dict[str, Any]] = {}
        self.cells: dict[tuple[int, str], dict[str, Any]] = {}

    def has_clean(self, batch: int) -> bool:
        return batch in self.clean

    def has_cell(self, batch: int, cell: str) -> bool:
        return (batch, cell) in self.cells

    def _remember(self, record: dict[str, Any]) -> None:
        if record["type"] == "clean":
            self.clean.setdefault(record["batch"], record)
        elif record["type"] == "cell":
            self.cells.setdefault((record["batch"], record["cell"]), record)

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._remember(record)

    def close(self) -> None:
        """Release what the store holds (nothing in memory)."""

    @property
    def n_cells_done(self) -> int:
        return len(self.cells)


def shard_path(path: Path, shard: str) -> Path:
    """`sweep-<key>.jsonl` -> `sweep-<key>.<shard>.jsonl`."""
    if not shard or any(c in shard for c in "/\\.") or shard.startswith("-"):
        raise StoreMismatchError(f"shard must be a plain name like 'rank3' (no dots or slashes), got {shard!r}")
    return path.with_name(f"{path.stem}.{shard}{path.suffix}")


def store_files(path: str | Path) -> list[Path]:
    """The main file of a store and all its shard files, main first."""
    path = Path(path)
    shards = sorted(p for p in path.parent.glob(f"{path.stem}.*{path.suffix}") if not p.name.startswith("."))
    return ([path] if path.exists() else []) + shards


def parse_store_line(line: bytes, file: Path, number: int, what: str = "store record") -> Any:
    """One record of a store file; StoreCorruptError naming the file and 1-based line if it is garbled."""
    try:
        return parse_json_line(line, file, number, what)
    except CorruptFileError as exc:
        raise StoreCorruptError(
            f"{exc}. The lines before it are intact: delete the file to recompute everything, or cut it "
            f"before line {number} to keep them",
            path=file,
            line=number,
        ) from exc


def _crc(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "crc"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()):08x}"


def encode_record(record: dict[str, Any]) -> str:
    """One store line: the record with its checksum `crc` (CRC-32 of the canonical JSON), newline-terminated."""
    body = {k: v for k, v in record.items() if k != "crc"}
    return json.dumps({**body, "crc": _crc(body)}, separators=(",", ":")) + "\n"


def _checked(record: Any, file: Path, number: int, required: bool) -> dict[str, Any]:
    """The record without its checksum, after checking it (and, for data lines, its fields)."""
    if not isinstance(record, dict):
        raise StoreCorruptError(
            f"{file} line {number}: not a store record ({str(record)[:60]!r})", path=file, line=number
        )
    if "crc" in record:
        if record["crc"] != _crc(record):
            raise StoreCorruptError(
                f"{file} line {number}: checksum mismatch: the line was changed after it was written (a flipped "
                f"bit or an edit). Delete the file to recompute everything, or cut it before line {number} to "
                "keep the lines before it",
                path=file,
                line=number,
            )
        record = {k: v for k, v in record.items() if k != "crc"}
    elif required:
        raise StoreCorruptError(f"{file} line {number}: the record has no checksum (crc)", path=file, line=number)
    kind = record.get("type")
    if kind != "header":
        fields = RECORD_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None or any(f not in record for f in fields):
            raise StoreCorruptError(
                f"{file} line {number}: not a store record ({str(record)[:60]!r})", path=file, line=number
            )
    return record


def read_store_file(file: str | Path, key: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int, int]:
    """Header, finished records, the byte length of the finished lines, and the file's size as read.

    A half-written last line (a kill mid-write) is left out; a file cut inside its header has no header
    (None) and no records. Raises StoreCorruptError naming the file and line for a garbled line, a changed
    line (checksum) or a line that is not a record; StoreMismatchError for another sweep's file.
    """
    file = Path(file)
    raw = file.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    lines = complete.split(b"\n")[:-1]
    if not lines:
        return None, [], len(complete), len(raw)
    header = parse_store_line(lines[0], file, 1, "store header")
    if not isinstance(header, dict) or header.get("type") != "header":
        raise StoreCorruptError(
            f"{file} line 1 is not a store header; delete the file to start this sweep over", path=file, line=1
        )
    header = _checked(header, file, 1, required=False)
    if header.get("key") != key:
        raise StoreMismatchError(
            f"{file} was written for settings key {header.get('key')!r}, not {key!r}; "
            "delete it or choose another store folder"
        )
    version = header.get("version")
    if version not in READABLE_VERSIONS:
        raise StoreMismatchError(f"{file} has store version {version}, expected one of {READABLE_VERSIONS}")
    records = [
        _checked(parse_store_line(line, file, number), file, number, required=version >= 2)
        for number, line in enumerate(lines[1:], start=2)
    ]
    return header, records, len(complete), len(raw)


def store_header(key: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The first record of a store file: key, version, settings and who made it."""
    return {"type": "header", "key": key, "version": STORE_VERSION, "settings": settings, "created_by": created_by()}


class JsonlStore(MemoryStore):
    """A MemoryStore mirrored to append-only JSONL files (this writer's own file + read-only shards of others).

    Args:
        path: the main file `.../sweep-<key>.jsonl`.
        key: the settings hash every file of this store must carry.
        settings: recorded in each file's header.
        shard: write to `sweep-<key>.<shard>.jsonl` (one per distributed rank); None: the main file, or
            an own shard named after this process if another live process is writing the main file.
    """

    path: Path

    def __init__(self, path: str | Path, key: str, settings: dict[str, Any], shard: str | None = None) -> None:
        super().__init__()
        self.main_path = Path(path)
        self.key = key
        self.settings = settings
        self.main_path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._lock = self._claim(shard)
        try:
            for file in store_files(self.main_path):
                self._load(file, own=file == self.path)
            if not self.path.exists() or self.path.stat().st_size == 0:
                self._create()
        except BaseException:
            self.close()
            raise
        if self.n_cells_done:
            logger.info("resuming %s: %d cell results already on disk", self.main_path, self.n_cells_done)

    @classmethod
    def for_settings(
        cls, directory: str | Path, key: str, settings: dict[str, Any], shard: str | None = None
    ) -> JsonlStore:
        """The store for these settings under `directory` (created or resumed)."""
        return cls(Path(directory) / f"sweep-{key}.jsonl", key, settings, shard=shard)

    def _claim(self, shard: str | None) -> tuple[Path, WriterLock]:
        """The file this writer appends to, and its held lock."""
        target = self.main_path if shard is None else shard_path(self.main_path, shard)
        lock = WriterLock(target.with_name(f".{target.name}.lock"), what=f"sweep store {target}")
        try:
            return target, lock.acquire()
        except LockHeldError:
            if shard is not None:
                raise
        own = shard_path(self.main_path, f"w{os.getpid()}-{secrets.token_hex(3)}")
        logger.warning("%s is being written by another process; this sweep writes its own shard %s", target, own)
        lock = WriterLock(own.with_name(f".{own.name}.lock"), what=f"sweep store {own}")
        return own, lock.acquire()

    def close(self) -> None:
        """Release this writer's lock (the files stay)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def _create(self) -> None:
        """Write the header line atomically (a kill leaves no file or a complete header)."""
        tmp = temporary_name(self.path)
        tmp.write_text(encode_record(store_header(self.key, self.settings)))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _load(self, file: Path, own: bool) -> None:
        _, records, complete, size = read_store_file(file, self.key)
        if complete < size:
            logger.warning("dropping a half-written last record of %s (%d bytes)", file, size - complete)
            if own:
                with file.open("r+b") as f:
                    f.truncate(complete)
                    os.fsync(f.fileno())
        for record in records:
            self._remember(record)

    def _append(self, records: list[dict[str, Any]]) -> None:
        text = "".join(encode_record(r) for r in records)
        with self.path.open("a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def write(self, records: list[dict[str, Any]]) -> None:
        self._append(records)
        super().write(records)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
