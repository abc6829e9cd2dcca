"""timm models -> vitmech: pick the family, convert by its key map (`vitmech.loading.families`).

Returns a `Converted` (config, state dict, preprocessing, class names); `HookedViT.from_timm` builds the model.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import nn

from vitmech.errors import InputTypeError, UnknownModelError
from vitmech.loading.families import Converted, convert, family_for
from vitmech.loading.peft import merged
from vitmech.preprocessing import Preprocessing


def _timm_model(model_or_name: Any, timm_kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(model_or_name, str):
        import timm

        timm_kwargs.setdefault("pretrained", True)
        _check_timm_name(model_or_name)
        return timm.create_model(model_or_name, **timm_kwargs)
    if timm_kwargs:
        raise InputTypeError(f"timm keyword arguments {sorted(timm_kwargs)} only apply when a name is given")
    return model_or_name


def _check_timm_name(name: str) -> None:
    """UnknownModelError with close timm names unless timm knows `name` (or it is a hub name)."""
    import timm

    if timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:", "timm/")):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise UnknownModelError(f"unknown timm model {name!r}.{hint}")


def model_name(model: Any) -> str:
    return getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)


def convert_timm(
    model_or_name: Any, *, image_size: int | None = None, adapter: str | Path | None = None, **timm_kwargs: Any
) -> Converted:
    """Convert a timm model instance (or a peft model wrapping one), or create one by name (pretrained=True
    unless given).

    image_size: run at another image size (position embeddings resampled as timm's `dynamic_img_size`).
    adapter: a peft adapter directory (LoRA) to merge into the base model first."""
    model = merged(_timm_model(model_or_name, timm_kwargs), adapter)
    family = family_for(model, "timm")
    return convert(family, model, f"timm model {model_name(model)!r}", image_size=image_size)


def unsupported_timm_features(model: Any) -> list[str]:
    """Names of the features of this timm model that HookedViT cannot represent (empty when supported)."""
    try:
        family = family_for(model, "timm")
    except Exception as err:  # no family at all: the class is the unsupported feature
        return [str(err)]
    return family.unsupported(model)


def preprocessing_from_timm(model: Any) -> Preprocessing:
    """The eval transform timm itself would build for this model (`resolve_data_config`)."""
    family = family_for(model, "timm")
    return family.preprocessing(model, family.config(model))
