"""Analyses over a whole dataset in constant memory, on one process or sharded across ranks.

    source = DataLoader(dataset, batch_size=64)                  # or a tensor, an HF Dataset, a folder
    metrics = stream_attention_metrics(model, source)             # per layer x head mean / std
    table = stream_ablation_sweep(model, source, cells, "kl_to_clean", store="runs/sweep")
    comparison = stream_compare_models(pretrained, finetuned, source)

Each function wraps the one-batch analysis it streams (`attention_metrics`, `compare_models`' batch
step, the sweep engine, `estimate_head_effects`, `direct_logit_attribution`) and folds every batch
into a mergeable accumulator: running float64 moments, sums, CKA Gram sums, or one scalar per image.
Nothing of size [images, ...] beyond per-image scalars is kept; per-image rows of the attention
metrics can be spilled to a CSV file (`rows_path=`). The results equal the one-batch analysis over
all images up to float rounding (tested to 1e-6).

Under `torchrun` (see `vitmech.distributed`) batch b belongs to rank b % world_size (for sweeps each
(batch, chunk of cells) unit is dealt out); the accumulators are merged in rank order with one
collective, so every rank returns the one-process result. Inputs are moved to the model's device;
`precision="bf16"` / `"fp16"` autocasts the forward passes (docs/performance.md#reduced-precision).

A batch source is one of:
- a float tensor [N, C, S, S] (preprocessed), with `targets=` aligned to it, cut into `batch_size` rows;
- an HF `datasets.Dataset` with an image column ("pixel_values", "image" or "images"; PIL images or
  uint8 arrays are preprocessed by the model) and an optional label column ("label", "labels",
  "target", "targets"), read `batch_size` rows at a time;
- a folder (str / Path) of image files (.png, .jpg, .jpeg, .bmp, .webp), read in sorted order;
- any other iterable of batches (a `DataLoader`): tensors, (images, targets) pairs or dicts as above.
  Every rank iterates it (only its own batches are computed); give a tensor, Dataset or folder to
  have each rank read only its own batches.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from vitmech.analysis import compare as _compare
from vitmech.analysis.ablation.estimates import HeadEstimates, estimate_head_effects
from vitmech.analysis.ablation.heads import HeadsLike, heads_per_layer, single_head_cells
from vitmech.analysis.ablation.interventions import AblationLike, resolve_ablation
from vitmech.analysis.ablation.metrics import MetricLike, resolve_metric
from vitmech.analysis.ablation.results import AblationTable, HeadSweepResult
from vitmech.analysis.ablation.store import (
    JsonlStore,
    MemoryStore,
    encode_record,
    read_store_file,
    store_files,
    store_header,
)
from vitmech.analysis.ablation.sweep import (
    CellLike,
    Engine,
    SweepPlan,
    _CellSweep,
    _table,
    batch_bounds,
)
from vitmech.analysis.attention import AttentionSettings, attention_metrics, collect_patterns, resolve_layers
from vitmech.analysis.attribution import ClassSpec, direct_logit_attribution
from vitmech.analysis.rollout import RolloutSettings
from vitmech.device import check_precision, forward_precision, to_model
from vitmech.distributed import Ranks, barrier, current, gather_objects
from vitmech.errors import BatchSourceError, InputError, ModelMismatchError
from vitmech.fingerprint import settings_fingerprint, tensor_fingerprint
from vitmech.io.atomic import atomic_write_text
from vitmech.io.lock import is_stale, read_holder
from vitmech.tokens import TokenLayout, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model.hooked_vit import HookedViT

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGE_KEYS = ("pixel_values", "images", "image")
TARGET_KEYS = ("label", "labels", "target", "targets")


# ----------------------------------------------------------------------------------------- sources


@dataclass
class ImageBatch:
    """One batch of a stream: its number, the stream index of its first image, and its data.

    `images` is what the source gave (a float tensor, or PIL images / uint8 arrays); `pixels(model)`
    is the batch preprocessed for that model, on its device and dtype.
    """

    index: int
    start: int
    images: Any
    targets: Tensor | None = None
    _pixels: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return int(self.images.shape[0]) if isinstance(self.images, Tensor) else len(self.images)

    def pixels(self, model: HookedViT) -> Float[Tensor, "batch channel height width"]:
        key = id(model)
        if key not in self._pixels:
            if isinstance(self.images, Tensor) and self.images.is_floating_point():
                self._pixels[key] = to_model(model, self.images)
            else:
                self._pixels[key] = model.preprocess(_as_image_list(self.images))
        return self._pixels[key]

    def targets_on(self, model: HookedViT) -> Tensor | None:
        return None if self.targets is None else self.targets.to(model.device)


def _as_image_list(images: Any) -> list[Any]:
    if isinstance(images, Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
            images = images.transpose(0, 2, 3, 1)  # channels first -> last for PIL
        return list(images)
    return list(images)


def _targets(values: Any) -> Tensor | None:
    return None if values is None else torch.as_tensor(np.asarray(values) if isinstance(values, list) else values)


def _pick(mapping: Mapping[str, Any], given: str | None, choices: Sequence[str], what: str) -> str | None:
    if given is not None:
        if given not in mapping:
            raise BatchSourceError(f"the {what} column {given!r} is not in the batch (columns: {sorted(mapping)})")
        return given
    return next((k for k in choices if k in mapping), None)


def _decode(item: Any, image_key: str | None, target_key: str | None) -> tuple[Any, Tensor | None]:
    """(images, targets) of one item of a batch iterable."""
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, Mapping):
        key = _pick(item, image_key, IMAGE_KEYS, "image")
        if key is None:
            raise BatchSourceError(
                f"a batch dict needs an image column {IMAGE_KEYS} (or image_key=); got {sorted(item)}"
            )
        label = _pick(item, target_key, TARGET_KEYS, "target")
        return item[key], _targets(item[label]) if label is not None else None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (Tensor, np.ndarray, list)):
        return item[0], _targets(item[1])
    raise BatchSourceError(
        f"a batch must be a tensor, an (images, targets) pair or a dict with an image column; got {type(item).__name__}"
    )


def _is_hf_dataset(source: Any) -> bool:
    return type(source).__module__.startswith("datasets.") and hasattr(source, "column_names")


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BatchSourceError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BatchSourceError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _bounds(n: int, batch_size: int, min_batch: int) -> list[tuple[int, int]]:
    if n == 0:
        raise BatchSourceError("the batch source is empty")
    return batch_bounds(n, batch_size, min_batch)


def count_images(source: Any) -> int | None:
    """Images in a source whose length is known without reading it (None for a generic iterable)."""
    if isinstance(source, Tensor) or _is_hf_dataset(source):
        return len(source)
    if isinstance(source, (str, os.PathLike)):
        return len(_folder_files(Path(source)))
    dataset = getattr(source, "dataset", None)
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


def iter_batches(
    source: Any,
    *,
    batch_size: int = 32,
    targets: Tensor | None = None,
    ranks: Ranks | None = None,
    image_key: str | None = None,
    target_key: str | None = None,
    min_batch: int = 1,
) -> Iterator[ImageBatch]:
    """The batches of `source` that `ranks` owns (batch b belongs to rank b % world_size; all when None).

    Tensors, HF Datasets and folders are cut into `batch_size` rows (a last batch smaller than
    `min_batch` joins the one before) and only owned batches are read; other iterables yield their
    own batches. See the module docstring for the accepted forms.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BatchSourceError(f"batch_size must be a positive int, got {batch_size!r}")
    owns = (lambda b: True) if ranks is None else ranks.owns
    if isinstance(source, Tensor):
        if source.ndim != 4:
            raise BatchSourceError(f"an image tensor must be [N, C, S, S], got shape {list(source.shape)}")
        if targets is not None and len(targets) != len(source):
            raise BatchSourceError(f"{len(targets)} targets for {len(source)} images")
        for b, (start, stop) in enumerate(_bounds(len(source), batch_size, min_batch)):
            if owns(b):
                yield ImageBatch(b, start, source[start:stop], None if targets is None else targets[start:stop])
        return
    if targets is not None:
        raise BatchSourceError("targets= goes with an image tensor; other sources carry their own labels")
    if _is_hf_dataset(source):
        for b, (start, stop) in enumerate(_bounds(len(source), batch_size, min_batch)):
            if owns(b):
                images, labels = _decode(source[start:stop], image_key, target_key)
                yield ImageBatch(b, start, images, labels)
        return
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image

        files = _folder_files(Path(source))
        for b, (start, stop) in enumerate(_bounds(len(files), batch_size, min_batch)):
            if owns(b):
                images = []
                for path in files[start:stop]:
                    with Image.open(path) as image:
                        images.append(image.copy())
                yield ImageBatch(b, start, images)
        return
    if not isinstance(source, Iterable):
        raise BatchSourceError(
            f"cannot stream batches from a {type(source).__name__}: give a tensor, an HF Dataset, a folder "
            "or an iterable of batches (a DataLoader)"
        )
    start = 0
    for b, item in enumerate(source):
        images, labels = _decode(item, image_key, target_key)
        batch = ImageBatch(b, start, images, labels)
        if owns(b):
            yield batch
        start += batch.size


