"""Synthetic chirp spectrograms (the design of arXiv 2503.18762) with distractors that come with boxes.

Faithful to the paper's public generator (``chirp_spectrogram_generator``): a 128 x 128 (frequency x
time) grid over 60 s and 0-100 Hz; start time U(0, 45) s, duration U(1, 15) s, start frequency
U(0, 100) Hz, end frequency clip(start + U(-30, 30), 0, 100); linear or exponential sweep 50/50. Time
column t in [int(t0 * 128 / 60), that + int(duration * 128 / 60)) gets, around the track bin f_b(t)
(linear f_b = b0 + (b1 - b0) tau, exponential f_b = b0 (b1 / b0)^tau with b0 >= 1, tau = column
fraction, b = int(f * 128 / 100), f_b clipped to [0, 127]), the weights exp(-(f - f_b)^2 / (2 * 0.5))
for the integer bins f in [int(f_b) - 2, int(f_b) + 2]; then noise U(0.09, 0.3) * N(0, 1) and a
Gaussian blur with sigma 1 (scipy's ``gaussian_filter``, reflect edges). The public code also
synthesises time-domain chirp signals, but never uses them; they are left out here.

The figure (``plt.imshow`` with viridis, axis labels "Time (s)" / "Frequency (Hz)", title
"Synthetic Spectrogram {i} ({type} chirp)", colour bar "Intensity") is drawn by
``vitmech.data._figure.SpectrogramFigure`` with numpy + PIL in the same layout as matplotlib's, every
element switchable, then resized to 224 x 224, with the box of each element and of the chirp track in
output pixels ((x0, y0, x1, y1), top-left origin, exclusive upper ends).

Regression targets: start time (s), start frequency (Hz), end frequency (Hz), z-scored with the mean
and std of the training split (``TargetScaler``, saved with the dataset so predictions map back).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from datasets import Array2D, Dataset, DatasetDict, Features, List, Value
from datasets import Image as HFImage
from jaxtyping import Float, Int, UInt8
from scipy.ndimage import gaussian_filter
from torch import Tensor
from tqdm.auto import tqdm

from vitmech.data._figure import ELEMENTS, FigureStyle, SpectrogramFigure
from vitmech.data._io import Box, ShardWriter, begin_dataset, encode_png, finish_dataset, write_json
from vitmech.data._transforms import LazyImageTransform, Preprocess
from vitmech.data.gz2 import open_gz2
from vitmech.errors import DataError, EmptySplitError, SchemaError, UnknownNameError

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

N_TIME = 128
N_FREQ = 128
DURATION_S = 60.0
MAX_FREQ_HZ = 100.0
MAX_CHIRP_S = 15.0
MAX_BAND_HZ = 30.0
TARGETS: tuple[str, ...] = ("start_time", "start_freq", "end_freq")
"""Regression targets, in order: start time (s), start frequency (Hz), end frequency (Hz)."""
BOXES: tuple[str, ...] = ELEMENTS + ("chirp",)
"""Boxes of every rendered sample: the figure elements plus the chirp track's region."""
STYLE_FLAGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FigureStyle))
"""The figure elements a chirp may leave out (`generate_chirp`'s flags)."""


@dataclass(frozen=True)
class ChirpParams:
    """One chirp: times in seconds, frequencies in Hz, ``kind`` 'linear' or 'exponential'."""

    start_time: float
    duration: float
    start_freq: float
    end_freq: float
    kind: Literal["linear", "exponential"]
    noise_level: float

    @property
    def targets(self) -> tuple[float, float, float]:
        return (self.start_time, self.start_freq, self.end_freq)


def sample_chirp_params(rng: np.random.Generator) -> ChirpParams:
    """Draw a chirp as the public generator does (same distributions, same order of draws)."""
    start_time = rng.uniform(0.0, DURATION_S - MAX_CHIRP_S)
    duration = rng.uniform(1.0, MAX_CHIRP_S)
    start_freq = rng.uniform(0.0, MAX_FREQ_HZ)
    end_freq = float(np.clip(start_freq + rng.uniform(-MAX_BAND_HZ, MAX_BAND_HZ), 0.0, MAX_FREQ_HZ))
    kind: Literal["linear", "exponential"] = "linear" if int(rng.integers(0, 2)) == 0 else "exponential"
    noise_level = rng.uniform(0.09, 0.3)
    return ChirpParams(float(start_time), float(duration), float(start_freq), end_freq, kind, float(noise_level))


