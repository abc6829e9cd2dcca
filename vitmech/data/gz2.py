"""Galaxy Zoo 2 through HuggingFace ``datasets``: schema, loader, seeded splits, and a fixture maker.

The hub dataset ``mwalmsley/gz2`` (configs ``default``, ``tiny``; splits ``train``, ``test``) holds
``image`` (424 x 424 JPEG), ``id_str``, ``ra``, ``dec``, per-answer vote counts and ``*_fraction``
columns, and ``summary``, a string class ('' when unassigned). ``load_gz2`` reads it (or any local
directory / parquet file with the same schema), keeps the six classes in its author's
order, drops ``smooth_inbetween`` and '', and makes seeded train/val/test splits the way the Galaxy Zoo
fine-tuning study (docs/attention.md#the-galaxy-zoo-fine-tuning-table-and-the-scripts) did: request N rows, filter, report how many survive, carve validation out of the
surviving training rows. Images stay encoded in the arrow files; decoding and the model's
preprocessing run lazily, per batch, through ``Dataset.with_transform``.

Only ``image`` and ``summary`` are required; the vote columns follow the galaxy-datasets gz2 catalogue
names (``smooth-or-featured-gz2_smooth``, ``..._fraction``, ``..._total-votes``) and are carried along.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as HFImage
from jaxtyping import Int
from tqdm.auto import tqdm

from vitmech.data._io import (
    ShardWriter,
    begin_dataset,
    check_dataset_folder,
    dataset_read_error,
    decode_image,
    encode_jpeg,
    encode_png,
    finish_dataset,
)
from vitmech.data._splits import check_unique, hash_rank, n_from_fraction
from vitmech.data._transforms import LazyImageTransform, Preprocess
from vitmech.errors import (
    DataError,
    EmptySplitError,
    InsufficientDataError,
    SchemaError,
    UnknownLabelError,
    UnknownNameError,
    UnreadableImageError,
)
from vitmech.io.readers import check_parquet

logger = logging.getLogger(__name__)

GZ2_HUB_ID = "mwalmsley/gz2"
GZ2_CONFIGS = ("default", "tiny")

GZ2_CLASSES: tuple[str, ...] = (
    "smooth_round",
    "smooth_cigar",
    "unbarred_spiral",
    "edge_on_disk",
    "barred_spiral",
    "featured_without_bar_or_spiral",
)
"""The six classes in the order of the dataset's author (label i = GZ2_CLASSES[i])."""

GZ2_EXCLUDED: tuple[str, ...] = ("", "smooth_inbetween")
"""Summary values dropped by the loader ('' = unassigned)."""

GZ2_CLASS_PRIORS: dict[str, float] = {
    "smooth_round": 0.4605,
    "smooth_cigar": 0.1661,
    "unbarred_spiral": 0.2207,
    "edge_on_disk": 0.0392,
    "barred_spiral": 0.0772,
    "featured_without_bar_or_spiral": 0.0363,
}
"""Class shares in the full catalogue after filtering (Willett et al. 2013, MNRAS 435, 2835)."""

GZ2_QUESTIONS: dict[str, tuple[str, ...]] = {
    "smooth-or-featured-gz2": ("smooth", "featured-or-disk", "artifact"),
    "disk-edge-on-gz2": ("yes", "no"),
    "has-spiral-arms-gz2": ("yes", "no"),
    "bar-gz2": ("yes", "no"),
    "bulge-size-gz2": ("dominant", "obvious", "just-noticeable", "no"),
    "something-odd-gz2": ("yes", "no"),
    "how-rounded-gz2": ("round", "in-between", "cigar"),
    "bulge-shape-gz2": ("round", "boxy", "no-bulge"),
    "spiral-winding-gz2": ("tight", "medium", "loose"),
    "spiral-arm-count-gz2": ("1", "2", "3", "4", "more-than-4", "cant-tell"),
}
"""Decision-tree questions and answers of the gz2 catalogue (galaxy-datasets naming)."""

GZ2_REQUIRED_COLUMNS: tuple[str, ...] = ("image", "summary")

PathLike: TypeAlias = str | os.PathLike
Source: TypeAlias = PathLike | Sequence[PathLike] | Mapping[str, Any] | Dataset | DatasetDict


# ----------------------------------------------------------------------------------------- schema