def _at_least_float32(x: Tensor) -> Tensor:
    """Reduced-precision activations (bf16 / fp16 autocast) widened to float32 before any reduction."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _progress(source: Any, progress: bool, desc: str, ranks: Ranks) -> Any:
    total = count_images(source)
    if total is not None and ranks.active:
        total = math.ceil(total / ranks.world_size)
    return tqdm(total=total, desc=desc, unit="img", disable=not progress or not ranks.is_main)


# ----------------------------------------------------------------------------------------- accumulators


@dataclass
class Moments:
    """Count, mean and sum of squared deviations (float64) of values [n, *shape], merged exactly
    (Chan et al. 1979) so that batches and ranks can be folded in any grouping."""

    n: int = 0
    mean: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    m2: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))

    def update(self, values: Float[Tensor, "n ..."]) -> None:
        values = values.detach().double().cpu()
        mean = values.mean(0)
        self.merge(Moments(values.shape[0], mean, ((values - mean) ** 2).sum(0)))

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.n = n
        return self

    def std(self) -> Tensor:
        """Standard deviation (ddof 1); NaN with fewer than 2 values."""
        if self.n < 2:
            return torch.full_like(self.mean, float("nan"))
        return (self.m2 / (self.n - 1)).clamp_min(0).sqrt()


def _merge_moments(parts: Sequence[dict[str, Moments]]) -> dict[str, Moments]:
    out: dict[str, Moments] = {}
    for part in parts:
        for name, moments in part.items():
            out.setdefault(name, Moments()).merge(moments)
    return out


def _reduce_moments(local: dict[str, Moments]) -> dict[str, Moments]:
    return _merge_moments(gather_objects(local))


def _gather_images(local: list[tuple[int, dict[str, Tensor]]]) -> dict[str, Tensor]:
    """Per-image tensors from every rank, put back in stream order."""
    parts = sorted((p for rank_parts in gather_objects(local) for p in rank_parts), key=lambda p: p[0])
    if not parts:
        return {}
    return {name: torch.cat([p[1][name] for p in parts]) for name in parts[0][1]}


def _moment_frame(stats: dict[str, Moments], keys: dict[str, list[int]], n_images: int) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(keys)
    for name, m in stats.items():
        frame[f"{name}_mean"] = m.mean.flatten().tolist()
        frame[f"{name}_std"] = m.std().flatten().tolist()
    frame["n_images"] = n_images
    return frame


# ----------------------------------------------------------------------------------------- attention metrics


@dataclass
class StreamedAttentionMetrics:
    """Attention metrics of a streamed dataset: per (layer, head) and per layer, mean and std over images.

    Attributes:
        heads: metric name -> Moments of [layer, head] values (entropy in nats, distance in pixels).
        layers_stats: metric name -> Moments of [layer] values (head means and head-mean-map variants).
        layers: the model layer of each layer index.
        settings: the metric choices.
        n_images: images seen (all ranks).
        precision: the forward pass precision ("fp32", "bf16", "fp16").
        rows_path: the CSV of per-image rows, if spilled.
        query: the query the "cls" metrics read ("class token" or "mean over patches", `TokenLayout.readout`).
    """

    heads: dict[str, Moments]
    layers_stats: dict[str, Moments]
    layers: tuple[int, ...]
    settings: AttentionSettings
    n_images: int
    precision: str = "fp32"
    rows_path: Path | None = None
    query: str = "class token"

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head), the columns of `AttentionMetrics.to_frame()`."""
        n_heads = self.heads["cls_entropy"].mean.shape[1]
        keys = {
            "layer": [layer for layer in self.layers for _ in range(n_heads)],
            "head": list(range(n_heads)) * len(self.layers),
        }
        return _moment_frame(self.heads, keys, self.n_images)

    def layer_frame(self) -> pd.DataFrame:
        """One row per layer, the columns of `AttentionMetrics.layer_frame()`."""
        return _moment_frame(self.layers_stats, {"layer": list(self.layers)}, self.n_images)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "layers": list(self.layers),
            "n_images": self.n_images,
            "precision": self.precision,
            "per_head_mean": {k: v.mean.tolist() for k, v in self.heads.items()},
            "per_head_std": {k: v.std().tolist() for k, v in self.heads.items()},
            "per_layer_mean": {k: v.mean.tolist() for k, v in self.layers_stats.items()},
        }


