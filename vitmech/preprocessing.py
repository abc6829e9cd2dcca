"""Image preprocessing carried by each model: the source checkpoint's own resize, crop and normalisation.

timm weights mostly use ImageNet mean/std with resize-shorter-side-then-centre-crop (crop_pct 0.875-0.9);
google/vit-base-patch16-224 squashes to 224 x 224 and normalises with mean = std = 0.5. The loaders fill
a `Preprocessing` from the source's own config; `preprocess` applies it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from vitmech.errors import ImageInputError, InputError, InputTypeError, UnreadableImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

ResizeMode = Literal["squash", "shortest_edge_crop"]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path
"""What `preprocess` takes as one image: a PIL image, a uint8 / uint16 / [0, 1] float array ([H, W], [H, W, C]
or [B, H, W, C]), a uint8 tensor ([C, H, W] or [B, C, H, W]), or an image file's path (`read_image`)."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model input.

    Attributes:
        image_size: output side in pixels (square).
        mean, std: per-channel normalisation applied to [0, 1] pixel values.
        interpolation: PIL resampling filter name ("bicubic", "bilinear", ...).
        resize_mode: "squash" resizes both sides to floor(image_size / crop_pct), ignoring the aspect
            ratio, then centre-crops (with crop_pct 1: straight to image_size, as HF ViTImageProcessor);
            "shortest_edge_crop" resizes the shorter side to floor(image_size / crop_pct), then
            centre-crops image_size x image_size (timm eval transform).
        crop_pct: fraction of the resized image kept by the centre crop.
        source: where these values came from (for reports).
    """

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_mode: ResizeMode = "shortest_edge_crop"
    crop_pct: float = 0.9
    source: str = "default"

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise InputError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.resize_mode not in ("squash", "shortest_edge_crop"):
            raise InputError(f"resize_mode must be 'squash' or 'shortest_edge_crop', got {self.resize_mode!r}")
        if len(self.mean) != len(self.std):
            raise InputError(f"mean {self.mean} and std {self.std} differ in length")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std must be positive, got {self.std}")
        if not 0 < self.crop_pct <= 1:
            raise InputError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        data = dict(data)
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(**data)


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image, scaling 16-bit, 32-bit integer and float images correctly.

    PIL's own `convert("RGB")` clips those modes at 255 (a 16-bit photo turns almost white). Here:
    16-bit images ("I;16*", or "I" with values in [0, 65535]) are divided by 65535; float ("F") images with
    values in [0, 1] are multiplied by 255; any other range is min-max scaled to [0, 255].
    """
    if image.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1"):
        return image.convert("RGB")
    arr = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
        scaled = arr / 65535.0
    elif image.mode == "F" and arr.min() >= 0 and arr.max() <= 1:
        scaled = arr
    else:
        low, high = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - low) / (high - low) if high > low else np.zeros_like(arr)
    gray = Image.fromarray(np.clip(np.round(np.nan_to_num(scaled) * 255), 0, 255).astype(np.uint8))
    return gray.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """An RGB PIL image from a file; 16-bit and float images are scaled to 8 bits by their own range
    (`to_rgb8`). Raises UnreadableImageError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb8(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint16 arrays / 65535 and float arrays in [0, 1] to uint8 0-255; others refused with the reason."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1:
            return np.round(array * 255.0).astype(np.uint8)
        raise InputTypeError(
            f"preprocess takes float arrays with values in [0, 1]; got range [{array.min():.4g}, {array.max():.4g}]. "
            "Scale them to [0, 1] (or give uint8 / uint16)."
        )
    raise InputTypeError(f"preprocess takes uint8, uint16 or [0, 1] float arrays; got dtype {array.dtype}")


def _to_pil_list(images: ImageLike | Sequence[ImageLike]) -> list[Image.Image]:
    """Accept one image or many: PIL, uint8 arrays [H,W], [H,W,C] or [B,H,W,C], uint8 tensors [C,H,W] or [B,C,H,W],
    file paths."""
    if isinstance(images, Image.Image):
        return [to_rgb8(images) if images.mode in ("I", "F") or images.mode.startswith("I;16") else images]
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise InputTypeError(
                f"preprocess takes uint8 images (0-255); got a {images.dtype} tensor. "
                "A float tensor that is already normalised can go straight to the model."
            )
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ImageInputError(f"uint8 tensor must be [C,H,W] or [B,C,H,W], got shape {tuple(images.shape)}")
        return _to_pil_list(images.permute(0, 2, 3, 1).cpu().numpy())
    if isinstance(images, np.ndarray):
        images = _array_to_uint8(images)
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            arr = images[..., 0] if images.ndim == 3 and images.shape[-1] == 1 else images
            return [Image.fromarray(arr)]
        if images.ndim == 4:
            return [img for a in images for img in _to_pil_list(a)]
        raise ImageInputError(f"uint8 array must be [H,W], [H,W,C] or [B,H,W,C], got shape {images.shape}")
    if isinstance(images, (str, Path)):
        return [read_image(images)]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ImageInputError("preprocess got an empty list of images")
        return [img for item in images for img in _to_pil_list(item)]
    raise InputTypeError(
        f"cannot preprocess an object of type {type(images).__name__}; give PIL images, uint8 arrays or file paths"
    )


MAX_ASPECT = 3.0
"""Images more elongated than this get a warning: the model's transform squashes or crops them hard."""


def _resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    resample = _RESAMPLE[spec.interpolation]
    size = spec.image_size
    scale_size = math.floor(size / spec.crop_pct)
    w, h = image.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        what = (
            f"squashes it {max(w, h) / min(w, h):.1f}:1 to a square"
            if spec.resize_mode == "squash"
            else f"keeps only its central {min(w, h)} x {min(w, h)} square"
        )
        warnings.warn(
            f"a {w} x {h} image (aspect ratio beyond {MAX_ASPECT:g}:1): this model's transform ({spec.source}) {what}; "
            "crop or pad it yourself if that loses what matters",
            stacklevel=4,
        )
    if spec.resize_mode == "squash":
        new_w = new_h = scale_size
    elif w <= h:
        new_w, new_h = scale_size, max(1, int(scale_size * h / w))
    else:
        new_w, new_h = max(1, int(scale_size * w / h)), scale_size
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample=resample)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """The resize and centre crop of `spec` (no normalisation): an image_size x image_size PIL image."""
    return _resize_and_crop(image, spec)


def preprocess(
    images: ImageLike | Sequence[ImageLike], spec: Preprocessing, n_channels: int = 3
) -> Float[torch.Tensor, "batch channel height width"]:
    """Turn PIL images, uint8 arrays or image files into a normalised float32 batch [B, C, S, S]
    (S = spec.image_size)."""
    if len(spec.mean) != n_channels:
        raise InputError(f"preprocessing has {len(spec.mean)} channel means but the model takes {n_channels} channels")
    mode = "RGB" if n_channels == 3 else "L" if n_channels == 1 else None
    if mode is None:
        raise InputError(f"preprocess supports 1- or 3-channel models, not {n_channels}")
    out = []
    for image in _to_pil_list(images):
        try:
            image = _resize_and_crop(image.convert(mode), spec)
        except (OSError, SyntaxError) as err:  # a truncated or corrupt file, decoded lazily by PIL
            name = getattr(image, "filename", "") or "an image"
            raise ImageInputError(f"cannot read {name}: {err}") from err
        arr = np.asarray(image, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[..., None]
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    batch = torch.stack(out)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (batch - mean) / std
