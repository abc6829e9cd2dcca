"""Resumable sweep results: an append-only JSON-lines file per settings hash.

    sweep-<key>.jsonl
      {"type": "header", "key": ..., "settings": {...}, "version": 1}
      {"type": "clean", "batch": 0, "n": 32, "sum": ...}
      {"type": "cell", "batch": 0, "cell": "L3H5", "n": 32, "sum": ..., "sum_delta_sq": ...}
      ...

Each record is written (flushed and fsynced) as soon as its cells are computed, so an interrupted
sweep loses nothing already finished; rerunning with the same settings reads the file and computes
only what is missing. A half-written last line (a crash mid-write) is dropped on opening.
Sums are float64 and JSON keeps them exactly, so a resumed table equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vitmech.analysis.ablation.errors import StoreMismatchError

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
            self.clean[record["batch"]] = record
        elif record["type"] == "cell":
            self.cells[(record["batch"], record["cell"])] = record

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._remember(record)

    @property
    def n_cells_done(self) -> int:
        return len(self.cells)


class JsonlStore(MemoryStore):
    """A MemoryStore mirrored to an append-only JSONL file."""

    path: Path

    def __init__(self, path: str | Path, key: str, settings: dict[str, Any]) -> None:
        super().__init__()
        self.path = Path(path)
        self.key = key
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"type": "header", "key": key, "version": STORE_VERSION, "settings": settings}
            self._append([header])

    @classmethod
    def for_settings(cls, directory: str | Path, key: str, settings: dict[str, Any]) -> JsonlStore:
        """The store file for these settings under `directory` (created or resumed)."""
        return cls(Path(directory) / f"sweep-{key}.jsonl", key, settings)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):
            logger.warning("dropping a half-written last record of %s (%d bytes)", self.path, len(raw) - len(complete))
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        lines = complete.decode().splitlines()
        if not lines:
            raise StoreMismatchError(f"{self.path} has no header line; delete it or choose another store folder")
        header = json.loads(lines[0])
        if header.get("type") != "header" or header.get("key") != self.key:
            raise StoreMismatchError(
                f"{self.path} was written for settings key {header.get('key')!r}, not {self.key!r}; "
                "delete it or choose another store folder"
            )
        if header.get("version") != STORE_VERSION:
            raise StoreMismatchError(f"{self.path} has store version {header.get('version')}, expected {STORE_VERSION}")
        for line in lines[1:]:
            self._remember(json.loads(line))
        logger.info("resuming %s: %d cell results already on disk", self.path, self.n_cells_done)

    def _append(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self.path.open("a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def write(self, records: list[dict[str, Any]]) -> None:
        self._append(records)
        super().write(records)