class _RowSpill:
    """Per-image rows appended to `<path>.part<rank>` as they come; merged into `path` by rank 0."""

    def __init__(self, path: str | Path | None, ranks: Ranks) -> None:
        self.path = None if path is None else Path(path)
        self.ranks = ranks
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.part = self.path.with_name(f"{self.path.name}.part{ranks.rank}")
            self.part.unlink(missing_ok=True)

    def write(self, frame: pd.DataFrame) -> None:
        if self.path is not None:
            frame.to_csv(self.part, mode="a", header=not self.part.exists(), index=False)

    def finish(self) -> Path | None:
        if self.path is None:
            return None
        barrier()
        if self.ranks.is_main:
            parts = [self.path.with_name(f"{self.path.name}.part{r}") for r in range(self.ranks.world_size)]
            with self.path.open("wb") as out:
                header_written = False
                for part in parts:
                    if not part.exists():
                        continue
                    with part.open("rb") as f:
                        header = f.readline()
                        if not header_written:
                            out.write(header)
                            header_written = True
                        shutil.copyfileobj(f, out)
                    part.unlink()
        barrier()
        return self.path


def stream_attention_metrics(
    model: HookedViT,
    source: Any,
    *,
    settings: AttentionSettings | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    rows_path: str | Path | None = None,
    image_key: str | None = None,
    progress: bool = True,
) -> StreamedAttentionMetrics:
    """`attention_metrics` over every image of `source`, reduced to per (layer, head) moments as it goes.

    Memory: one batch of patterns [batch, layer, head, P, P] at a time. rows_path: also write one CSV row
    per (image, layer, head) with every per-head metric (the columns of `AttentionMetrics.image_frame()`,
    `image` counted over the whole stream).
    """
    settings = settings or AttentionSettings()
    check_precision(precision)
    layers = resolve_layers(model, layers)
    ranks = current()
    heads: dict[str, Moments] = {}
    per_layer: dict[str, Moments] = {}
    spill = _RowSpill(rows_path, ranks)
    bar = _progress(source, progress, "attention metrics", ranks)
    for batch in iter_batches(source, batch_size=batch_size, ranks=ranks, image_key=image_key):
        pixels = batch.pixels(model)
        with torch.no_grad(), forward_precision(precision, model.device):
            patterns = collect_patterns(model, pixels, layers=layers, batch_size=pixels.shape[0], progress=False)
        metrics = attention_metrics(
            _at_least_float32(patterns), model, settings, layers=layers, layout=token_layout(model)
        )
        del patterns
        for name, values in metrics.head_metrics().items():
            heads.setdefault(name, Moments()).update(values)
        for name, values in metrics.layer_metrics().items():
            per_layer.setdefault(name, Moments()).update(values)
        if spill.path is not None:
            frame = metrics.image_frame()
            frame["image"] += batch.start
            spill.write(frame)
        bar.update(batch.size)
    bar.close()
    heads, per_layer = _reduce_moments(heads), _reduce_moments(per_layer)
    if not heads:
        raise BatchSourceError("the batch source yielded no images")
    return StreamedAttentionMetrics(
        heads=heads,
        layers_stats=per_layer,
        layers=layers,
        settings=settings,
        n_images=heads["cls_entropy"].n,
        precision=precision,
        rows_path=spill.finish(),
        query=token_layout(model).readout_name,
    )


