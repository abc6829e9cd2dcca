"""HuggingFace models -> vitmech: pick the family (`vitmech.loading.families`), convert by its key map.

Returns a `Converted` (config, state dict, preprocessing, class names); `HookedViT.from_hf` builds the
model. Hub ids and local directories load through transformers' own `from_pretrained`, whose load report
is checked (no weight initialised at random or dropped silently).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from vitmech.errors import CheckpointMismatchError, HubError, InputTypeError, UnsupportedModelError
from vitmech.loading._state import raise_on_mismatch
from vitmech.loading.families import Converted, convert, family_for
from vitmech.loading.families.hf_vit import (
    HF_ACTS,
    LAYER_KEYS,
    LAYER_PREFIX,
    VITMECH_TO_HF_ACT,
    detect_layout,
    processor_defaults,
)
from vitmech.loading.peft import merged
from vitmech.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

__all__ = [
    "HF_ACTS",
    "LAYER_KEYS",
    "LAYER_PREFIX",
    "VITMECH_TO_HF_ACT",
    "check_hf_loading_info",
    "convert_hf",
    "default_hf_preprocessing",
    "detect_layout",
    "preprocessing_from_hf_processor",
]

POOLER_PREFIXES = ("pooler.", "vit.pooler.", "deit.pooler.")
# model_type -> the class a directory or hub id loads when its config names no architecture
DEFAULT_CLASSES = {
    "vit": "ViTForImageClassification",
    "deit": "DeiTForImageClassificationWithTeacher",
    "vit_mae": "ViTMAEModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "clip": "CLIPVisionModelWithProjection",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "dinov3_vit": "DINOv3ViTModel",
}
# classes a saved config may name whose image tower loads through another class
TOWER_CLASSES = {"CLIPModel": "CLIPVisionModelWithProjection", "SiglipModel": "SiglipVisionModel"}


_PIL_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def preprocessing_from_hf_processor(processor: Any, image_size: int, source: str) -> Preprocessing:
    """Map a ViTImageProcessor's resize/normalise settings onto a Preprocessing."""
    size = getattr(processor, "size", None) or {}
    height = size.get("height") or size.get("shortest_edge") or image_size
    if height != image_size:
        logger.warning("processor size %s differs from the model's %dpx; using the model's", size, image_size)
    resample = getattr(processor, "resample", 2)
    resample = getattr(resample, "value", resample)
    interpolation = _PIL_NAMES.get(int(resample), "bilinear") if isinstance(resample, int) else str(resample).lower()
    if interpolation not in _PIL_NAMES.values():
        interpolation = "bilinear"
    do_normalize = getattr(processor, "do_normalize", True)
    mean = tuple(processor.image_mean) if do_normalize else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std) if do_normalize else (1.0, 1.0, 1.0)
    return Preprocessing(
        image_size=image_size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        resize_mode="squash",
        crop_pct=1.0,
        source=source,
    )


def default_hf_preprocessing(image_size: int) -> Preprocessing:
    """ViTImageProcessor defaults: squash to size, bilinear, mean = std = 0.5."""
    return processor_defaults("vit", image_size)


