"""Image encoding/decoding, boxes, and sharded parquet writing shared by the data modules.

Box convention (everywhere in ``vitmech.data``): ``(x0, y0, x1, y1)`` integer pixel coordinates in
the final image, x along columns (left to right), y along rows (top to bottom), origin at the
top-left corner, ``x1``/``y1`` exclusive, so ``mask[y0:y1, x0:x1]`` is the boxed region and
``x1 - x0`` its width. Masks are ``bool`` arrays of shape ``[H, W]`` in the same pixel grid.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
from datasets import Features
from jaxtyping import Bool, UInt8

from vitmech.data._errors import CorruptDatasetError, IncompleteDatasetError
from vitmech.errors import DataError, InputTypeError, UnreadableImageError
from vitmech.io.atomic import atomic_write, atomic_write_text, fsync_dir
from vitmech.io.errors import CorruptFileError, IncompleteWriteError, StorageError
from vitmech.io.lock import LOCK_NAME, WriterLock, check_not_being_written
from vitmech.io.manifest import verify_manifest, write_manifest
from vitmech.io.readers import check_parquet, read_json

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` pixel box, top-left origin, exclusive upper ends."""

# HF writes image datasets with small row groups so random access stays cheap; do the same.
PARQUET_ROW_GROUP_SIZE = 100