# ----------------------------------------------------------------------------------------- comparison


def merge_cka(a: _compare.CKAAccumulator, b: _compare.CKAAccumulator) -> _compare.CKAAccumulator:
    """Fold accumulator `b` into `a` (re-expressing b's sums about a's shift), e.g. across ranks."""
    if b.n == 0:
        return a
    if a.n == 0:
        a.n, a._shift, a._sums = b.n, b._shift, list(b._sums)
        return a
    (ax, ay), (bx, by) = a._shift, b._shift  # type: ignore[misc]
    dx, dy = (bx - ax)[:, 0].double(), (by - ay)[:, 0].double()  # [site, d]: x - a_shift = (x - b_shift) + d
    sx, sy, xx, yy, yx = b._sums
    n = b.n

    def outer(u: Tensor, v: Tensor) -> Tensor:
        return u[:, :, None] * v[:, None, :]

    shifted = [
        sx + n * dx,
        sy + n * dy,
        xx + outer(dx, sx) + outer(sx, dx) + n * outer(dx, dx),
        yy + outer(dy, sy) + outer(sy, dy) + n * outer(dy, dy),
        yx + outer(dy, sx) + outer(sy, dx) + n * outer(dy, dx),
    ]
    a._sums = [p + q for p, q in zip(a._sums, shifted)]
    a.n += n
    return a


def _cpu_cka(acc: _compare.CKAAccumulator) -> _compare.CKAAccumulator:
    out = _compare.CKAAccumulator()
    out.n = acc.n
    out._shift = None if acc._shift is None else (acc._shift[0].cpu(), acc._shift[1].cpu())
    out._sums = [s.cpu() for s in acc._sums]
    return out


@dataclass
class StreamedSummary:
    """One model's attention over a streamed dataset: metric moments, and per-image scalars.

    Attributes:
        scalars: per-image quantities of `AttentionSummary.image_scalars()` ([n_images] each).
        layer_distance: [n_images, layer] mean attention distance (pixels), averaged over heads.
    """

    name: str
    metrics: StreamedAttentionMetrics
    scalars: dict[str, Float[Tensor, " image"]]
    layer_distance: Float[Tensor, "image layer"]
    rollout_settings: RolloutSettings

    def image_scalars(self) -> dict[str, Float[Tensor, " image"]]:
        return self.scalars

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rollout_settings": self.rollout_settings.to_dict(),
            "metrics": self.metrics.to_dict(),
            "image_means": {k: float(v.mean()) for k, v in self.scalars.items()},
        }


@dataclass
class StreamedComparison(_compare.ModelComparison):
    """`ModelComparison` over a streamed dataset: the same tables (summary, locality, layer, head)."""

    before: StreamedSummary  # type: ignore[assignment]
    after: StreamedSummary  # type: ignore[assignment]


class _SummaryAccumulator:
    def __init__(self) -> None:
        self.heads: dict[str, Moments] = {}
        self.layers: dict[str, Moments] = {}
        self.images: list[tuple[int, dict[str, Tensor]]] = []

    def update(self, name: str, start: int, part: Any, rollout_settings: RolloutSettings, layout: TokenLayout) -> None:
        summary = _compare._summary(name, [part], rollout_settings, layout)
        for key, values in summary.metrics.head_metrics().items():
            self.heads.setdefault(key, Moments()).update(values)
        for key, values in summary.metrics.layer_metrics().items():
            self.layers.setdefault(key, Moments()).update(values)
        scalars = {k: _at_least_float32(v.detach()).cpu() for k, v in summary.image_scalars().items()}
        scalars["__layer_distance"] = _at_least_float32(summary.metrics.mean_distance.mean(-1)).cpu()
        self.images.append((start, scalars))

    def result(self, name: str, model: HookedViT, settings: AttentionSettings, rs: RolloutSettings) -> StreamedSummary:
        heads, layers = _reduce_moments(self.heads), _reduce_moments(self.layers)
        scalars = _gather_images(self.images)
        distance = scalars.pop("__layer_distance")
        metrics = StreamedAttentionMetrics(
            heads,
            layers,
            tuple(range(model.cfg.n_layers)),
            settings,
            heads["cls_entropy"].n,
            query=token_layout(model).readout_name,
        )
        return StreamedSummary(name, metrics, scalars, distance, rs)