def gz2_vote_columns() -> list[str]:
    """Names of the vote columns: per answer ``{q}_{a}`` (count) and ``{q}_{a}_fraction``, per
    question ``{q}_total-votes``."""
    names = []
    for question, answers in GZ2_QUESTIONS.items():
        names += [f"{question}_{answer}" for answer in answers]
        names.append(f"{question}_total-votes")
        names += [f"{question}_{answer}_fraction" for answer in answers]
    return names


def gz2_features(extra: Mapping[str, Any] | None = None) -> Features:
    """HF ``Features`` of the gz2 schema (+ ``extra`` columns, e.g. masks of synthetic galaxies)."""
    spec: dict[str, Any] = {
        "image": HFImage(),
        "id_str": Value("string"),
        "ra": Value("float64"),
        "dec": Value("float64"),
    }
    for name in gz2_vote_columns():
        spec[name] = Value("float32") if name.endswith("_fraction") else Value("int32")
    spec["summary"] = Value("string")
    if extra:
        spec.update(extra)
    return Features(spec)


def gz2_votes_for(summary: str, rng: np.random.Generator) -> dict[str, Any]:
    """Plausible vote counts and fractions for a galaxy of class ``summary`` (for fixtures and
    synthetic datasets; the decision tree is followed loosely: the leading answers match the class)."""
    lead = {  # answer that wins each question for this summary (None: question not reached)
        "smooth_round": {"smooth-or-featured-gz2": "smooth", "how-rounded-gz2": "round"},
        "smooth_inbetween": {"smooth-or-featured-gz2": "smooth", "how-rounded-gz2": "in-between"},
        "smooth_cigar": {"smooth-or-featured-gz2": "smooth", "how-rounded-gz2": "cigar"},
        "edge_on_disk": {
            "smooth-or-featured-gz2": "featured-or-disk",
            "disk-edge-on-gz2": "yes",
            "bulge-shape-gz2": "round",
        },
        "unbarred_spiral": {
            "smooth-or-featured-gz2": "featured-or-disk",
            "disk-edge-on-gz2": "no",
            "has-spiral-arms-gz2": "yes",
            "bar-gz2": "no",
            "bulge-size-gz2": "just-noticeable",
            "spiral-winding-gz2": "medium",
            "spiral-arm-count-gz2": "2",
        },
        "barred_spiral": {
            "smooth-or-featured-gz2": "featured-or-disk",
            "disk-edge-on-gz2": "no",
            "has-spiral-arms-gz2": "yes",
            "bar-gz2": "yes",
            "bulge-size-gz2": "obvious",
            "spiral-winding-gz2": "medium",
            "spiral-arm-count-gz2": "2",
        },
        "featured_without_bar_or_spiral": {
            "smooth-or-featured-gz2": "featured-or-disk",
            "disk-edge-on-gz2": "no",
            "has-spiral-arms-gz2": "no",
            "bar-gz2": "no",
            "bulge-size-gz2": "obvious",
        },
    }.get(summary, {})
    total = int(rng.integers(20, 61))
    row: dict[str, Any] = {}
    for question, answers in GZ2_QUESTIONS.items():
        weights = rng.uniform(0.0, 1.0, len(answers))
        winner = lead.get(question)
        if winner is not None:
            weights[answers.index(winner)] += 4.0 * len(answers)
        elif question == "smooth-or-featured-gz2":  # unassigned: a near tie
            weights[:2] += 3.0
        asked = (
            total
            if (winner is not None or question in ("smooth-or-featured-gz2", "something-odd-gz2"))
            else int(rng.integers(0, 4))
        )
        fractions = weights / weights.sum()
        counts = np.floor(fractions * asked).astype(int)
        counts[int(np.argmax(fractions))] += asked - counts.sum()
        for answer, count in zip(answers, counts):
            row[f"{question}_{answer}"] = int(count)
            row[f"{question}_{answer}_fraction"] = float(count / asked) if asked else 0.0
        row[f"{question}_total-votes"] = int(asked)
    return row


