"""Save a HookedViT in the source libraries' own folder formats (`HookedViT.save_pretrained(format=...)`),
through the exporters of `vitmech.loading.export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_hf(model: Any, directory: str | Path) -> Path:
    """A transformers folder: config.json + model.safetensors (ViTForImageClassification, or ViTModel when
    headless) and preprocessor_config.json with the model's own resize and normalisation."""
    from transformers import ViTImageProcessor

    from vitmech.loading.export import to_hf

    directory = Path(directory)
    hf_model: Any = to_hf(model)
    hf_model.save_pretrained(directory)
    prep = model.preprocessing
    resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}[prep.interpolation]
    ViTImageProcessor(
        do_resize=True,
        size={"height": prep.image_size, "width": prep.image_size},
        resample=resample,
        image_mean=list(prep.mean),
        image_std=list(prep.std),
    ).save_pretrained(directory)
    return directory


def save_timm(model: Any, directory: str | Path) -> Path:
    """timm's hub layout (config.json with architecture and pretrained_cfg, model.safetensors)."""
    from timm.models._hub import save_for_hf

    from vitmech.loading.export import timm_kwargs, to_timm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    timm_model: Any = to_timm(model)
    prep = model.preprocessing
    timm_model.pretrained_cfg = {
        **dict(getattr(timm_model, "pretrained_cfg", {}) or {}),
        # timm builds this architecture with `model_args` (the exact shape) when loading the folder
        "architecture": "vit_base_patch16_224",
        "input_size": (model.cfg.n_channels, prep.image_size, prep.image_size),
        "mean": tuple(prep.mean),
        "std": tuple(prep.std),
        "interpolation": prep.interpolation,
        "crop_pct": prep.crop_pct,
        "crop_mode": "center",
        "num_classes": model.cfg.n_classes,
    }
    model_config = {"label_names": list(model.class_names)} if model.class_names else None
    model_args = {k: v for k, v in timm_kwargs(model.cfg).items() if isinstance(v, (int, float, str, bool, type(None)))}
    save_for_hf(timm_model, str(directory), model_config=model_config, model_args=model_args, safe_serialization=True)
    return directory