def stream_attention_summary(
    model: HookedViT,
    source: Any,
    *,
    name: str = "model",
    settings: AttentionSettings | None = None,
    rollout_settings: RolloutSettings | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    image_key: str | None = None,
    progress: bool = True,
) -> StreamedSummary:
    """`summarize_attention` over every image of `source`, for one model: metric moments per (layer, head)
    and per layer, the per-image scalars of the comparison table (last-layer CLS entropy and top-k, rollout
    entropy and top-k) and each image's mean attention distance per layer. Two summaries of the same
    images make a `StreamedComparison(before, after, weights=None, cka=None)`."""
    check_precision(precision)
    settings = settings or AttentionSettings()
    rollout_settings = rollout_settings or RolloutSettings()
    ranks = current()
    accumulator = _SummaryAccumulator()
    bar = _progress(source, progress, f"attention ({name})", ranks)
    for batch in iter_batches(source, batch_size=batch_size, ranks=ranks, image_key=image_key):
        with forward_precision(precision, model.device):
            result = _compare._run_batch(model, batch.pixels(model), settings, rollout_settings, False)
        accumulator.update(name, batch.start, result, rollout_settings, token_layout(model))
        bar.update(batch.size)
    bar.close()
    if not any(gather_objects(bool(accumulator.images))):
        raise BatchSourceError("the batch source yielded no images")
    return accumulator.result(name, model, settings, rollout_settings)


def stream_per_image(
    model: HookedViT,
    source: Any,
    compute: Callable[[HookedViT, Tensor], Mapping[str, Tensor]],
    *,
    batch_size: int = 16,
    image_key: str | None = None,
    progress: bool = True,
    desc: str = "per image",
) -> dict[str, Tensor]:
    """Per-image values of every image of `source`, in stream order, on every rank: `compute(model,
    pixels)` returns {name: [batch, ...]} for one preprocessed batch (e.g. the predicted class); each rank
    computes its own batches and one collective gathers them. Keep the values small (scalars per image)."""
    ranks = current()
    parts: list[tuple[int, dict[str, Tensor]]] = []
    bar = _progress(source, progress, desc, ranks)
    for batch in iter_batches(source, batch_size=batch_size, ranks=ranks, image_key=image_key):
        values = compute(model, batch.pixels(model))
        parts.append((batch.start, {name: value.detach().cpu() for name, value in values.items()}))
        bar.update(batch.size)
    bar.close()
    gathered = _gather_images(parts)
    if not gathered:
        raise BatchSourceError("the batch source yielded no images")
    return gathered


def stream_compare_models(
    before: HookedViT,
    after: HookedViT,
    source: Any,
    *,
    names: Sequence[str] = ("before", "after"),
    settings: AttentionSettings | None = None,
    rollout_settings: RolloutSettings | None = None,
    batch_size: int = 16,
    cka_tokens: _compare.CKATokens | None = "all",
    precision: str = "fp32",
    image_key: str | None = None,
    progress: bool = True,
) -> StreamedComparison:
    """`compare_models` over every image of `source`: the same tables, from running moments, per-image
    scalars and CKA Gram sums. Raw images (PIL, uint8) are preprocessed by each model its own way."""
    _compare.check_comparable(before, after)
    if len(names) != 2:
        raise InputError(f"names must be two strings, got {names!r}")
    if cka_tokens not in ("all", "cls", "patches", None):
        raise InputError(f"cka_tokens must be 'all', 'cls', 'patches' or None, got {cka_tokens!r}")
    check_precision(precision)
    settings = settings or AttentionSettings()
    rollout_settings = rollout_settings or RolloutSettings()
    ranks = current()
    acc_before, acc_after = _SummaryAccumulator(), _SummaryAccumulator()
    cka = _compare.CKAAccumulator() if cka_tokens is not None else None
    bar = _progress(source, progress, "compare models", ranks)
    for batch in iter_batches(source, batch_size=batch_size, ranks=ranks, image_key=image_key):
        results = []
        for model in (before, after):
            with forward_precision(precision, model.device):
                results.append(
                    _compare._run_batch(model, batch.pixels(model), settings, rollout_settings, cka is not None)
                )
        result_b, result_a = results
        if cka is not None:
            assert cka_tokens is not None  # cka is only made when tokens are given
            layouts = token_layout(before), token_layout(after)
            cka.update(
                torch.stack(
                    [_compare._stream_rows(_at_least_float32(s), cka_tokens, layouts[0]) for s in result_b.streams]
                ),
                torch.stack(
                    [_compare._stream_rows(_at_least_float32(s), cka_tokens, layouts[1]) for s in result_a.streams]
                ),
            )
            result_b.streams, result_a.streams = [], []
        acc_before.update(names[0], batch.start, result_b, rollout_settings, token_layout(before))
        acc_after.update(names[1], batch.start, result_a, rollout_settings, token_layout(after))
        bar.update(batch.size)
    bar.close()
    cka_result = None
    if cka is not None:
        merged = _compare.CKAAccumulator()
        for part in gather_objects(_cpu_cka(cka)):
            merge_cka(merged, part)
        n_layers = before.cfg.n_layers
        sites = (get_act_name("resid_pre", 0),) + tuple(get_act_name("resid_post", layer) for layer in range(n_layers))
        cka_result = _compare.CKAResult(
            cka=merged.result().float(),
            sites=sites,
            layers=tuple(range(-1, n_layers)),
            tokens=cka_tokens,  # type: ignore[arg-type]
            n_rows=merged.n,
        )
    try:
        weights = _compare.weight_change(before, after)
    except ModelMismatchError:
        weights = None
    return StreamedComparison(
        before=acc_before.result(names[0], before, settings, rollout_settings),
        after=acc_after.result(names[1], after, settings, rollout_settings),
        weights=weights,
        cka=cka_result,
    )