def encode_png(array: UInt8[np.ndarray, "H W *C"] | Bool[np.ndarray, "H W"], compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 image ``[H, W]``/``[H, W, 3]`` or a bool mask ``[H, W]`` (stored 1-bit).

    RGB images use Huffman-only deflate (noisy pixels barely compress; this is ~25% faster than
    the default strategy and no larger); grey images and masks use the default strategy."""
    if array.dtype == bool:
        image = PIL.Image.fromarray(array.astype(np.uint8) * 255, mode="L").convert("1")
    elif array.dtype == np.uint8:
        image = PIL.Image.fromarray(array)
    else:
        raise InputTypeError(f"encode_png wants uint8 or bool, got {array.dtype}")
    buffer = io.BytesIO()
    strategy = zlib.Z_HUFFMAN_ONLY if image.mode == "RGB" else zlib.Z_DEFAULT_STRATEGY
    image.save(buffer, format="PNG", compress_level=compress_level, compress_type=strategy)
    return buffer.getvalue()


def encode_jpeg(array: UInt8[np.ndarray, "H W 3"], quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 RGB image ``[H, W, 3]`` (the gz2 hub stores JPEGs)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_image(value: Any, mode: str | None = "RGB", where: str = "") -> PIL.Image.Image:
    """Decode one stored image (HF ``{"bytes", "path"}`` dict, raw bytes, a path, or a PIL image).

    Raises ``UnreadableImageError`` (naming ``where``) for corrupt bytes, missing files or a
    missing value; the image is fully loaded, so a truncated file fails here, not later.
    """
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        else:
            if isinstance(value, dict):
                data, path = value.get("bytes"), value.get("path")
            elif isinstance(value, (bytes, bytearray)):
                data, path = value, None
            elif isinstance(value, (str, Path)):
                data, path = None, value
            else:
                raise InputTypeError(f"unsupported image value of type {type(value).__name__}")
            if data is not None:
                image = PIL.Image.open(io.BytesIO(data))
            elif path is not None:
                image = PIL.Image.open(path)
            else:
                raise UnreadableImageError("image has neither bytes nor path")
            image.load()
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        return image
    except UnreadableImageError:
        raise
    except Exception as exc:  # PIL raises a zoo of types (OSError, SyntaxError, ValueError...)
        raise UnreadableImageError(f"cannot decode image{(' ' + where) if where else ''}: {exc}") from exc


def mask_to_box(mask: Bool[np.ndarray, "H W"]) -> Box | None:
    """Tight box ``(x0, y0, x1, y1)`` (exclusive ends) around the True pixels, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def scale_box(box: Sequence[float], sx: float, sy: float, width: int, height: int) -> Box:
    """Scale a float box by (sx, sy), round outward to whole pixels and clip to ``[0, W] x [0, H]``."""
    x0, y0, x1, y1 = box
    return (
        max(0, min(width, int(math.floor(x0 * sx)))),
        max(0, min(height, int(math.floor(y0 * sy)))),
        max(0, min(width, int(math.ceil(x1 * sx)))),
        max(0, min(height, int(math.ceil(y1 * sy)))),
    )


def shard_paths(directory: Path, split: str, n_rows: int, shard_size: int) -> list[Path]:
    """Hub-style shard names ``data/{split}-00000-of-0000N.parquet`` that ``load_dataset`` maps to splits."""
    n_shards = max(1, math.ceil(n_rows / shard_size))
    return [directory / "data" / f"{split}-{k:05d}-of-{n_shards:05d}.parquet" for k in range(n_shards)]


class ShardWriter:
    """Write rows of one split as hub-style parquet shards carrying the HF ``Features`` metadata.

    Rows arrive through ``add(row)``; every ``shard_size`` rows one shard is written, so memory
    holds at most one shard. ``n_rows`` must be known up front (it names the shards).
    """

    def __init__(self, directory: Path, split: str, features: Features, n_rows: int, shard_size: int = 1000):
        if n_rows <= 0:
            raise DataError(f"split {split!r} needs at least one row, got n_rows={n_rows}")
        self.features = features
        self.schema = features.arrow_schema
        self.paths = shard_paths(Path(directory), split, n_rows, shard_size)
        self.shard_size = shard_size
        self.n_rows = n_rows
        self._buffer: dict[str, list] = {name: [] for name in features}
        self._written = 0
        self._shard = 0
        self.paths[0].parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: Mapping[str, Any]) -> None:
        missing = set(self._buffer) - set(row)
        if missing:
            raise DataError(f"row lacks columns {sorted(missing)}")
        for name, column in self._buffer.items():
            column.append(row[name])
        if len(next(iter(self._buffer.values()))) >= self.shard_size:
            self._flush()

    def add_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def _flush(self) -> None:
        n = len(next(iter(self._buffer.values())))
        if n == 0:
            return
        if self._shard >= len(self.paths):
            raise DataError(f"more rows than announced ({self.n_rows}) for {self.paths[0].name}")
        from datasets import Dataset  # HF's writer handles every feature type (images, Array2D, lists)

        table = Dataset.from_dict(self._buffer, features=self.features).data.table
        table = table.replace_schema_metadata(self.schema.metadata)
        atomic_write(
            self.paths[self._shard], lambda tmp: pq.write_table(table, tmp, row_group_size=PARQUET_ROW_GROUP_SIZE)
        )
        self._written += n
        self._shard += 1
        self._buffer = {name: [] for name in self.features}

    def close(self) -> list[Path]:
        self._flush()
        if self._written != self.n_rows:
            raise DataError(f"wrote {self._written} rows but announced {self.n_rows}")
        return self.paths


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------- dataset folders: commit and check
DATASET_INFO = "vitmech_dataset.json"
"""The completion file of a dataset folder: settings, and the size and SHA-256 of every file (written last)."""
SHARD_PATTERN = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def begin_dataset(root: Path, overwrite: bool) -> WriterLock:
    """Take the folder's writer lock (a second writer gets LockHeldError), then clear an older dataset in it.

    The completion file goes first, so a writer killed from here on leaves a folder every loader refuses
    (`check_dataset_folder`) until `finish_dataset` runs.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(root / LOCK_NAME, what=f"dataset folder {root}", keep_on_error=True).acquire()
    try:
        if any(p.name != LOCK_NAME for p in root.iterdir()):
            if not overwrite:
                raise DataError(f"{root} exists and is not empty; pass overwrite=True to replace its data/ folder")
            (root / DATASET_INFO).unlink(missing_ok=True)
            fsync_dir(root)
            for old in (root / "data").glob("*.parquet"):
                old.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def finish_dataset(root: Path, payload: Mapping[str, Any], lock: WriterLock | None = None) -> Path:
    """Write the completion file (payload + a manifest of every file under `data/` and the other top-level
    files), then release the writer lock. Returns its path."""
    root = Path(root)
    files = [
        p.relative_to(root).as_posix()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != DATASET_INFO and not p.name.startswith(".")
    ]
    extra = {k: v for k, v in payload.items() if k != "kind"}
    path = write_manifest(root, files, kind=str(payload.get("kind", "dataset")), extra=extra, name=DATASET_INFO)
    if lock is not None:
        lock.release()
    return path


def missing_shards(root: Path) -> list[str]:
    """Shard files absent from a `{split}-{k:05d}-of-{n:05d}.parquet` series (paths relative to root)."""
    series: dict[tuple[Path, str], dict[int, set[int]]] = {}
    for path in Path(root).rglob("*.parquet"):
        match = SHARD_PATTERN.match(path.name)
        if match and not path.name.startswith("."):
            key = (path.parent, match["split"])
            series.setdefault(key, {}).setdefault(int(match["count"]), set()).add(int(match["index"]))
    missing = []
    for (parent, split), by_count in sorted(series.items()):
        if len(by_count) > 1:
            raise IncompleteDatasetError(
                f"split {split!r} in {parent} mixes shard series of {sorted(by_count)} files (two writes mixed); "
                "write the dataset again",
                path=parent,
            )
        ((count, found),) = by_count.items()
        for k in range(count):
            if k not in found:
                missing.append((parent / f"{split}-{k:05d}-of-{count:05d}.parquet").relative_to(root).as_posix())
    return missing


def _what_is_missing(root: Path) -> str:
    """'; missing: ...' listing the absent shards and completion file of an unfinished folder ('' if none)."""
    try:
        missing = missing_shards(root)
    except IncompleteDatasetError as exc:
        return f"; {exc}"
    if not (root / DATASET_INFO).is_file():
        missing.append(DATASET_INFO)
    if not missing:
        return ""
    return f"; missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}"


def check_dataset_folder(root: Path) -> None:
    """Refuse a local dataset folder that is partial or damaged, naming what is missing or broken.

    Checks: no writer holds or died holding the folder's lock; the completion file (if the folder has one)
    matches every file's size and SHA-256; every `-of-N` shard series is complete; every parquet footer reads.
    """
    root = Path(root)
    try:
        check_not_being_written(root / LOCK_NAME, f"dataset {root}")
        info = read_json(root / DATASET_INFO, what="dataset completion file") if (root / DATASET_INFO).is_file() else {}
        if isinstance(info, dict) and "files" in info:  # written by finish_dataset (older folders have none)
            verify_manifest(root, what=f"dataset {root}", name=DATASET_INFO)
    except IncompleteWriteError as exc:
        raise IncompleteDatasetError(f"{exc}{_what_is_missing(root)}", path=exc.path) from exc
    except CorruptFileError as exc:
        raise CorruptDatasetError(str(exc), path=exc.path, line=exc.line) from exc
    missing = missing_shards(root)
    if missing:
        raise IncompleteDatasetError(
            f"dataset {root} is partial: {len(missing)} shard file(s) missing: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}. Its writer was interrupted, or files were lost: write it again",
            path=root / missing[0],
        )
    for path in sorted(root.rglob("*.parquet")):
        if not path.name.startswith("."):
            try:
                check_parquet(path)
            except CorruptFileError as exc:
                raise CorruptDatasetError(str(exc), path=path) from exc


def dataset_read_error(source: Any, exc: Exception) -> DataError:
    """A DataError naming the source for an exception from datasets / pyarrow while reading it."""
    if isinstance(exc, (DataError, StorageError)):
        return exc if isinstance(exc, DataError) else CorruptDatasetError(str(exc), path=exc.path)
    return CorruptDatasetError(f"cannot read dataset {source}: {type(exc).__name__}: {exc}", path=str(source))


__all__ = [
    "Box",
    "encode_png",
    "encode_jpeg",
    "decode_image",
    "mask_to_box",
    "scale_box",
    "shard_paths",
    "ShardWriter",
    "write_json",
    "DATASET_INFO",
    "begin_dataset",
    "finish_dataset",
    "check_dataset_folder",
    "missing_shards",
    "dataset_read_error",
]