def check_gz2_schema(ds: Dataset, required: Sequence[str] = GZ2_REQUIRED_COLUMNS, where: str = "") -> None:
    """Raise ``SchemaError`` if ``ds`` lacks a required column or a column has the wrong type."""
    missing = [name for name in required if name not in ds.column_names]
    if missing:
        raise SchemaError(
            f"gz2 source{(' ' + where) if where else ''} lacks required column(s) {missing}; "
            f"it has {sorted(ds.column_names)[:20]}{' ...' if len(ds.column_names) > 20 else ''}"
        )
    features = ds.features
    if "image" in required and not isinstance(features["image"], HFImage):
        raise SchemaError(f"column 'image' must be an HF Image feature, got {features['image']!r}")
    if "summary" in required:
        feature = features["summary"]
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise SchemaError(f"column 'summary' must hold class-name strings, got {feature!r}")


# ----------------------------------------------------------------------------------------- sources


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1 or source.endswith(".parquet")


def open_gz2(source: Source = GZ2_HUB_ID, *, config: str = "default", cache_dir: PathLike | None = None) -> DatasetDict:
    """Open a gz2-schema source as a ``DatasetDict`` (a single-split source becomes ``{"train": ...}``).

    ``source``: the hub id (default ``mwalmsley/gz2``, ``config`` 'default' or 'tiny'); a local
    directory (hub-style parquet layout ``data/{split}-*.parquet`` or a ``config`` sub-folder, or a
    ``save_to_disk`` folder); a parquet file, a list of them, or a ``{split: files}`` mapping; or a
    ``Dataset``/``DatasetDict`` already in memory. Parquet is read through ``load_dataset``, which
    memory-maps arrow files in ``cache_dir`` (images stay encoded).
    """
    if isinstance(source, DatasetDict):
        return source
    if isinstance(source, Dataset):
        return DatasetDict({"train": source})
    kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
    if isinstance(source, Mapping):
        return datasets.load_dataset("parquet", data_files={k: _str_files(v) for k, v in source.items()}, **kwargs)
    if isinstance(source, (list, tuple)):
        return datasets.load_dataset("parquet", data_files=_str_files(source), **kwargs)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"cannot open a gz2 source of type {type(source).__name__}; see open_gz2's docstring")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        try:
            return _open_local(path, config, kwargs)
        except Exception as exc:  # pyarrow / datasets raise many types: name the source
            raise dataset_read_error(path, exc) from exc
    if _looks_like_path(text):
        raise DataError(f"gz2 source {text!r} does not exist (and is not a hub id like {GZ2_HUB_ID!r})")
    try:
        return datasets.load_dataset(text, name=config, **kwargs)
    except Exception as exc:  # offline, missing, gated: make the way out plain
        raise DataError(
            f"could not load {text!r} (config {config!r}) from the HuggingFace hub: {exc}. "
            "Without hub access pass a local directory or parquet file with the gz2 schema."
        ) from exc


def _open_local(path: Path, config: str, kwargs: dict[str, Any]) -> DatasetDict:
    """A local file or folder, after refusing a partial or damaged one (`check_dataset_folder`)."""
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{path} is a file but not a .parquet file")
        check_parquet(path)
        return datasets.load_dataset("parquet", data_files=str(path), **kwargs)
    check_dataset_folder(path)
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    if (path / "state.json").exists():
        return DatasetDict({"train": datasets.load_from_disk(str(path))})
    if (path / config).is_dir():
        return datasets.load_dataset(str(path), data_dir=config, **kwargs)
    if not any(path.rglob("*.parquet")) and not any(path.rglob("*.arrow")):
        raise DataError(f"{path} holds no parquet/arrow files and is not a save_to_disk folder")
    return datasets.load_dataset(str(path), **kwargs)


def _str_files(files: Any) -> Any:
    if isinstance(files, (str, os.PathLike)):
        return os.fspath(files)
    return [os.fspath(f) for f in files]


# ----------------------------------------------------------------------------------------- labels


def _column(ds: Dataset, name: str) -> list:
    return ds.with_format("arrow")[name].to_pylist() if len(ds) else []