def stream_cka(
    before: HookedViT,
    after: HookedViT,
    source: Any,
    *,
    tokens: _compare.CKATokens = "all",
    batch_size: int = 16,
    precision: str = "fp32",
    progress: bool = True,
) -> _compare.CKAResult:
    """Linear CKA of the two models' residual streams over every image of `source` (the comparison's CKA)."""
    comparison = stream_compare_models(
        before, after, source, batch_size=batch_size, cka_tokens=tokens, precision=precision, progress=progress
    )
    return comparison.cka  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- ablation sweeps


class ShardedStore(MemoryStore):
    """The sweep store for several writers: every rank appends to its own shard
    `sweep-<key>.rank<r>.jsonl` and reads what every shard (`sweep-<key>.*.jsonl`) and the merged `sweep-<key>.jsonl` hold, so a
    relaunch (with any number of ranks) computes only what no rank finished. `merge()` folds the shards
    into the single-writer file and removes them."""

    def __init__(self, directory: str | Path, key: str, settings: dict[str, Any], ranks: Ranks) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.key = key
        self.settings = settings
        self.ranks = ranks
        self.merged = self.directory / f"sweep-{key}.jsonl"
        self.path = self.merged
        self.directory.mkdir(parents=True, exist_ok=True)
        if "shard" in inspect.signature(JsonlStore).parameters:  # a store that names and locks shards itself
            shard: dict[str, Any] = {"shard": f"rank{ranks.rank}"}
            self._own = JsonlStore(self.merged, key, settings, **shard)
        else:
            self._own = JsonlStore(self._shard(ranks.rank), key, settings)
        self.reload()

    def _shard(self, rank: int) -> Path:
        return self.directory / f"sweep-{self.key}.rank{rank}.jsonl"

    def _files(self) -> list[Path]:
        return store_files(self.merged)  # the merged file, rank shards, and shards of other single writers

    def reload(self) -> None:
        """Read every finished record of the merged file and all shards (half-written lines skipped)."""
        for path in self._files():
            for record in _read_records(path, self.key):
                self._remember(record)

    def write(self, records: list[dict[str, Any]]) -> None:
        self._own.write(records)
        super().write(records)

    def close(self) -> None:
        """Release this rank's shard (its writer lock, where the store keeps one)."""
        close = getattr(self._own, "close", None)
        if close is not None:
            close()

    def merge(self) -> None:
        """Rank 0: write every record into `sweep-<key>.jsonl` (atomically replaced) and delete the shards
        (except those a live writer of another job still holds)."""
        records = [store_header(self.key, self.settings), *(self.clean[b] for b in sorted(self.clean))]
        records += [self.cells[k] for k in sorted(self.cells)]
        atomic_write_text(self.merged, "".join(encode_record(r) for r in records))
        self._own.close()
        for shard in self.directory.glob(f"sweep-{self.key}.*.jsonl"):
            lock = shard.with_name(f".{shard.name}.lock")
            if lock.exists() and not is_stale(lock, read_holder(lock)):
                continue  # another job is writing this shard now
            shard.unlink()


def _read_records(path: Path, key: str) -> list[dict[str, Any]]:
    """The finished records of one store file (half-written last line skipped; damage named by file and line)."""
    return read_store_file(path, key)[1]


def _data_key(model: HookedViT, source: Any, targets: Tensor | None, batch_size: int) -> str:
    """The fingerprint of a sweep's data: of the tensor, or of a non-tensor source's first batch and its length."""
    if isinstance(source, Tensor):
        return tensor_fingerprint(source, targets)
    first = next(iter_batches(source, batch_size=batch_size, targets=targets), None)
    if first is None:
        raise BatchSourceError("the batch source is empty")
    return f"{tensor_fingerprint(first.pixels(model), first.targets)}:{count_images(source)}"


