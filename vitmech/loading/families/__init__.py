"""The families vitmech ports, one converter module each (docs/model.md#adding-a-family).

A source model goes to the first family of its source whose `matches` accepts it. Adding a family is
one module here plus its line in `FAMILIES`.
"""

from __future__ import annotations

from typing import Any

from vitmech.errors import UnsupportedModelError
from vitmech.loading.families import hf_clip, hf_vit, open_clip_vit, timm_vit
from vitmech.loading.families.base import Converted, Family, check_supported, convert, export

# model classes of families not ported yet, with the feature that stops them
KNOWN_UNSUPPORTED = {
    "Eva": "rotary position embeddings (EVA-02, DINOv3)",
    "DINOv3ViTModel": "rotary position embeddings (DINOv3)",
}

FAMILIES: tuple[Family, ...] = (timm_vit.FAMILY, hf_vit.FAMILY, hf_clip.FAMILY, open_clip_vit.FAMILY)


def family_for(model: Any, source: str) -> Family:
    """The family that ports `model` from `source` ("timm", "hf", "open_clip"); names what is supported else."""
    candidates = [f for f in FAMILIES if f.source == source]
    for family in candidates:
        if family.matches(model):
            return family
    known = ", ".join(f.name for f in candidates) or "none"
    name = type(model).__name__
    feature = f" ({KNOWN_UNSUPPORTED[name]})" if name in KNOWN_UNSUPPORTED else ""
    raise UnsupportedModelError(f"model class {name}{feature} is not a supported {source} model (supported: {known})")


def by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"no family {name!r}; known: {[f.name for f in FAMILIES]}")


__all__ = ["FAMILIES", "Converted", "Family", "by_name", "check_supported", "convert", "export", "family_for"]
