"""Per-image labels or regression targets from a file, checked against the images and the model's head.

    y = read_targets("y.csv", n_images=len(files), rows=kept, kind="labels", n_classes=model.cfg.n_classes)

The file holds one row per image file (in the images' sorted file order): `.npy`, or `.csv` / `.txt`
of numbers without a header. Every mismatch is an error naming the file: a row count that differs
from the number of image files (more rows as well as fewer), a cell that is not a number (line and
column), NaN or inf, and labels that are not whole numbers or lie outside the head's classes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vitmech.errors import DataError, PathNotFoundError, SchemaError
from vitmech.io.errors import CorruptFileError

TargetKind = Literal["auto", "labels", "values"]


class TargetsFileError(DataError, CorruptFileError):
    """A targets/labels file that cannot be used as given (the file, and line where it applies, are named)."""


def _read_text(file: Path) -> np.ndarray:
    delimiter = "," if file.suffix == ".csv" else None
    rows: list[list[float]] = []
    try:
        text = file.read_text()
    except UnicodeDecodeError as exc:
        raise TargetsFileError(
            f"{file} is not a text file of numbers (byte {exc.start} is not UTF-8): a damaged file, or a "
            "binary format with a text suffix",
            path=file,
        ) from None
    with io.StringIO(text, newline="") as f:
        lines = csv.reader(f, delimiter=delimiter) if delimiter else (line.split() for line in f)
        for number, cells in enumerate(lines, start=1):
            if not cells or all(not c.strip() for c in cells):
                continue
            values = []
            for column, cell in enumerate(cells, start=1):
                try:
                    values.append(float(cell))
                except ValueError:
                    raise TargetsFileError(
                        f"{file} line {number}, column {column}: {cell.strip()[:40]!r} is not a number "
                        "(targets files hold numbers only, one row per image file, no header)",
                        path=file,
                        line=number,
                    ) from None
            if rows and len(values) != len(rows[0]):
                raise TargetsFileError(
                    f"{file} line {number} has {len(values)} values, the lines before it {len(rows[0])}",
                    path=file,
                    line=number,
                )
            rows.append(values)
    if not rows:
        raise TargetsFileError(f"{file} holds no rows", path=file)
    return np.asarray(rows, dtype=np.float64)


def read_value_rows(path: str | Path) -> np.ndarray:
    """The numbers of a .npy / .csv / .txt targets file, [N] or [N, T]."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PathNotFoundError(f"no labels/targets file at {file}")
    if file.suffix == ".npy":
        try:
            values = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise TargetsFileError(f"{file} is not a readable .npy file: {exc}", path=file) from exc
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise TargetsFileError(f"{file} holds {values.dtype} values, not numbers", path=file)
    else:
        values = _read_text(file)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim not in (1, 2):
        raise SchemaError(f"{file}: targets must be [N] or [N, T], got shape {list(values.shape)}")
    return values


def require_one_row_per_image(values: np.ndarray, n_images: int, where: str | Path, order: str) -> None:
    """Refuse a value file without exactly one row per image file (more rows as well as fewer); `order`
    names the order the rows must follow, for the message."""
    if values.shape[0] != n_images:
        more = "more" if values.shape[0] > n_images else "fewer"
        raise TargetsFileError(
            f"{where} has {values.shape[0]} rows for {n_images} image files ({more} rows than images); it must "
            f"hold exactly one row per image file, in {order}",
            path=where,
        )


def read_targets(
    path: str | Path,
    n_images: int,
    rows: Sequence[int] | None = None,
    kind: TargetKind = "auto",
    n_classes: int | None = None,
) -> torch.Tensor:
    """Targets for `n_images` image files (then the `rows` kept of them), checked both ways.

    kind "labels": class indices (int64, each in [0, n_classes) when n_classes is given); "values":
    regression targets (float32); "auto": whole numbers in one column are labels, anything else values.
    """
    file = Path(path).expanduser()
    values = read_value_rows(file)
    require_one_row_per_image(values, n_images, file, "sorted file order")
    if rows is not None:
        values = values[np.asarray(list(rows), dtype=np.int64)]
    bad = ~np.isfinite(values.astype(np.float64))
    if bad.any():
        where = np.argwhere(bad.reshape(values.shape[0], -1))[:, 0]
        raise TargetsFileError(f"{file}: NaN or inf at rows {sorted(set(where.tolist()))[:10]}", path=file)
    whole = values.ndim == 1 and bool(np.all(values == np.round(values)))
    if kind == "labels" or (kind == "auto" and whole):
        if not whole:
            raise TargetsFileError(f"{file}: class labels must be one whole number per image", path=file)
        labels = values.astype(np.int64)
        if n_classes is not None:
            outside = np.flatnonzero((labels < 0) | (labels >= n_classes))
            if len(outside):
                raise TargetsFileError(
                    f"{file}: labels {sorted(set(labels[outside].tolist()))[:10]} (at rows {outside[:10].tolist()}) "
                    f"are outside the model's {n_classes} classes (valid 0..{n_classes - 1})",
                    path=file,
                )
        return torch.as_tensor(labels)
    if kind not in ("auto", "values", "labels"):
        raise DataError(f"kind must be 'auto', 'labels' or 'values', got {kind!r}")
    return torch.as_tensor(values, dtype=torch.float32)


def check_targets_fit(targets: torch.Tensor, n_images: int, n_outputs: int | None, where: str = "targets") -> None:
    """DataError unless `targets` has one row per image and, for labels, every class index is within the head."""
    if targets.shape[0] != n_images:
        raise DataError(f"{where}: {targets.shape[0]} rows for {n_images} images; give exactly one per image")
    if not targets.is_floating_point() and n_outputs is not None:
        outside = ((targets < 0) | (targets >= n_outputs)).nonzero().flatten()
        if len(outside):
            raise DataError(
                f"{where}: labels {sorted({int(targets[i]) for i in outside})[:10]} are outside the model's "
                f"{n_outputs} classes (valid 0..{n_outputs - 1})"
            )
    elif targets.is_floating_point() and not math.isfinite(float(targets.double().abs().sum())):
        raise DataError(f"{where}: NaN or inf targets")


__all__ = ["TargetsFileError", "check_targets_fit", "read_targets", "read_value_rows"]
