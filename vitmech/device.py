"""Where the model runs and in what precision.

    device = resolve_device(None)            # "cuda" when present, else "cpu" (also "mps", "cuda:1", ...)
    with forward_precision("bf16", device):  # autocast the forward pass; metrics are reduced in float32
        logits = model(images)

Analyses move their inputs to the model's device (`to_model`). Reduced precision is opt-in
(`precision="bf16"` or `"fp16"`; the default `"fp32"` changes nothing): the forward pass runs under
`torch.autocast`, and every metric, running sum and table downstream is float32 or float64.
The error it brings is measured in docs/performance.md#reduced-precision and bounded by tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, overload

import torch

from vitmech.errors import RuntimeSettingError

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_KINDS = ("cpu", "cuda", "mps")


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU. Under a launcher (torchrun sets LOCAL_RANK) each process
    on a node takes its own GPU, `cuda:<LOCAL_RANK mod GPUs>`."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return torch.device("cuda")
    return torch.device("cuda", int(local_rank) % torch.cuda.device_count())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch.device from "cpu", "cuda", "cuda:1", "mps" or None (the default device); clear errors
    for unknown names and for devices this machine lacks."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise RuntimeSettingError(f"device must be one of {DEVICE_KINDS} (or 'cuda:N'), got {device!r}") from err
    if resolved.type not in DEVICE_KINDS:
        raise RuntimeSettingError(f"device must be one of {DEVICE_KINDS} (or 'cuda:N'), got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeSettingError(f"device {device!r} asked for, but torch sees no CUDA GPU on this machine")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeSettingError(f"device {device!r} asked for, but the MPS backend is not available here")
    return resolved


def check_precision(precision: str) -> Precision:
    """`precision` if it is one of "fp32", "bf16", "fp16", else a clear error."""
    if precision not in PRECISIONS:
        raise RuntimeSettingError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


@contextlib.contextmanager
def forward_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast the enclosed forward passes to bf16 / fp16 on `device` ("fp32": no change)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        yield
        return
    device_type = torch.device(device).type
    if device_type == "cpu" and dtype == torch.float16:
        raise RuntimeSettingError("precision 'fp16' needs a GPU; use 'bf16' on the CPU")
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def to_model(model: HookedViT, images: torch.Tensor) -> torch.Tensor:
    """Float images on the model's device and in its dtype (no copy when already there)."""
    return images.to(device=model.device, dtype=model.dtype, non_blocking=True)


@overload
def on_model_device(model: HookedViT, x: torch.Tensor) -> torch.Tensor: ...
@overload
def on_model_device(model: HookedViT, x: None) -> None: ...


def on_model_device(model: HookedViT, x: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor (images, targets) moved to the model's device, dtype unchanged; None stays None."""
    return x if x is None or x.device == model.device else x.to(model.device)


__all__ = [
    "on_model_device",
    "DEVICE_KINDS",
    "PRECISIONS",
    "Precision",
    "check_precision",
    "default_device",
    "forward_precision",
    "resolve_device",
    "to_model",
]
