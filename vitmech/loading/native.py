"""vitmech's own format: `model.safetensors` (HookedViT state dict) + `config.json`.

The same JSON (architecture, preprocessing, class names, card) is also written into the
safetensors metadata, so a lone weight file still says what it is.

Saving is crash-safe (docs/reliability.md): each file is written under a temporary name and renamed,
`manifest.json` (sizes and SHA-256 of both files) is written last, and a lock file keeps a second
writer out. Loading verifies the manifest, that config.json belongs to the weights, and that every
weight is finite, and names the file in every error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from vitmech.config import ViTConfig
from vitmech.errors import CheckpointMismatchError
from vitmech.io.atomic import atomic_write, atomic_write_text, fsync_dir
from vitmech.io.errors import CorruptFileError, IncompleteWriteError
from vitmech.io.lock import LOCK_NAME, WriterLock, check_not_being_written
from vitmech.io.manifest import MANIFEST_NAME, read_manifest, verify_manifest, write_manifest
from vitmech.io.readers import read_json, read_safetensors, read_safetensors_metadata
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
    """Write the model to `directory` (created); returns the directory.

    Crash-safe: the old manifest goes first, then the weights and config.json (each atomically), then
    the new manifest, all under the folder's writer lock. A save killed half-way leaves a folder that
    `load_native` refuses (naming what is missing), never new weights with an old config.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = describe(model, card if card is not None else getattr(model, "card", None))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with WriterLock(directory / LOCK_NAME, what=f"model folder {directory}"):
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        fsync_dir(directory)
        atomic_write(
            directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"vitmech": json.dumps(meta)})
        )
        atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        write_manifest(directory, [WEIGHTS_NAME, CONFIG_NAME], kind="vitmech-model")
    return directory


def is_native_dir(path: Path) -> bool:
    if not (path.is_dir() and (path / WEIGHTS_NAME).is_file()):
        return False
    if (path / LOCK_NAME).exists() or (path / MANIFEST_NAME).is_file():
        return True  # written by save_native (finished or not): load_native says which
    config = path / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):  # unreadable config: ours if the weights say so
        try:
            return read_native_metadata(path / WEIGHTS_NAME) is not None
        except CorruptFileError:
            return False


def read_native_metadata(weights_file: Path) -> dict[str, Any] | None:
    """The vitmech description embedded in a safetensors file, or None (CorruptFileError if unreadable)."""
    meta = read_safetensors_metadata(weights_file)
    if "vitmech" not in meta:
        return None
    try:
        return json.loads(meta["vitmech"])
    except ValueError as exc:
        raise CorruptFileError(f"{weights_file}: its embedded vitmech description is not valid JSON: {exc}") from exc


def _check_folder(path: Path) -> dict[str, Any]:
    """config.json of a vitmech folder after checking the save finished and config matches the weights."""
    check_not_being_written(path / LOCK_NAME, f"model folder {path}")
    verify_manifest(path, what=f"model folder {path}")
    config = path / CONFIG_NAME
    if not config.is_file():
        raise IncompleteWriteError(f"model folder {path} has {WEIGHTS_NAME} but no {CONFIG_NAME}", path=config)
    meta = read_json(config, what="model config")
    embedded = read_native_metadata(path / WEIGHTS_NAME)
    if embedded is not None and embedded != meta:
        raise IncompleteWriteError(
            f"{config} does not belong to {path / WEIGHTS_NAME}: they come from different saves (an interrupted "
            "save_pretrained?). Save the model again",
            path=config,
        )
    if read_manifest(path) is None and (path / LOCK_NAME).exists():
        raise IncompleteWriteError(f"model folder {path} was not saved completely (no {MANIFEST_NAME})", path=path)
    return meta


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


def load_native(path: str | Path, *, allow_nonfinite: bool = False) -> Converted:
    """Read a vitmech directory or a vitmech .safetensors file (`HookedViT.from_converted` builds the model).

    Raises CorruptFileError / IncompleteWriteError naming the file for a damaged or half-saved folder; the
    model build refuses weights holding NaN or inf (NonFiniteWeightsError naming them) unless `allow_nonfinite`.
    """
    path = Path(path)
    if path.is_dir():
        meta = _check_folder(path)
        weights = path / WEIGHTS_NAME
    else:
        weights = path
        embedded = read_native_metadata(path)
        if embedded is None:
            raise CheckpointMismatchError(f"{path} carries no vitmech metadata; pass the architecture explicitly")
        meta = embedded
    state = read_safetensors(weights, what="vitmech weights")
    converted = converted_from_description(meta, state, f"vitmech checkpoint {weights}")
    converted.allow_nonfinite = allow_nonfinite
    return converted