def check_hf_loading_info(info: dict[str, Any], what: str) -> None:
    """Refuse what transformers' from_pretrained only reports: weights it had to initialise at random
    (missing), weights it dropped (unexpected; a pooler the class has no place for is only logged),
    and shape mismatches. Raises CheckpointMismatchError listing them."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    pooler = [k for k in unexpected if k.startswith(("pooler.", "vit.pooler."))]
    if pooler:
        logger.warning("%s: leaving out the pooler %s (HookedViT returns final-LayerNorm CLS features)", what, pooler)
        unexpected = [k for k in unexpected if k not in pooler]
    mismatched = sorted(
        f"{entry[0]}: checkpoint {tuple(entry[1])} vs model {tuple(entry[2])}"
        if isinstance(entry, (tuple, list)) and len(entry) == 3
        else str(entry)
        for entry in info.get("mismatched_keys") or []
    )
    errors = [str(e) for e in info.get("error_msgs") or []]
    raise_on_mismatch(what, missing, unexpected, mismatched, errors)


def _hf_class(config: Any, id_or_path: str) -> Any:
    import transformers

    kind = getattr(config, "model_type", None)
    if kind not in DEFAULT_CLASSES:
        raise UnsupportedModelError(
            f"{id_or_path!r} is a {kind!r} model; supported HuggingFace model types: {sorted(DEFAULT_CLASSES)}"
        )
    archs = [TOWER_CLASSES.get(a, a) for a in (getattr(config, "architectures", None) or [])]
    name = archs[0] if archs else DEFAULT_CLASSES[kind]
    if kind == "vit" and not archs and getattr(config, "num_labels", 0) == 0:
        name = "ViTModel"
    if not hasattr(transformers, name):
        raise UnsupportedModelError(f"{id_or_path!r} names the class {name!r}, which transformers does not have")
    return getattr(transformers, name)


def _load_hf_model(id_or_path: str, **kwargs: Any) -> tuple[nn.Module, Preprocessing | None]:
    """transformers' own loaders (hub or local directory); the class follows config.architectures."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(id_or_path)
    except OSError as err:
        raise HubError(
            f"could not load a HuggingFace config for {id_or_path!r}: {err}. "
            "A hub id needs network access (or a local cache); a local directory needs config.json."
        ) from err
    cls = _hf_class(config, id_or_path)
    kwargs.setdefault("attn_implementation", "eager")
    if cls.__name__ in TOWER_CLASSES.values() and hasattr(config, "vision_config"):
        config = config.vision_config if cls.__name__ == "SiglipVisionModel" else config
    try:
        model, info = cls.from_pretrained(id_or_path, output_loading_info=True, **kwargs)
    except RuntimeError as err:
        if "mismatch" not in str(err):
            raise
        raise CheckpointMismatchError(
            f"HuggingFace weights of {id_or_path!r} do not fit its config: shape mismatches "
            f"(transformers' load report, logged above, lists them): {err}"
        ) from err
    check_hf_loading_info(info, f"HuggingFace checkpoint {id_or_path!r} ({cls.__name__})")
    prep = None
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(id_or_path)
        image_size = getattr(model.config, "vision_config", model.config).image_size
        prep = preprocessing_from_hf_processor(processor, image_size, source=f"image processor of {id_or_path}")
    except (OSError, ValueError, TypeError):
        logger.info("no image processor config for %s; using the family's defaults", id_or_path)
    return model.eval(), prep


def convert_hf(
    model_or_id_or_path: Any,
    *,
    preprocessing: Preprocessing | None = None,
    ignore_pooler: bool = True,
    image_size: int | None = None,
    adapter: str | Path | None = None,
    **from_pretrained_kwargs: Any,
) -> Converted:
    """Convert a HF model instance, or load one by hub id / local directory first.

    A ViTModel's pooler (dense + tanh on the class token) is not part of HookedViT: with ignore_pooler=True
    (default) its weights are left out with a warning; False raises instead.
    image_size: run at another image size (position embeddings resampled as HF `interpolate_pos_encoding`).
    adapter: a peft adapter directory (LoRA) to merge into the base model first; a `peft.PeftModel` is
    merged the same way.
    """
    prep = None
    if isinstance(model_or_id_or_path, (str, Path)):
        model, prep = _load_hf_model(str(model_or_id_or_path), **from_pretrained_kwargs)
    else:
        if from_pretrained_kwargs:
            raise InputTypeError(f"{sorted(from_pretrained_kwargs)} only apply when a hub id or path is given")
        model = model_or_id_or_path
    model = merged(model, adapter)
    family = family_for(model, "hf")
    pooler = getattr(model, "pooler", None) or getattr(getattr(model, "vit", None), "pooler", None)
    if pooler is not None and any(True for _ in pooler.parameters()):
        keys = [k for k in model.state_dict() if k.startswith(POOLER_PREFIXES)]
        if not ignore_pooler:
            raise UnsupportedModelError(f"ViTModel pooler {keys} has no place in HookedViT (pass ignore_pooler=True)")
        logger.warning("leaving out the pooler %s: HookedViT returns final-LayerNorm class-token features", keys)
    what = f"HuggingFace {type(model).__name__}"
    converted = convert(family, model, what, image_size=image_size, exclude=POOLER_PREFIXES)
    chosen = preprocessing or prep
    if chosen is not None:
        converted.preprocessing = dataclasses.replace(chosen, image_size=converted.config.image_size)
    return converted
