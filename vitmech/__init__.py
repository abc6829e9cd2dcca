"""vitmech: mechanistic interpretability for Vision Transformers.

from vitmech import HookedViT
model = HookedViT.from_pretrained("vit_base_patch16_224")      # timm name, hub id, path or shipped model
logits, cache = model.run_with_cache(model.preprocess(images))
cache["pattern", 11]                                              # [batch, head, query, key]

A model built from a config (random weights), run on one blank image:

>>> import torch
>>> from vitmech import HookedViT, ViTConfig
>>> cfg = ViTConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, image_size=32, patch_size=16, n_classes=3)
>>> model = HookedViT(cfg, seed=0).eval()
>>> logits, cache = model.run_with_cache(torch.zeros(1, 3, 32, 32))
>>> logits.shape, cache["pattern", 1].shape  # 1 class token + 2 x 2 patches
(torch.Size([1, 3]), torch.Size([1, 2, 5, 5]))

The names below are imported on first use, so `import vitmech` (and the `vitmech` command's --help) does
not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vitmech.errors import (
    CheckpointMismatchError,
    ImageInputError,
    IndexOutOfRangeError,
    InputError,
    InputTypeError,
    PathNotFoundError,
    UnknownModelError,
    UnknownNameError,
    UnsupportedModelError,
    VitmechError,
)

if TYPE_CHECKING:
    from vitmech.config import ViTConfig
    from vitmech.memory import set_cache_budget
    from vitmech.model.hooked_vit import HookedViT
    from vitmech.preprocessing import Preprocessing

__version__ = "0.1.0"

_LAZY = {
    "HookedViT": "vitmech.model.hooked_vit",
    "Preprocessing": "vitmech.preprocessing",
    "ViTConfig": "vitmech.config",
    "set_cache_budget": "vitmech.memory",
}

__all__ = [
    "CheckpointMismatchError",
    "HookedViT",
    "ImageInputError",
    "IndexOutOfRangeError",
    "InputError",
    "InputTypeError",
    "PathNotFoundError",
    "Preprocessing",
    "UnknownModelError",
    "UnknownNameError",
    "UnsupportedModelError",
    "ViTConfig",
    "VitmechError",
    "set_cache_budget",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitmech' has no attribute {name!r}")
