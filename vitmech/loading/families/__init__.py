"""The families vitmech ports, one converter module each (docs/model.md#adding-a-family).

A source model goes to the first family of its source whose `matches` accepts it. Adding a family is
one module here (its `NAME`, `SOURCE` and functions, read by `family_of`) plus its line in `FAMILY_MODULES`.
"""

from __future__ import annotations

from typing import Any

from vitmech.errors import UnknownNameError, UnsupportedModelError
from vitmech.loading.families import hf_clip, hf_dinov3, hf_vit, open_clip_vit, timm_eva, timm_vit
from vitmech.loading.families.base import Converted, Family, check_supported, convert, export, family_of

# model classes of families not ported yet, with the feature that stops them
KNOWN_UNSUPPORTED: dict[str, str] = {}

FAMILY_MODULES = (timm_vit, timm_eva, hf_vit, hf_clip, hf_dinov3, open_clip_vit)
FAMILIES: tuple[Family, ...] = tuple(family_of(module) for module in FAMILY_MODULES)


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
    raise UnknownNameError(f"no family {name!r}; known: {[f.name for f in FAMILIES]}")


__all__ = [
    "FAMILIES",
    "FAMILY_MODULES",
    "Converted",
    "Family",
    "by_name",
    "check_supported",
    "convert",
    "export",
    "family_for",
    "family_of",
]