def stream_ablation_sweep(
    model: HookedViT,
    source: Any,
    cells: Sequence[CellLike],
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    targets: Tensor | None = None,
    batch_size: int = 32,
    max_batch: int = 8,
    store: str | Path | None = None,
    data_key: str | None = None,
    engine: Engine = "exact",
    precision: str = "fp32",
    image_key: str | None = None,
    progress: bool = True,
) -> AblationTable:
    """`ablation_sweep` over a batch source, its work dealt out across ranks.

    The work units are (batch, chunk of cells) pairs in the sweep's fixed plan; unit u belongs to rank
    u % world_size. Every record is a float64 sum, so the table does not depend on the split.
    store: a folder for the resumable results (one shard per rank while running, merged by rank 0 at
    the end; a relaunch computes only the cells no rank finished). data_key names the data in the
    store's settings (default: a fingerprint of the tensor, or of a non-tensor source's first batch and
    its length).
    """
    plan = SweepPlan.resolve(model, cells, metric, ablation, batch_size, max_batch, engine)
    check_precision(precision)
    cells, chunks, metric, ablation = plan.cells, plan.chunks(), plan.metric, plan.ablation
    metric.check_model(model)
    ranks = current()
    sink: MemoryStore
    if store is None:
        sink = MemoryStore()
    else:
        data_key = data_key if data_key is not None else _data_key(model, source, targets, batch_size)
        settings = plan.settings(model, data_key, precision=precision, dtype=str(model.dtype))
        key = settings_fingerprint(settings)
        if len(set(gather_objects(key))) > 1:
            raise BatchSourceError(
                "the ranks disagree on the model or the data (their sweep settings keys differ): every rank "
                "must load the same weights and read the same images"
            )
        sink = ShardedStore(store, key, settings, ranks)
    n_batches = 0
    bar = tqdm(desc=f"{ablation.name} ablation, {metric.name}", unit="cell", disable=not progress or not ranks.is_main)
    sweep = _CellSweep(model, plan, sink, bar)
    try:
        for batch in iter_batches(
            source, batch_size=batch_size, targets=targets, image_key=image_key, min_batch=ablation.min_batch
        ):
            n_batches = batch.index + 1
            owned = [chunk for c, chunk in enumerate(chunks) if ranks.owns(batch.index * len(chunks) + c)]
            pending = [chunk for chunk in owned if not all(sink.has_cell(batch.index, cells[i].name) for i in chunk)]
            needs_clean = ranks.owns(batch.index) and not sink.has_clean(batch.index)
            if not pending and not needs_clean:
                continue
            pixels = batch.pixels(model)
            if pixels.shape[0] < ablation.min_batch:
                raise BatchSourceError(
                    f"{ablation.name} ablation needs batches of at least {ablation.min_batch} images; batch "
                    f"{batch.index} has {pixels.shape[0]}"
                )
            with forward_precision(precision, model.device):
                sweep.run_batch(pixels, batch.targets_on(model), batch.index, pending)
    except BaseException:  # an interrupted sweep lets go of its shard (a rerun in this process resumes it)
        bar.close()
        sink.close()
        raise
    bar.close()
    if n_batches == 0:
        raise BatchSourceError("the batch source yielded no images")
    if isinstance(sink, ShardedStore):
        sink.close()
        barrier()
        sink.reload()
        barrier()
        if ranks.is_main:
            sink.merge()
        barrier()
    else:
        merged = MemoryStore()
        for part in gather_objects((sink.clean, sink.cells)):
            merged.clean.update(part[0])
            merged.cells.update(part[1])
        sink = merged
    return _table(sink, cells, n_batches, metric, ablation)


def stream_head_sweep(
    model: HookedViT,
    source: Any,
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    heads: HeadsLike = None,
    layers: Sequence[int] | None = None,
    **kwargs: Any,
) -> HeadSweepResult:
    """Each head ablated on its own (all heads, the heads of `layers`, or `heads`), streamed as
    `stream_ablation_sweep` (same keyword options)."""
    cells = single_head_cells(model, heads, layers)
    table = stream_ablation_sweep(model, source, cells, metric, ablation, **kwargs)
    return HeadSweepResult(**vars(table), heads_per_layer=heads_per_layer(model))


# ----------------------------------------------------------------------------------------- estimates


