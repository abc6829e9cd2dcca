"""Names -> sources: shipped vitmech models, local paths, timm names and HuggingFace hub ids."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from vitmech.errors import UnknownModelError
from vitmech.loading.families.base import Converted

logger = logging.getLogger(__name__)

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
ZOO_PREFIX = "vitmech/"
KNOWN_HF_IDS = (
    "google/vit-base-patch16-224",
    "google/vit-base-patch16-224-in21k",
    "google/vit-base-patch32-224-in21k",
    "google/vit-large-patch16-224",
    "google/vit-base-patch16-384",
)


def zoo_models() -> dict[str, Path]:
    """Shipped models: 'vitmech/<dir>' -> directory holding model.safetensors + config.json."""
    from vitmech.loading.native import is_native_dir

    if not ZOO_DIR.is_dir():
        return {}
    return {ZOO_PREFIX + p.name: p for p in sorted(ZOO_DIR.iterdir()) if is_native_dir(p)}


def _candidates() -> list[str]:
    import timm

    names = set(timm.list_models("vit_*")) | set(timm.list_models("deit_*"))
    return sorted(names | set(KNOWN_HF_IDS) | set(zoo_models()))


def unknown_model(name: str) -> UnknownModelError:
    close = difflib.get_close_matches(name, _candidates(), n=6, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return UnknownModelError(
        f"unknown model {name!r}: not a shipped vitmech model, a local path, a timm model name or a hub id.{hint}"
    )


def check_timm_name(name: str) -> None:
    import timm

    if not (timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:", "timm/"))):
        raise unknown_model(name)


def load_pretrained(name: str, **kwargs: Any) -> Converted:
    """Resolve `name` in this order: shipped vitmech model, local path, timm name, HF hub id."""
    import timm

    from vitmech.loading.checkpoint import convert_checkpoint
    from vitmech.loading.hf import convert_hf
    from vitmech.loading.native import load_native
    from vitmech.loading.timm import convert_timm

    zoo = zoo_models()
    if name in zoo:
        return load_native(zoo[name])
    if name.startswith(ZOO_PREFIX):
        raise unknown_model(name)
    path = Path(name).expanduser()
    if path.exists():
        return convert_checkpoint(path, **kwargs)
    if name.startswith(("hf-hub:", "hf_hub:", "timm/")) or timm.is_model(name):
        return convert_timm(name, **kwargs)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return convert_hf(name, **kwargs)
    raise unknown_model(name)