def chirp_track(params: ChirpParams) -> tuple[Int[np.ndarray, " T"], Float[np.ndarray, " T"]]:
    """Time columns of the chirp and its (fractional) frequency bin in each, as the generator draws it."""
    start_bin = int(params.start_time * N_TIME / DURATION_S)
    end_bin = start_bin + int(params.duration * N_TIME / DURATION_S)
    b0 = int(params.start_freq * N_FREQ / MAX_FREQ_HZ)
    b1 = int(params.end_freq * N_FREQ / MAX_FREQ_HZ)
    columns = np.arange(start_bin, end_bin)
    tau = (columns - start_bin) / max(1, end_bin - start_bin)
    if params.kind == "linear":
        bins = b0 + (b1 - b0) * tau
    elif params.kind == "exponential":
        b0 = max(b0, 1)
        bins = b0 * (b1 / b0) ** tau
    else:
        raise DataError(f"chirp kind must be 'linear' or 'exponential', got {params.kind!r}")
    return columns, np.clip(bins, 0, N_FREQ - 1).astype(np.float64)


def chirp_spectrogram(
    params: ChirpParams, rng: np.random.Generator | None = None, *, noise: bool = True, blur: bool = True
) -> Float[np.ndarray, "128 128"]:
    """The raw ``[freq, time]`` spectrogram (row 0 = 0 Hz). ``noise``/``blur`` off give the clean track."""
    spec = np.zeros((N_FREQ, N_TIME), dtype=np.float64)
    columns, bins = chirp_track(params)
    if len(columns):
        base = bins.astype(np.int64)
        for offset in range(-2, 3):
            f = base + offset
            ok = (f >= 0) & (f < N_FREQ)
            spec[f[ok], columns[ok]] += np.exp(-0.5 * (f[ok] - bins[ok]) ** 2 / 0.5)
    if noise:
        if rng is None:
            raise DataError("chirp_spectrogram needs an rng when noise=True")
        spec += params.noise_level * rng.standard_normal((N_FREQ, N_TIME))
    if blur:
        spec = gaussian_filter(spec, sigma=1)
    return spec.astype(np.float32)


def default_title(index: int, params: ChirpParams) -> str:
    """The public generator's title."""
    return f"Synthetic Spectrogram {index} ({params.kind} chirp)"


def chirp_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 1])


@dataclass
class ChirpSample:
    """One rendered chirp: figure ``image`` uint8 ``[S, S, 3]``, raw ``spectrogram`` ``[128, 128]``,
    ``targets`` (start time s, start frequency Hz, end frequency Hz), ``boxes`` of ``BOXES`` in
    output pixels (None when switched off), the ``style`` used."""

    index: int
    params: ChirpParams
    spectrogram: Float[np.ndarray, "128 128"]
    image: UInt8[np.ndarray, "S S 3"]
    boxes: dict[str, Box | None]
    style: FigureStyle

    @property
    def targets(self) -> tuple[float, float, float]:
        return self.params.targets


_FIGURES: dict[int, SpectrogramFigure] = {}


def figure_renderer(size: int = 224) -> SpectrogramFigure:
    """A cached renderer per output size (templates are reused across calls)."""
    if size not in _FIGURES:
        _FIGURES[size] = SpectrogramFigure(size=size, extent=(0.0, DURATION_S, 0.0, MAX_FREQ_HZ))
    return _FIGURES[size]


def _pick(flag: bool | float, rng: np.random.Generator) -> bool:
    if isinstance(flag, bool):
        return flag
    if not 0.0 <= float(flag) <= 1.0:
        raise DataError(f"a style probability must be in [0, 1], got {flag}")
    return bool(rng.uniform() < float(flag))


def style_flags(style: dict[str, bool | float]) -> dict[str, bool | float]:
    """Every one of the `STYLE_FLAGS`, as given in `style` or True (shown); an unknown name is an error."""
    unknown = sorted(set(style) - set(STYLE_FLAGS))
    if unknown:
        raise DataError(f"unknown style flags {unknown}; the flags are {list(STYLE_FLAGS)}")
    return {name: style.get(name, True) for name in STYLE_FLAGS}


