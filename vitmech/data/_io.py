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
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
from datasets import Features
from jaxtyping import Bool, UInt8

from vitmech.data._errors import DataError, UnreadableImageError

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
        raise TypeError(f"encode_png wants uint8 or bool, got {array.dtype}")
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
                raise TypeError(f"unsupported image value of type {type(value).__name__}")
            if data is not None:
                image = PIL.Image.open(io.BytesIO(data))
            elif path is not None:
                image = PIL.Image.open(path)
            else:
                raise ValueError("image has neither bytes nor path")
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
        pq.write_table(table, self.paths[self._shard], row_group_size=PARQUET_ROW_GROUP_SIZE)
        self._written += n
        self._shard += 1
        self._buffer = {name: [] for name in self.features}

    def close(self) -> list[Path]:
        self._flush()
        if self._written != self.n_rows:
            raise DataError(f"wrote {self._written} rows but announced {self.n_rows}")
        return self.paths


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


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
]
