"""Resumable sweep results: append-only JSON-lines files per settings hash, one file per writer.

    sweep-<key>.jsonl                 the first writer's file
    sweep-<key>.<shard>.jsonl         further writers (a second process, or one per rank: shard="rank3")
      {"type": "header", "key": ..., "settings": {...}, "version": 1, "created_by": {...}}
      {"type": "clean", "batch": 0, "n": 32, "sum": ...}
      {"type": "cell", "batch": 0, "cell": "L3H5", "n": 32, "sum": ..., "sum_delta_sq": ...}

Each record is written (flushed and fsynced) as soon as its cells are computed, so an interrupted
sweep loses nothing already finished; rerunning with the same settings reads every file of the key
and computes only what is missing. Each file has one writer at a time (a lock file
`.sweep-<key>.jsonl.lock` naming pid and host): a second process writing the same sweep gets its own
shard file instead of interleaving lines, and readers merge all shards (identical settings give
identical records, so merging is order-free). A half-written last line (a kill mid-write) is dropped;
a garbled line elsewhere raises `StoreCorruptError` naming the file and line. Sums are float64 and
JSON keeps them exactly, so a resumed table equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from vitmech.analysis.ablation.errors import StoreCorruptError, StoreMismatchError
from vitmech.io.atomic import fsync_dir, temporary_name
from vitmech.io.errors import CorruptFileError, LockHeldError
from vitmech.io.lock import WriterLock
from vitmech.io.manifest import created_by
from vitmech.io.readers import parse_json_line

logger = logging.getLogger(__name__)

STORE_VERSION = 1


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
        header = {
            "type": "header",
            "key": self.key,
            "version": STORE_VERSION,
            "settings": self.settings,
            "created_by": created_by(),
        }
        tmp = temporary_name(self.path)
        tmp.write_text(json.dumps(header, separators=(",", ":")) + "\n")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _load(self, file: Path, own: bool) -> None:
        raw = file.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):
            logger.warning("dropping a half-written last record of %s (%d bytes)", file, len(raw) - len(complete))
            if own:
                with file.open("r+b") as f:
                    f.truncate(len(complete))
                    os.fsync(f.fileno())
        lines = complete.split(b"\n")[:-1]
        if not lines:
            return  # cut before its header was complete: nothing finished was in it (own file: rewritten)
        header = parse_store_line(lines[0], file, 1, "store header")
        if not isinstance(header, dict) or header.get("type") != "header":
            raise StoreCorruptError(
                f"{file} line 1 is not a store header; delete the file to start this sweep over", path=file, line=1
            )
        if header.get("key") != self.key:
            raise StoreMismatchError(
                f"{file} was written for settings key {header.get('key')!r}, not {self.key!r}; "
                "delete it or choose another store folder"
            )
        if header.get("version") != STORE_VERSION:
            raise StoreMismatchError(f"{file} has store version {header.get('version')}, expected {STORE_VERSION}")
        for number, line in enumerate(lines[1:], start=2):
            record = parse_store_line(line, file, number)
            if not isinstance(record, dict) or record.get("type") not in ("clean", "cell"):
                raise StoreCorruptError(
                    f"{file} line {number}: not a store record ({str(record)[:60]!r})", path=file, line=number
                )
            self._remember(record)

    def _append(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
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