def stream_head_estimates(
    model: HookedViT,
    source: Any,
    metric: MetricLike,
    ablation: AblationLike = "zero",
    *,
    targets: Tensor | None = None,
    batch_size: int = 32,
    normalize_michel: bool = False,
    precision: str = "fp32",
    image_key: str | None = None,
    progress: bool = True,
) -> HeadEstimates:
    """`estimate_head_effects` over a batch source: per-batch float64 sums of the attribution-patching
    and Michel estimates, merged across ranks, divided by the number of images at the end."""
    metric = resolve_metric(metric)
    ablation = resolve_ablation(ablation)
    check_precision(precision)
    ranks = current()
    sums: dict[str, Any] = {"n": 0, "attribution": 0.0, "michel": 0.0, "clean": 0.0}
    bar = _progress(source, progress, "head estimates", ranks)
    for batch in iter_batches(
        source, batch_size=batch_size, targets=targets, ranks=ranks, image_key=image_key, min_batch=ablation.min_batch
    ):
        pixels = batch.pixels(model)
        with forward_precision(precision, model.device):
            part = estimate_head_effects(
                model,
                pixels,
                metric,
                ablation,
                targets=batch.targets_on(model),
                batch_size=pixels.shape[0],
                batch_offset=batch.index,
            )
        n = part.n_examples
        sums["n"] += n
        sums["attribution"] = sums["attribution"] + part.attribution * n
        sums["michel"] = sums["michel"] + part.michel * n
        sums["clean"] += part.clean * n
        bar.update(n)
    bar.close()
    parts = gather_objects(sums)
    n = sum(p["n"] for p in parts)
    if n == 0:
        raise BatchSourceError("the batch source yielded no images")
    return HeadEstimates.from_sums(
        np.sum([np.asarray(p["attribution"], dtype=np.float64) for p in parts], axis=0),
        np.sum([np.asarray(p["michel"], dtype=np.float64) for p in parts], axis=0),
        math.fsum(p["clean"] for p in parts),
        n,
        metric,
        ablation,
        normalize_michel,
    )


# ----------------------------------------------------------------------------------------- direct logit attribution


@dataclass
class DLASummary:
    """Direct logit attribution summed over a streamed dataset: per component, the mean and mean |.|.

    Attributes:
        sums, abs_sums: [component] float64 sums over images of the attribution and its absolute value.
        n_images: images seen. max_abs_error: max |sum of components - model logit| over the images.
    """

    labels: list[str]
    kinds: list[str]
    layers: list[int]
    heads: list[int]
    sums: Float[Tensor, " component"]
    abs_sums: Float[Tensor, " component"]
    n_images: int
    max_abs_error: float

    def summary_frame(self) -> pd.DataFrame:
        """The columns of `DirectLogitAttribution.summary_frame()`."""
        import pandas as pd

        mean, mean_abs = self.sums / self.n_images, self.abs_sums / self.n_images
        return pd.DataFrame(
            {
                "component": self.labels,
                "kind": self.kinds,
                "layer": self.layers,
                "head": self.heads,
                "mean_attribution": mean.tolist(),
                "mean_abs_attribution": mean_abs.tolist(),
            }
        )


def stream_direct_logit_attribution(
    model: HookedViT,
    source: Any,
    classes: ClassSpec | str = "predicted",
    *,
    targets: Tensor | None = None,
    split_value_bias: bool = False,
    batch_size: int = 32,
    precision: str = "fp32",
    image_key: str | None = None,
    progress: bool = True,
) -> DLASummary:
    """Direct logit attribution of every image of `source`, summarised per component as it goes.

    classes: "predicted", a class index or name, or "targets" (each batch's labels).
    """
    check_precision(precision)
    ranks = current()
    local: dict[str, Any] = {"n": 0, "sums": None, "abs_sums": None, "error": 0.0, "meta": None}
    bar = _progress(source, progress, "direct logit attribution", ranks)
    for batch in iter_batches(source, batch_size=batch_size, targets=targets, ranks=ranks, image_key=image_key):
        chosen = classes
        if isinstance(classes, str) and classes == "targets":
            if batch.targets is None:
                raise BatchSourceError("classes='targets' needs a source with labels")
            chosen = batch.targets
        with forward_precision(precision, model.device):
            dla = direct_logit_attribution(model, batch.pixels(model), chosen, split_value_bias, batch_size=None)
        values = dla.attributions.detach().double().cpu()
        local["sums"] = values.sum(0) if local["sums"] is None else local["sums"] + values.sum(0)
        local["abs_sums"] = (
            values.abs().sum(0) if local["abs_sums"] is None else local["abs_sums"] + values.abs().sum(0)
        )
        local["n"] += values.shape[0]
        local["error"] = max(local["error"], dla.max_abs_error)
        local["meta"] = (dla.labels, dla.kinds, dla.layers, dla.heads)
        bar.update(batch.size)
    bar.close()
    parts = [p for p in gather_objects(local) if p["n"]]
    if not parts:
        raise BatchSourceError("the batch source yielded no images")
    labels, kinds, layers, heads = parts[0]["meta"]
    return DLASummary(
        labels=labels,
        kinds=kinds,
        layers=layers,
        heads=heads,
        sums=torch.stack([p["sums"] for p in parts]).sum(0),
        abs_sums=torch.stack([p["abs_sums"] for p in parts]).sum(0),
        n_images=sum(p["n"] for p in parts),
        max_abs_error=max(p["error"] for p in parts),
    )


__all__ = [
    "DLASummary",
    "ImageBatch",
    "Moments",
    "ShardedStore",
    "StreamedAttentionMetrics",
    "StreamedComparison",
    "StreamedSummary",
    "count_images",
    "iter_batches",
    "merge_cka",
    "stream_ablation_sweep",
    "stream_attention_metrics",
    "stream_attention_summary",
    "stream_cka",
    "stream_compare_models",
    "stream_direct_logit_attribution",
    "stream_head_estimates",
    "stream_head_sweep",
    "stream_per_image",
]
