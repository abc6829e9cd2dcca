"""Model names: the shipped vitmech models, and the check that a timm name exists (with close matches).

Kept apart from `vitmech.loading.registry` (which dispatches names to the converters) so a converter can
check a name without importing the registry that imports it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from vitmech.errors import UnknownModelError

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