def generate_chirp(
    index: int, seed: int = 0, *, size: int = 224, noise: bool = True, **style: bool | float
) -> ChirpSample:
    """Chirp ``index`` of the stream ``seed``: parameters, raw array, figure and boxes. ``style``: the
    figure elements' flags (`STYLE_FLAGS`: title, xlabel, ylabel, colorbar, ticks; default all shown),
    each a bool, or a probability of showing it (drawn per image, after the chirp's own draws)."""
    flags = style_flags(style)
    rng = chirp_rng(seed, index)
    params = sample_chirp_params(rng)
    spec = chirp_spectrogram(params, rng, noise=noise)
    shown = FigureStyle(**{name: _pick(flag, rng) for name, flag in flags.items()})  # drawn in STYLE_FLAGS order
    figure = figure_renderer(size)
    image, boxes = figure.render(spec, default_title(index, params), shown)
    columns, bins = chirp_track(params)
    if len(columns):
        low, high = max(0.0, float(np.floor(bins.min())) - 2), min(float(N_FREQ), float(np.floor(bins.max())) + 3)
        boxes["chirp"] = figure.grid_box(
            float(columns[0]), float(columns[-1] + 1), low, high, N_TIME, N_FREQ, shown.colorbar
        )
    else:
        boxes["chirp"] = None
    return ChirpSample(index, params, spec, image, boxes, shown)


def generate_chirps(
    n: int, seed: int = 0, *, start: int = 0, progress: bool = False, **kwargs: Any
) -> list[ChirpSample]:
    """Chirps ``start .. start + n - 1`` of the stream ``seed`` (see ``generate_chirp`` for options)."""
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    return [
        generate_chirp(i, seed, **kwargs)
        for i in tqdm(range(start, start + n), desc="chirps", unit="img", disable=not progress)
    ]