def gz2_labels(
    summaries: Sequence[str],
    *,
    classes: Sequence[str] = GZ2_CLASSES,
    excluded: Sequence[str] = GZ2_EXCLUDED,
    on_unknown: Literal["error", "drop"] = "error",
) -> tuple[Int[np.ndarray, " K"], Int[np.ndarray, " K"], dict[str, int]]:
    """Filter and map summaries. Returns (kept row positions, their labels = index in ``classes``,
    counts of every summary value seen). Values in neither ``classes`` nor ``excluded`` raise
    ``UnknownLabelError`` (``on_unknown='error'``) or are dropped with a warning (``'drop'``).
    ``None`` counts as ''."""
    index = {name: i for i, name in enumerate(classes)}
    excluded_set = set(excluded)
    counts = Counter("" if s is None else s for s in summaries)
    unknown = {value: n for value, n in counts.items() if value not in index and value not in excluded_set}
    if unknown:
        message = f"unknown gz2 summary value(s) {dict(sorted(unknown.items()))}; known classes {list(classes)}, excluded {list(excluded)}"
        if on_unknown == "error":
            raise UnknownLabelError(message)
        if on_unknown != "drop":
            raise DataError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
        logger.warning("dropping rows: %s", message)
    keep, labels = [], []
    for position, summary in enumerate(summaries):
        label = index.get("" if summary is None else summary)
        if label is not None:
            keep.append(position)
            labels.append(label)
    return np.asarray(keep, dtype=np.int64), np.asarray(labels, dtype=np.int64), dict(counts)


class SummaryToLabel:
    """Batch target function: ``summary`` strings -> ``{"label": [class index, ...]}``."""

    def __init__(self, classes: Sequence[str] = GZ2_CLASSES, column: str = "summary"):
        self.index = {name: i for i, name in enumerate(classes)}
        self.column = column

    def __call__(self, batch: Mapping[str, list]) -> dict[str, Any]:
        try:
            return {"label": [self.index[s] for s in batch[self.column]]}
        except KeyError as exc:
            raise UnknownLabelError(f"summary {exc.args[0]!r} is not one of {list(self.index)}") from exc


# ----------------------------------------------------------------------------------------- images


def find_unreadable_images(
    ds: Dataset,
    *,
    image_column: str = "image",
    id_column: str | None = "id_str",
    batch_size: int = 64,
    progress: bool = True,
) -> list[int]:
    """Row positions whose image cannot be decoded (each image is decoded once and discarded)."""
    if len(ds) == 0:
        return []
    columns = [image_column] + ([id_column] if id_column and id_column in ds.column_names else [])
    raw = ds.select_columns(columns).cast_column(image_column, HFImage(decode=False))
    bad = []
    bar = tqdm(total=len(raw), desc="checking images", unit="img", disable=not progress, leave=False)
    for start in range(0, len(raw), batch_size):
        batch = raw[start : start + batch_size]
        for offset, value in enumerate(batch[image_column]):
            try:
                decode_image(value)
            except UnreadableImageError as exc:
                bad.append(start + offset)
                logger.debug("unreadable image at row %d: %s", start + offset, exc)
        bar.update(len(batch[image_column]))
    bar.close()
    return bad


# ----------------------------------------------------------------------------------------- splits


@dataclass
class GZ2Report:
    """What the loader asked for and what survived. Counts are rows."""

    requested: dict[str, int | None]
    available: dict[str, int]
    taken: dict[str, int]
    summary_counts: dict[str, dict[str, int]]
    survived: dict[str, int]
    unreadable: dict[str, list[str]]
    split_sizes: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    seed: int
    val_fraction: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def __str__(self) -> str:
        parts = [
            f"{pool}: requested {self.requested.get(pool)}, took {self.taken[pool]}, {self.survived[pool]} survived"
            f" ({self.survived[pool] / max(1, self.taken[pool]):.1%})"
            for pool in self.taken
        ]
        sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        return "; ".join(parts) + f" -> {sizes}"


