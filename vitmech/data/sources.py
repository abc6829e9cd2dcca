"""One place that turns "your images" into images plus labels or targets, for analysis, studies and
fine-tuning alike.

Sources:
  - a folder: every image under it (sorted); when the images sit in class sub-folders
    (root/<class>/<file>), the sub-folder names are the classes and give each image its label;
  - one image file;
  - a .txt file: one image path per line (relative to the file);
  - a .csv / .json file: rows with an image path column (default `path`, or `image`, `file`) and optional
    label / target columns;
  - `hf:NAME[:SPLIT]`: a HuggingFace data set (image column, label or target columns by name).
Unreadable images raise `UnreadableImageError` naming the file.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitmech.data.targets import read_value_rows, require_one_row_per_image
from vitmech.errors import DataError, PathNotFoundError, UnreadableImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PATH_COLUMNS = ("path", "image", "file", "filename", "image_path")


@dataclass
class ImageSource:
    """Images (RGB PIL, full resolution) with optional labels [N] (int) or targets [N] / [N, T] (float)."""

    images: list[Image.Image]
    files: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    class_names: list[str] | None = None
    note: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Sequence[int]) -> ImageSource:
        index = list(index)
        return ImageSource(
            [self.images[i] for i in index],
            [self.files[i] for i in index] if self.files else [],
            None if self.labels is None else self.labels[index],
            None if self.targets is None else self.targets[index],
            self.class_names,
            self.note,
        )


def read_image(path: str | Path) -> Image.Image:
    """An RGB PIL image from a file (`vitmech.preprocessing.read_image`: 16-bit and float images scaled to
    8 bits by their own range). Raises UnreadableImageError naming the file."""
    from vitmech.preprocessing import read_image as read

    return read(path)


def image_files(path: str | Path) -> list[Path]:
    """Image files under a folder (sorted), or the file itself."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PathNotFoundError(f"no image file or folder at {path}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PathNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    return files


def _read_all(files: Sequence[Path], skip_unreadable: bool) -> tuple[list[Image.Image], list[int]]:
    images, kept = [], []
    for index, file in enumerate(files):
        try:
            images.append(read_image(file))
            kept.append(index)
        except UnreadableImageError:
            if not skip_unreadable:
                raise
            logger.warning("skipped unreadable image %s", file)
    if not images:
        raise DataError(f"none of the {len(files)} image files could be read")
    return images, kept


def _table_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data if isinstance(data, list) else data.get("rows", data.get("images"))
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a list of rows (or {{'rows': [...]}})")
        return [r if isinstance(r, dict) else {"path": r} for r in rows]
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, Any]], name: str, path: Path) -> list[Any]:
    missing = [i for i, r in enumerate(rows) if name not in r]
    if missing:
        columns = sorted(rows[0]) if rows else []
        raise DataError(f"{path}: no column {name!r} (columns: {', '.join(map(str, columns))})")
    return [r[name] for r in rows]


def _labels_from(values: list[Any], where: str) -> tuple[np.ndarray, list[str] | None]:
    """Whole numbers stay class indices; anything else is a class name, sorted into indices."""
    try:
        numbers = np.asarray([float(v) for v in values])
        if np.all(numbers == np.round(numbers)) and np.all(numbers >= 0):
            return numbers.astype(np.int64), None
        raise DataError(f"{where}: class labels must be whole numbers >= 0 or class names")
    except (TypeError, ValueError):
        names = sorted({str(v) for v in values})
        return np.asarray([names.index(str(v)) for v in values], dtype=np.int64), names


def _targets_from(rows: list[dict[str, Any]], columns: list[str], path: Path) -> np.ndarray:
    try:
        values = np.asarray([[float(v) for v in vals] for vals in zip(*[_column(rows, c, path) for c in columns])])
    except ValueError as err:
        raise DataError(f"{path}: targets {columns} must be numbers ({err})") from err
    return values[:, 0] if values.shape[1] == 1 else values


def read_value_file(path: str | Path) -> np.ndarray:
    """Numbers from .npy, or .csv / .txt without a header (one row per image); a cell that is not a number
    is named by file, line and column (`vitmech.data.targets.read_value_rows`)."""
    return read_value_rows(path)


