"""vitmech's own format: `model.safetensors` (HookedViT state dict) + `config.json`.

The same JSON (architecture, preprocessing, class names, card) is also written into the
safetensors metadata, so a lone weight file still says what it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vitmech.config import ViTConfig
from vitmech.errors import CheckpointMismatchError
from vitmech.loading.families.base import Converted, ViTModelLike
from vitmech.preprocessing import Preprocessing

FORMAT = "vitmech"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def describe(model: ViTModelLike, card: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": 1,
        "config": model.cfg.to_dict(),
        "preprocessing": model.preprocessing.to_dict(),
        "class_names": model.class_names,
        "card": card or {},
    }


def save_native(model: ViTModelLike, directory: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write the model to `directory` (created); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = describe(model, card if card is not None else getattr(model, "card", None))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"vitmech": json.dumps(meta)})
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def is_native_dir(path: Path) -> bool:
    config = path / CONFIG_NAME
    if not (path.is_dir() and config.is_file() and (path / WEIGHTS_NAME).is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def read_native_metadata(weights_file: Path) -> dict[str, Any] | None:
    """The vitmech description embedded in a safetensors file, or None."""
    with safe_open(str(weights_file), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["vitmech"]) if "vitmech" in meta else None


def converted_from_description(meta: dict[str, Any], state: dict[str, Any], what: str) -> Converted:
    if meta.get("format") != FORMAT:
        raise CheckpointMismatchError(f"not a vitmech description (format={meta.get('format')!r})")
    return Converted(
        config=ViTConfig.from_dict(meta["config"]),
        state_dict=state,
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        class_names=meta.get("class_names"),
        card=meta.get("card", {}) or {},
        source=what,
    )


def load_native(path: str | Path) -> Converted:
    """Read a vitmech directory or a vitmech .safetensors file (`HookedViT.from_converted` builds the model)."""
    path = Path(path)
    if path.is_dir():
        meta = json.loads((path / CONFIG_NAME).read_text())
        weights = path / WEIGHTS_NAME
    else:
        weights = path
        meta = read_native_metadata(path)
        if meta is None:
            raise CheckpointMismatchError(f"{path} carries no vitmech metadata; pass the architecture explicitly")
    return converted_from_description(meta, load_file(str(weights)), f"vitmech checkpoint {path}")
