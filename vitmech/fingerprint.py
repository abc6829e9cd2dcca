"""Content fingerprints (hashes) of tensors, models and settings, used to key resumable sweeps."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn


def _update(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)


def tensor_fingerprint(*tensors: torch.Tensor | None) -> str:
    """A 16-hex-digit hash of the tensors' dtypes, shapes and bytes (None counts as absent)."""
    digest = hashlib.blake2b(digest_size=8)
    for t in tensors:
        if t is None:
            digest.update(b"none")
        else:
            _update(digest, t)
    return digest.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, bytes): any weight edit changes it."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """Hash of a JSON-able settings dict (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
