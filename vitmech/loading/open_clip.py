"""open_clip models -> vitmech: the image tower of a CLIP model (`model.visual`) or the tower itself.

Returns a `Converted`; `HookedViT.from_open_clip` builds the model. Build the open_clip model with
`open_clip.create_model(name, pretrained=...)` (weights from its own cache or hub).
"""

from __future__ import annotations

from typing import Any

from vitmech.loading.families import Converted, convert, family_for
from vitmech.loading.families.open_clip_vit import _tower


def convert_open_clip(model: Any, *, image_size: int | None = None) -> Converted:
    """Convert an open_clip CLIP model's image tower (its `.visual`), or a VisionTransformer tower."""
    tower = _tower(model)
    family = family_for(tower, "open_clip")
    return convert(family, tower, f"open_clip {type(tower).__name__}", image_size=image_size)
