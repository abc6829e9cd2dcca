"""In-memory training sets and the step -> batch map that makes runs resumable.

Images are kept as uint8 [N, S, S, C] (4x smaller than float) and turned into model input per batch
with the model's own `Preprocessing`, so training input equals `model.preprocess(images)`. The sample order is a pure function of (seed, step): the stream of epochs, each a seeded
permutation, cut into consecutive batches. A resumed run therefore sees exactly the batches an
uninterrupted one would, without storing any sampler state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from vitmech.errors import InputError
from vitmech.preprocessing import Preprocessing, preprocess
from vitmech.train.errors import TrainingDataError

Task = Literal["classification", "regression"]
Augment = Literal["hflip", "dihedral"] | None


@dataclass
class ArrayDataset:
    """Images and targets held in memory.

    Attributes:
        images: uint8 [N, S, S, C] (channels last, as generators and PIL give them).
        targets: int64 [N] class indices (classification) or float32 [N, K] (regression).
        names: class names (classification) or target names (regression); len = C or K.
        task: "classification" or "regression".
    """

    images: UInt8[Tensor, "n height width channel"]
    targets: Tensor
    names: list[str]
    task: Task

    def __post_init__(self) -> None:
        self.images = torch.as_tensor(self.images)
        self.targets = torch.as_tensor(self.targets)
        self.names = list(self.names)
        if self.task not in ("classification", "regression"):
            raise TrainingDataError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise TrainingDataError(
                f"images must be uint8 [N, S, S, C], got {self.images.dtype} {list(self.images.shape)}"
            )
        n = len(self.images)
        if n == 0:
            raise TrainingDataError("the dataset is empty: no images to train or evaluate on")
        if len(self.targets) != n:
            raise TrainingDataError(f"{n} images but {len(self.targets)} targets")
        if self.task == "classification":
            self._check_labels()
        else:
            self._check_regression_targets()

    def _check_labels(self) -> None:
        if self.targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or self.targets.ndim != 1:
            raise TrainingDataError(
                f"class labels must be integers [N], got {self.targets.dtype} {list(self.targets.shape)}"
            )
        self.targets = self.targets.long()
        low, high = int(self.targets.min()), int(self.targets.max())
        if low < 0 or high >= len(self.names):
            raise TrainingDataError(
                f"labels span [{low}, {high}] but there are {len(self.names)} class names; labels must be in [0, {len(self.names)})"
            )

    def _check_regression_targets(self) -> None:
        if not self.targets.is_floating_point():
            self.targets = self.targets.float()
        if self.targets.ndim == 1:
            self.targets = self.targets[:, None]
        if self.targets.ndim != 2 or self.targets.shape[1] != len(self.names):
            raise TrainingDataError(
                f"regression targets must be [N, {len(self.names)}] (one column per name), got {list(self.targets.shape)}"
            )
        bad = ~torch.isfinite(self.targets)
        if bool(bad.any()):
            rows = torch.nonzero(bad.any(dim=1)).flatten()[:10].tolist()
            cols = [self.names[c] for c in torch.nonzero(bad.any(dim=0)).flatten().tolist()]
            raise TrainingDataError(
                f"{int(bad.sum())} regression targets are NaN or infinite (targets {cols}; first rows {rows}); "
                "drop or impute those rows before training"
            )
        self.targets = self.targets.float()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_outputs(self) -> int:
        """Head size this task needs: number of classes or of targets."""
        return len(self.names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: Sequence[int] | Tensor) -> ArrayDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ArrayDataset(self.images[index], self.targets[index], self.names, self.task)

    def split(self, sizes: Sequence[int], seed: int = 0) -> list[ArrayDataset]:
        """Disjoint random subsets of the given sizes (seeded); sizes must not exceed len(self)."""
        if sum(sizes) > len(self):
            raise TrainingDataError(f"split sizes {list(sizes)} add up to more than the {len(self)} rows")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        out, start = [], 0
        for size in sizes:
            if size <= 0:
                raise TrainingDataError(f"split sizes must be positive, got {list(sizes)}")
            out.append(self.subset(perm[start : start + size]))
            start += size
        return out


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A torch generator that depends only on (seed, step, stream)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> Int[Tensor, " batch"]:
    """Row indices of batch `step`: positions [step*B, (step+1)*B) of the concatenated seeded epochs."""
    if n <= 0:
        raise TrainingDataError("cannot draw batches from an empty dataset")
    start = step * batch_size
    out = []
    position = start
    while position < start + batch_size:
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, stream=1))
        take = min(n - offset, start + batch_size - position)
        out.append(perm[offset : offset + take])
        position += take
    return torch.cat(out)


def augment_batch(
    images: UInt8[Tensor, "batch height width channel"], kind: Augment, generator: torch.Generator
) -> UInt8[Tensor, "batch height width channel"]:
    """Label-preserving augmentation: "hflip" (random horizontal flip) or "dihedral" (random flip and
    rotation by a multiple of 90 degrees, for rotation-invariant images such as galaxies); None: as is."""
    if kind is None:
        return images
    if kind not in ("hflip", "dihedral"):
        raise InputError(f"augment must be None, 'hflip' or 'dihedral', got {kind!r}")
    out = images.clone()
    flips = torch.rand(len(images), generator=generator) < 0.5
    out[flips] = out[flips].flip(2)
    if kind == "dihedral":
        turns = torch.randint(0, 4, (len(images),), generator=generator)
        for k in (1, 2, 3):
            rows = turns == k
            if rows.any():
                out[rows] = torch.rot90(out[rows], k, dims=(1, 2))
    return out


def to_model_input(
    images: UInt8[Tensor, "batch height width channel"], preprocessing: Preprocessing
) -> Float[Tensor, "batch channel size size"]:
    """uint8 channels-last images -> the model's normalised float input [B, C, S, S], equal to
    `model.preprocess(images)`.

    Fast path (pure tensor ops) when the images are already square at `preprocessing.image_size` and the
    preprocessing does not crop (squash with crop_pct 1, as the mini models and google/vit-base-patch16-224):
    then resizing is the identity and only the normalisation remains. Otherwise `preprocess` (PIL) runs.
    """
    size = preprocessing.image_size
    if images.shape[1] != size or images.shape[2] != size or preprocessing.crop_pct != 1.0:
        return preprocess(images.cpu().numpy(), preprocessing, n_channels=images.shape[-1])
    x = rearrange(images, "b h w c -> b c h w").float().div_(255.0)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


__all__ = [
    "ArrayDataset",
    "Augment",
    "Task",
    "augment_batch",
    "batch_indices",
    "step_generator",
    "to_model_input",
]