@dataclass
class GZ2Splits:
    """Seeded train/val/test splits. Each split is a ``datasets.Dataset`` whose items are
    ``{"pixel_values": Tensor[C, H, W], "label": Tensor[]}`` with a preprocess callable, or
    ``{"image": PIL.Image, "label": int}`` without; ``labels[name]`` holds each split's labels."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    labels: dict[str, Int[np.ndarray, " N"]]
    ids: dict[str, list[str]]
    classes: tuple[str, ...]
    report: GZ2Report
    raw: dict[str, Dataset] = field(repr=False, default_factory=dict)

    def __getitem__(self, name: str) -> Dataset:
        split = {"train": self.train, "val": self.val, "validation": self.val, "test": self.test}[name]
        if split is None:
            raise UnknownNameError(f"no {name!r} split (val_fraction was 0)")
        return split

    def items(self) -> Iterator[tuple[str, Dataset]]:
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is not None:
                yield name, split


def load_gz2(
    source: Source = GZ2_HUB_ID,
    *,
    preprocess: Preprocess | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
    config: str = "default",
    classes: Sequence[str] = GZ2_CLASSES,
    on_bad_image: Literal["error", "skip"] = "error",
    verify_images: bool = False,
    on_unknown_label: Literal["error", "drop"] = "error",
    id_column: str = "id_str",
    cache_dir: PathLike | None = None,
    progress: bool = True,
) -> GZ2Splits:
    """Load Galaxy Zoo 2 (or a local copy / synthetic set with its schema) as seeded splits.

    Like the Galaxy Zoo study: take ``n_train`` rows of the source's ``train`` split and ``n_test`` of
    its ``test`` split (a seeded sample; ``None`` = all rows; a source with one split gives both from
    disjoint parts of it), drop '' and ``smooth_inbetween`` summaries, map the six classes in
    ``GZ2_CLASSES`` order, then move ``val_fraction`` of the surviving training rows to validation.
    ``report`` says how many rows were requested, taken and survived.

    Images are decoded lazily: ``preprocess`` (e.g. ``model.preprocess``: list of PIL images ->
    ``Float[Tensor, "B C H W"]``) runs per batch through ``with_transform``. Without it, items hold
    PIL images. Unreadable images: ``on_bad_image='error'`` raises ``UnreadableImageError`` (when the
    batch is read, or up front with ``verify_images=True``); ``'skip'`` decodes every kept image once
    up front, drops the bad ones and lists their ids in ``report.unreadable``.

    Errors: ``SchemaError`` (missing columns), ``UnknownLabelError`` (summary outside the known and
    excluded values), ``InsufficientDataError`` (more rows requested than the split has),
    ``EmptySplitError`` (a split with no rows after filtering).
    """
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    dd = open_gz2(source, config=config, cache_dir=cache_dir)
    if len(dd) == 0:
        raise EmptySplitError(f"gz2 source {source!r} has no splits")
    train_name = "train" if "train" in dd else next(iter(dd))
    test_name = "test" if (train_name == "train" and "test" in dd) else None
    for name in {train_name, test_name} - {None}:
        check_gz2_schema(dd[name], where=f"(split {name!r})")

    # 1. seeded sample of the requested sizes (hash order of ids: stable, order-free)
    pools: dict[str, Dataset] = {}
    available: dict[str, int] = {}
    taken_positions: dict[str, np.ndarray] = {}
    base = dd[train_name]
    base_ids = _column(base, id_column) if id_column in base.column_names else list(range(len(base)))
    check_unique(base_ids, f"split {train_name!r}")
    order = hash_rank(base_ids, seed, "pool")
    if test_name is not None:
        available = {"train": len(base), "test": len(dd[test_name])}
        taken_positions["train"] = order[: _check_n(n_train, len(base), "n_train", train_name)]
        test_ds = dd[test_name]
        test_ids = _column(test_ds, id_column) if id_column in test_ds.column_names else list(range(len(test_ds)))
        check_unique(test_ids, f"split {test_name!r}")
        test_order = hash_rank(test_ids, seed, "pool")
        taken_positions["test"] = test_order[: _check_n(n_test, len(test_ds), "n_test", test_name)]
        pools = {"train": base, "test": test_ds}
    else:  # one split: train and test from disjoint stretches of the same seeded order
        available = {"train": len(base), "test": len(base)}
        if n_train is None and n_test is None:
            raise DataError(
                f"source has a single split {train_name!r}: give n_train and/or n_test so test rows can be set apart"
            )
        n_te = n_test if n_test is not None else 0
        n_tr = n_train if n_train is not None else len(base) - n_te
        _check_n(n_tr + n_te, len(base), "n_train + n_test", train_name)
        taken_positions["train"] = order[:n_tr]
        taken_positions["test"] = order[n_tr : n_tr + n_te]
        pools = {"train": base, "test": base}

    # 2. filter summaries, map classes
    kept: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    summary_counts: dict[str, dict[str, int]] = {}
    for pool_name, positions in taken_positions.items():
        positions = np.sort(positions)  # ascending row order reads the arrow file sequentially
        subset = pools[pool_name].select(positions, keep_in_memory=True)
        keep, lab, counts = gz2_labels(_column(subset, "summary"), classes=classes, on_unknown=on_unknown_label)
        kept[pool_name] = positions[keep]
        labels[pool_name] = lab
        summary_counts[pool_name] = counts
    survived = {name: int(len(v)) for name, v in kept.items()}

    # 3. unreadable images
    unreadable: dict[str, list[str]] = {"train": [], "test": []}
    if on_bad_image == "skip" or verify_images:
        for pool_name in kept:
            subset = pools[pool_name].select(kept[pool_name], keep_in_memory=True)
            bad = find_unreadable_images(subset, id_column=id_column, progress=progress)
            if not bad:
                continue
            pool_ids = _column(subset, id_column) if id_column in subset.column_names else kept[pool_name].tolist()
            bad_ids = [str(pool_ids[i]) for i in bad]
            if on_bad_image == "error":
                raise UnreadableImageError(
                    f"{len(bad)} unreadable image(s) in the {pool_name} rows ({id_column}: {bad_ids[:10]}"
                    f"{' ...' if len(bad) > 10 else ''}); pass on_bad_image='skip' to drop and count them"
                )
            logger.warning("skipping %d unreadable image(s) in %s: %s", len(bad), pool_name, bad_ids[:10])
            good = np.setdiff1d(np.arange(len(subset)), bad)
            kept[pool_name] = kept[pool_name][good]
            labels[pool_name] = labels[pool_name][good]
            unreadable[pool_name] = bad_ids

    # 4. validation out of the surviving training rows
    train_ds_full = pools["train"]
    train_rows = kept["train"]
    n_val = n_from_fraction(len(train_rows), val_fraction)
    val_order = hash_rank([base_ids[i] for i in train_rows], seed, "val")
    is_val = np.zeros(len(train_rows), dtype=bool)
    is_val[val_order[:n_val]] = True
    rows = {"train": train_rows[~is_val], "val": train_rows[is_val], "test": kept["test"]}
    split_labels = {"train": labels["train"][~is_val], "val": labels["train"][is_val], "test": labels["test"]}
    sources = {"train": train_ds_full, "val": train_ds_full, "test": pools["test"]}
    wanted = ["train", "test"] + (["val"] if val_fraction > 0 else [])
    for name in wanted:
        if len(rows[name]) == 0:
            raise EmptySplitError(
                f"split {name!r} is empty after filtering (requested n_train={n_train}, n_test={n_test}, "
                f"val_fraction={val_fraction}; survived {survived}, unreadable "
                f"{ {k: len(v) for k, v in unreadable.items()} }); ask for more rows"
            )

    transform = LazyImageTransform(
        preprocess,
        SummaryToLabel(classes),
        image_column="image",
        id_column=id_column if id_column in base.column_names else None,
    )
    columns = ["image", "summary"] + ([id_column] if id_column in base.column_names else [])
    out: dict[str, Dataset | None] = {}
    raw: dict[str, Dataset] = {}
    ids: dict[str, list[str]] = {}
    for name in ("train", "val", "test"):
        if name == "val" and val_fraction <= 0:
            out[name] = None
            continue
        selected = sources[name].select(rows[name], keep_in_memory=True)
        raw[name] = selected
        ids[name] = [
            str(i)
            for i in (_column(selected, id_column) if id_column in selected.column_names else rows[name].tolist())
        ]
        lazy = selected.cast_column("image", HFImage(decode=False))
        out[name] = lazy.with_transform(transform, columns=columns)

    report = GZ2Report(
        requested={"train": n_train, "test": n_test},
        available=available,
        taken={k: int(len(v)) for k, v in taken_positions.items()},
        summary_counts=summary_counts,
        survived=survived,
        unreadable=unreadable,
        split_sizes={k: int(len(v)) for k, v in rows.items() if out.get(k) is not None},
        class_counts={
            k: {c: int((split_labels[k] == i).sum()) for i, c in enumerate(classes)}
            for k in rows
            if out.get(k) is not None
        },
        seed=seed,
        val_fraction=val_fraction,
        source=str(source) if not isinstance(source, (Dataset, DatasetDict)) else type(source).__name__,
    )
    logger.info("gz2 splits: %s", report)
    return GZ2Splits(
        train=out["train"],
        val=out["val"],
        test=out["test"],
        labels={k: v for k, v in split_labels.items() if out.get(k) is not None},
        ids=ids,
        classes=tuple(classes),
        report=report,
        raw=raw,
    )


def _check_n(n: int | None, available: int, what: str, split: str) -> int:
    if n is None:
        return available
    if n < 0:
        raise DataError(f"{what} must be >= 0, got {n}")
    if n > available:
        raise InsufficientDataError(
            f"requested {what}={n} rows but split {split!r} has only {available}; ask for at most {available} "
            f"(or None for all)"
        )
    return int(n)


# ----------------------------------------------------------------------------------------- fixture


def _blob_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cheap galaxy-ish blob: a Gaussian ellipse plus noise, uint8 RGB [size, size, 3]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    theta = rng.uniform(0, np.pi)
    q = rng.uniform(0.2, 1.0)
    sigma = rng.uniform(0.06, 0.15) * size
    u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
    v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
    blob = np.exp(-0.5 * (u**2 + (v / q) ** 2) / sigma**2)
    colour = rng.uniform(0.6, 1.0, 3)
    image = blob[..., None] * colour * 220 + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_gz2_fixture(
    path: PathLike,
    *,
    train_summaries: Sequence[str],
    test_summaries: Sequence[str] = (),
    image_size: int = 64,
    image_format: Literal["JPEG", "PNG"] = "JPEG",
    seed: int = 0,
    corrupt: Mapping[str, Sequence[int]] | None = None,
    drop_columns: Sequence[str] = (),
    shard_size: int = 1000,
) -> Path:
    """Write a small dataset with the gz2 schema: synthetic blob images plus the same columns and
    types (``image``, ``id_str``, ``ra``, ``dec``, votes, fractions, ``summary``) as hub-style parquet
    shards ``data/{train,test}-*.parquet``, so ``load_gz2(path)`` exercises the real loading code.

    ``train_summaries``/``test_summaries`` fix each row's summary (any string, so bad labels can be
    tested); ids are ``"{split}-{i:06d}"``. ``corrupt`` maps a split to row positions whose image bytes
    are replaced by garbage; ``drop_columns`` leaves columns out (to test schema errors).
    """
    root = Path(path)
    lock = begin_dataset(root, overwrite=True)
    rng = np.random.default_rng(seed)
    corrupt = dict(corrupt or {})
    full = gz2_features()
    features = Features({k: v for k, v in full.items() if k not in set(drop_columns)})
    for split, summaries in (("train", train_summaries), ("test", test_summaries)):
        if not summaries:
            continue
        writer = ShardWriter(root, split, features, len(summaries), shard_size=shard_size)
        bad = set(corrupt.get(split, ()))
        for i, summary in enumerate(summaries):
            pixels = _blob_image(rng, image_size)
            data = encode_jpeg(pixels) if image_format == "JPEG" else encode_png(pixels)
            if i in bad:
                data = b"\x89 this is not an image " + data[: len(data) // 8]
            row = {
                "image": {"bytes": data, "path": None},
                "id_str": f"{split}-{i:06d}",
                "ra": float(rng.uniform(0, 360)),
                "dec": float(rng.uniform(-10, 70)),
                "summary": summary,
            }
            row.update(gz2_votes_for(summary, rng))
            writer.add({k: v for k, v in row.items() if k in features})
        writer.close()
    finish_dataset(root, {"kind": "gz2_fixture", "seed": seed, "image_size": image_size}, lock)
    return root


__all__ = [
    "GZ2_HUB_ID",
    "GZ2_CONFIGS",
    "GZ2_CLASSES",
    "GZ2_EXCLUDED",
    "GZ2_CLASS_PRIORS",
    "GZ2_QUESTIONS",
    "GZ2_REQUIRED_COLUMNS",
    "gz2_vote_columns",
    "gz2_features",
    "gz2_votes_for",
    "check_gz2_schema",
    "open_gz2",
    "gz2_labels",
    "SummaryToLabel",
    "find_unreadable_images",
    "GZ2Report",
    "GZ2Splits",
    "load_gz2",
    "make_gz2_fixture",
]