def load_image_source(
    source: str | Path,
    limit: int | None = None,
    labels: str | None = None,
    targets: str | None = None,
    image_column: str | None = None,
    split: str = "train",
    skip_unreadable: bool = False,
) -> ImageSource:
    """Read images (and labels or targets) from `source`; see the module docstring for the forms.

    `labels` / `targets`: a column name of a CSV/JSON/HF source (targets: comma-separated names), or a
    .npy/.csv/.txt file with one row per image in source order. At most `limit` images are read.
    """
    text = str(source)
    if text.startswith("hf:"):
        return _load_hf(text[3:], limit, labels, targets, image_column or "image", split)
    path = Path(text).expanduser()
    if not path.exists():
        raise PathNotFoundError(f"no image folder, file or list at {path}")
    class_names = None
    n_listed: int | None = None  # images in the source before `limit` (a value file must have one row each)
    label_values: np.ndarray | None = None
    target_values: np.ndarray | None = None
    column_source = False
    if path.is_file() and path.suffix.lower() in (".csv", ".json"):
        rows = _table_rows(path)[:limit]
        column = image_column if image_column and image_column != "image" else None
        column = column or next((c for c in PATH_COLUMNS if rows and c in rows[0]), None)
        if column is None:
            raise DataError(f"{path}: no image path column (tried {', '.join(PATH_COLUMNS)}); pass --image-column")
        files = [(path.parent / str(p)).expanduser() for p in _column(rows, column, path)]
        if labels and not Path(labels).suffix:
            label_values, class_names = _labels_from(_column(rows, labels, path), str(path))
            column_source = True
        if targets and not Path(targets).suffix:
            target_values = _targets_from(rows, [c.strip() for c in targets.split(",")], path)
            column_source = True
        note = f"{len(files)} images listed in {path}"
    elif path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        n_listed = len(lines)
        files = [(path.parent / line).expanduser() for line in lines][:limit]
        note = f"{len(files)} images listed in {path}"
    else:
        every_file = image_files(path)
        n_listed = len(every_file)
        files = every_file[:limit]
        note = f"{len(files)} images from {path}"
        if path.is_dir():
            parents = {f.parent for f in files}
            if all(p.parent == path for p in parents) and len(parents) > 1:
                class_names = sorted(p.name for p in parents)
                label_values = np.asarray([class_names.index(f.parent.name) for f in files], dtype=np.int64)
                note += f" in {len(class_names)} class folders"
    images, kept = _read_all(files, skip_unreadable)
    if not column_source:
        if labels:
            label_values, class_names = _labels_from(
                list(_aligned(read_value_file(labels), files, labels, n_listed)), labels
            )
        if targets:
            target_values = _aligned(read_value_file(targets), files, targets, n_listed).astype(np.float32)
    result = ImageSource(images, [str(f) for f in files], label_values, target_values, class_names, note)
    if len(kept) < len(files):
        result = ImageSource(
            images,
            [str(files[i]) for i in kept],
            None if label_values is None else label_values[kept],
            None if target_values is None else target_values[kept],
            class_names,
            note.replace(f"{len(files)} images", f"{len(kept)} images", 1)
            + f" ({len(files) - len(kept)} unreadable files skipped, named in the log)",
        )
    if result.targets is not None:
        result.targets = result.targets.astype(np.float32)
    return result


def _aligned(values: np.ndarray, files: Sequence[Path], where: str, n_listed: int | None = None) -> np.ndarray:
    """The rows of `files` (the first `len(files)` of the source's `n_listed` images) from a value file that
    must hold exactly one row per image of the source: more rows are refused as well as fewer."""
    require_one_row_per_image(values, n_listed if n_listed is not None else len(files), where, "the source's order")
    return values[: len(files)]


def _load_hf(
    spec: str, limit: int | None, labels: str | None, targets: str | None, image_column: str, split: str
) -> ImageSource:
    import datasets

    name, _, inline_split = spec.partition(":")
    split = inline_split or split
    if limit:
        split = f"{split}[:{limit}]"
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types for a missing/unreachable set
        raise DataError(f"cannot load the HuggingFace data set {name!r} (split {split!r}): {err}") from err
    if image_column not in data.column_names:
        raise DataError(f"{name}: no image column {image_column!r} (columns: {', '.join(data.column_names)})")
    from vitmech.preprocessing import to_rgb8

    images = [
        to_rgb8(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))) for im in data[image_column]
    ]
    label_values, class_names, target_values = None, None, None
    if labels:
        if labels not in data.column_names:
            raise DataError(f"{name}: no label column {labels!r} (columns: {', '.join(data.column_names)})")
        feature = data.features[labels]
        label_values, class_names = _labels_from(list(data[labels]), name)
        if hasattr(feature, "names"):
            class_names = list(feature.names)
    if targets:
        columns = [c.strip() for c in targets.split(",")]
        target_values = np.asarray([data[c] for c in columns], dtype=np.float32).T
        target_values = target_values[:, 0] if target_values.shape[1] == 1 else target_values
    return ImageSource(
        images, [], label_values, target_values, class_names, f"{len(images)} images from {name} ({split})"
    )