# ----------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetScaler:
    """z-scoring of the regression targets: ``z = (raw - mean) / std`` per target (``TARGETS`` order)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    names: tuple[str, ...] = TARGETS

    @classmethod
    def fit(cls, raw: Float[np.ndarray, "N 3"]) -> "TargetScaler":
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(TARGETS) or len(raw) < 2:
            raise DataError(f"fitting a TargetScaler needs [N >= 2, 3] targets, got shape {raw.shape}")
        std = raw.std(axis=0, ddof=0)
        if (std <= 0).any():
            raise DataError(f"a target has zero spread (std {std.tolist()}); cannot z-score")
        return cls(tuple(raw.mean(axis=0).tolist()), tuple(std.tolist()))

    def transform(self, raw: ArrayT) -> ArrayT:
        """``[..., 3]`` raw (s, Hz, Hz) -> z-scores (same type)."""
        mean, std = self._as(raw)
        return (raw - mean) / std

    def inverse(self, z: ArrayT) -> ArrayT:
        """``[..., 3]`` z-scores -> raw units (s, Hz, Hz)."""
        mean, std = self._as(z)
        return z * std + mean

    def _as(self, like: Any) -> tuple[Any, Any]:
        if isinstance(like, Tensor):
            return (
                torch.tensor(self.mean, dtype=like.dtype, device=like.device),
                torch.tensor(self.std, dtype=like.dtype, device=like.device),
            )
        return np.asarray(self.mean), np.asarray(self.std)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "TargetScaler":
        return cls(tuple(payload["mean"]), tuple(payload["std"]), tuple(payload.get("names", TARGETS)))

    def save(self, path: PathLike) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: PathLike) -> "TargetScaler":
        return cls.from_dict(json.loads(Path(path).read_text()))


class ZScoredTargets:
    """Batch target function: raw target columns -> ``{"targets": [[z0, z1, z2], ...]}``."""

    def __init__(self, scaler: TargetScaler):
        self.scaler = scaler

    def __call__(self, batch: Mapping[str, list]) -> dict[str, Any]:
        raw = np.stack([np.asarray(batch[name], dtype=np.float64) for name in TARGETS], axis=-1)
        return {"targets": self.scaler.transform(raw).astype(np.float32)}


# ----------------------------------------------------------------------------------------- dataset


def chirp_features(store_spectrogram: bool = True) -> Features:
    spec: dict[str, Any] = {
        "image": HFImage(),
        "id": Value("string"),
        "index": Value("int64"),
        "start_time": Value("float32"),
        "duration": Value("float32"),
        "start_freq": Value("float32"),
        "end_freq": Value("float32"),
        "chirp_type": Value("string"),
        "noise_level": Value("float32"),
    }
    for name in ("title", "xlabel", "ylabel", "colorbar", "ticks"):
        spec[f"has_{name}"] = Value("bool")
    for name in BOXES:
        spec[f"box_{name}"] = List(Value("int32"), length=4)
    if store_spectrogram:
        spec["spectrogram"] = Array2D(shape=(N_FREQ, N_TIME), dtype="float16")
    return Features(spec)


def write_chirp_dataset(
    path: PathLike,
    n: int,
    seed: int = 0,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    size: int = 224,
    store_spectrogram: bool = True,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    **style: bool | float,
) -> Path:
    """Write ``n`` chirps as hub-style parquet shards ``data/{train,validation,test}-*.parquet``: PNG
    figure, raw targets and chirp type, style flags, boxes, and (``store_spectrogram``) the raw array as
    float16. Rows 0 .. n_test - 1 of the seeded stream are ``test``, the next n_val ``validation``, the
    rest ``train``. ``target_scaler.json`` holds the training split's target mean/std. ``style``: the
    `STYLE_FLAGS` of `generate_chirp` (title, xlabel, ylabel, colorbar, ticks), each a bool or the
    probability of showing that element."""
    flags = style_flags(style)  # checked before the folder is made
    root = Path(path)
    lock = begin_dataset(root, overwrite)  # one writer; a kill from here on leaves a folder loaders refuse
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    n_train = n - n_test - n_val
    if n_train < 2:
        raise DataError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave {n_train} training rows of {n}"
        )
    features = chirp_features(store_spectrogram)
    counts = {"test": n_test, "validation": n_val, "train": n_train}
    writers = {name: ShardWriter(root, name, features, count, shard_size) for name, count in counts.items() if count}
    train_targets = []
    started = time.perf_counter()
    for index in tqdm(range(n), desc="writing chirps", unit="img", disable=not progress):
        sample = generate_chirp(index, seed, size=size, noise=True, **flags)
        p = sample.params
        row: dict[str, Any] = {
            "image": {"bytes": encode_png(sample.image), "path": None},
            "id": f"chirp-{seed}-{index:07d}",
            "index": index,
            "start_time": p.start_time,
            "duration": p.duration,
            "start_freq": p.start_freq,
            "end_freq": p.end_freq,
            "chirp_type": p.kind,
            "noise_level": p.noise_level,
        }
        for name, value in dataclasses.asdict(sample.style).items():
            row[f"has_{name}"] = value
        for name in BOXES:
            box = sample.boxes.get(name)
            row[f"box_{name}"] = list(box) if box is not None else None
        if store_spectrogram:
            row["spectrogram"] = sample.spectrogram.astype(np.float16)
        split = "test" if index < n_test else "validation" if index < n_test + n_val else "train"
        if split == "train":
            train_targets.append(p.targets)
        writers[split].add(row)
    for writer in writers.values():
        writer.close()
    scaler = TargetScaler.fit(np.asarray(train_targets, dtype=np.float32).astype(np.float64))
    scaler.save(root / "target_scaler.json")
    elapsed = time.perf_counter() - started
    finish_dataset(
        root,
        {
            "kind": "synthetic_chirps",
            "n": n,
            "splits": counts,
            "seed": seed,
            "size": size,
            "style": flags,
            "targets": list(TARGETS),
            "target_scaler": scaler.to_dict(),
            "store_spectrogram": store_spectrogram,
            "box_convention": "(x0, y0, x1, y1) pixels of the size x size image, top-left origin, exclusive upper ends",
        },
        lock,
    )
    logger.info("wrote %d chirps to %s in %.1f s (%.0f/s)", n, root, elapsed, n / max(elapsed, 1e-9))
    return root


@dataclass
class ChirpSplits:
    """Train/validation/test chirp datasets. Items are ``{"pixel_values": Tensor[C, H, W],
    "targets": Tensor[3]}`` (z-scored with ``scaler``) with a preprocess callable, or
    ``{"image": PIL.Image, "targets": list[float]}`` without; ``raw[name]`` keeps every column."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    scaler: TargetScaler
    raw: dict[str, Dataset]

    def __getitem__(self, name: str) -> Dataset:
        split = {"train": self.train, "val": self.val, "validation": self.val, "test": self.test}[name]
        if split is None:
            raise UnknownNameError(f"no {name!r} split")
        return split


