"""vitmech: mechanistic interpretability for Vision Transformers.

from vitmech import HookedViT
model = HookedViT.from_pretrained("vit_base_patch16_224")      # timm name, hub id, path or shipped model
logits, cache = model.run_with_cache(model.preprocess(images))
cache["pattern", 11]                                              # [batch, head, query, key]
"""

from vitmech.config import ViTConfig
from vitmech.errors import CheckpointMismatchError, ImageInputError, UnknownModelError, UnsupportedModelError
from vitmech.memory import set_cache_budget
from vitmech.model.hooked_vit import HookedViT
from vitmech.preprocessing import Preprocessing

__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError",
    "HookedViT",
    "ImageInputError",
    "Preprocessing",
    "UnknownModelError",
    "UnsupportedModelError",
    "ViTConfig",
    "set_cache_budget",
]