def load_chirps(
    source: PathLike | Dataset | DatasetDict,
    *,
    preprocess: Preprocess | None = None,
    scaler: TargetScaler | None = None,
    cache_dir: PathLike | None = None,
) -> ChirpSplits:
    """Open a chirp dataset (a ``write_chirp_dataset`` folder, parquet, or in-memory datasets) as
    torch-ready splits. The target scaler is ``scaler`` if given, else ``target_scaler.json`` of the
    folder, else fitted on the training split. Images are decoded and preprocessed lazily per batch."""
    dd = open_gz2(source, cache_dir=cache_dir)
    if "train" not in dd:
        raise SchemaError(f"a chirp dataset needs a 'train' split, found {list(dd)}")
    required = ("image",) + TARGETS
    for name, split in dd.items():
        missing = [c for c in required if c not in split.column_names]
        if missing:
            raise SchemaError(f"chirp split {name!r} lacks column(s) {missing}; it has {sorted(split.column_names)}")
        if len(split) == 0:
            raise EmptySplitError(f"chirp split {name!r} is empty")
    if scaler is None:
        saved = Path(os.fspath(source)) / "target_scaler.json" if isinstance(source, (str, os.PathLike)) else None
        if saved is not None and saved.exists():
            scaler = TargetScaler.load(saved)
        else:
            table = dd["train"].with_format("numpy")
            scaler = TargetScaler.fit(np.stack([np.asarray(table[name], dtype=np.float64) for name in TARGETS], -1))
    transform = LazyImageTransform(
        preprocess,
        ZScoredTargets(scaler),
        image_column="image",
        id_column="id" if "id" in dd["train"].column_names else None,
    )
    out: dict[str, Dataset | None] = {}
    for name in ("train", "validation", "test"):
        if name not in dd:
            out[name] = None
            continue
        split = dd[name]
        columns = ["image", *TARGETS] + (["id"] if "id" in split.column_names else [])
        out[name] = split.cast_column("image", HFImage(decode=False)).with_transform(transform, columns=columns)
    return ChirpSplits(
        train=out["train"],
        val=out["validation"],
        test=out["test"],
        scaler=scaler,
        raw={k: v for k, v in dd.items()},
    )


__all__ = [
    "N_TIME",
    "N_FREQ",
    "TARGETS",
    "BOXES",
    "ChirpParams",
    "ChirpSample",
    "FigureStyle",
    "sample_chirp_params",
    "chirp_track",
    "chirp_spectrogram",
    "default_title",
    "chirp_rng",
    "figure_renderer",
    "generate_chirp",
    "generate_chirps",
    "TargetScaler",
    "ZScoredTargets",
    "chirp_features",
    "write_chirp_dataset",
    "ChirpSplits",
    "load_chirps",
    "COUNTERFACTUAL_ELEMENTS",
    "chirp_counterfactual_pairs",
]


# ----------------------------------------------------------------------------------------- counterfactual pairs

COUNTERFACTUAL_ELEMENTS: dict[str, tuple[str, ...]] = {
    "text": ("title", "xlabel", "ylabel"),
    "axes": ("ticks",),
    "colorbar": ("colorbar",),
}
"""Distractor -> the figure elements switched off to remove it (tick labels belong to the axes)."""


def chirp_counterfactual_pairs(
    n: int, seed: int = 0, element: str = "text", *, start: int = 0, size: int = 224, noise: bool = True
) -> tuple[list[ChirpSample], list[ChirpSample]]:
    """n matched pairs (with, without) one distractor ("text", "axes" or "colorbar"): the same chirp, noise
    and title drawn twice, every element on in the first, the distractor's elements off in the second (the
    colour bar also moves the plot's right edge, as in the generator's figures)."""
    if element not in COUNTERFACTUAL_ELEMENTS:
        raise DataError(f"element must be one of {sorted(COUNTERFACTUAL_ELEMENTS)}, got {element!r}")
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    flags = dict.fromkeys(STYLE_FLAGS, True)
    off = {**flags, **dict.fromkeys(COUNTERFACTUAL_ELEMENTS[element], False)}
    indices = range(start, start + n)
    return (
        [generate_chirp(i, seed, size=size, noise=noise, **flags) for i in indices],
        [generate_chirp(i, seed, size=size, noise=noise, **off) for i in indices],
    )
