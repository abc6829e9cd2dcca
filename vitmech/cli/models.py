"""Load models by name for the studies: pretrained weights from the zoo, a path, the hub or its local cache;
random weights only when asked (`--random-init`), and then flagged everywhere.

Offline (HF_HUB_OFFLINE set, or no hub reachable) the hub clients read their local caches exactly as
`HookedViT.from_pretrained` does (HF_HUB_CACHE / HF_HOME; timm reads the same hub cache), without retries.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitmech.errors import CheckpointMismatchError, ModelMismatchError, UnknownModelError
from vitmech.viz.stamp import RANDOM_WEIGHTS

logger = logging.getLogger(__name__)

TRUE_VALUES = ("1", "true", "yes", "on")


@dataclass
class LoadedModel:
    """A model, the name it was asked by, and where its weights came from."""

    model: Any
    name: str
    note: str
    random: bool = False

    def __iter__(self):  # (model, note), as the older helpers returned
        return iter((self.model, self.note))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE_VALUES


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co accepts a connection (False when HF_HUB_OFFLINE is set)."""
    import socket

    if hub_offline():
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make the hub clients read their caches only (no retries): HF_HUB_OFFLINE for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import sys

    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # read at import time by the hub clients


def hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return os.path.join(home, "hub")


def how_to_get(name: str) -> str:
    import timm

    if timm.is_model(name):
        fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    else:
        fetch = f"huggingface-cli download {name}"
    return (
        f"its weights are not in the local hub cache ({hub_cache_dir()}) and no hub is reachable"
        f"{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}. Fetch them once where the hub is reachable "
        f"({fetch}) and point HF_HUB_CACHE or HF_HOME at that cache, pass a local folder or file, or pass "
        "--random-init to study random weights (stamped on every output)."
    )


def load_model(name: str, random_init: bool = False, device: str | None = None) -> LoadedModel:
    """Load `name` (shipped, path, timm name, hub id); SystemExit with one clear line when impossible."""
    from vitmech.loading.registry import zoo_models
    from vitmech.model.hooked_vit import HookedViT

    local = name in zoo_models() or Path(name).expanduser().exists()
    if name.startswith("vitmech/") and not local:
        raise SystemExit(
            f"error: the shipped model {name!r} is not in this installation (shipped: "
            f"{', '.join(zoo_models()) or 'none'}). Pass a timm name, a HF hub id, or a folder written by "
            "model.save_pretrained()."
        )
    if not local and not hub_offline() and not hub_reachable():
        go_offline()
    try:
        model = HookedViT.from_pretrained(name)
        note = "shipped/local weights" if local else "pretrained weights"
        loaded = LoadedModel(model, name, note)
    except (UnknownModelError, CheckpointMismatchError) as err:
        raise SystemExit(f"error: cannot load model {name!r}: {err}") from None
    except OSError as err:
        loaded = _random_or_exit(name, random_init, err)
    from vitmech.device import resolve_device
    from vitmech.errors import RuntimeSettingError

    try:
        target = resolve_device(device)  # None: CUDA when present
    except RuntimeSettingError as err:
        raise SystemExit(f"error: --device: {err}") from None
    if target.type != "cpu":
        loaded.model.to(target)
    return loaded


def _random_or_exit(name: str, random_init: bool, err: Exception) -> LoadedModel:
    import timm

    from vitmech.model.hooked_vit import HookedViT

    if not random_init:
        raise SystemExit(f"error: cannot load model {name!r}: {how_to_get(name)}") from None
    if not timm.is_model(name):
        raise SystemExit(
            f"error: cannot load model {name!r} ({err}); --random-init needs a timm architecture name "
            "(e.g. vit_base_patch16_224) to build random weights"
        ) from None
    logger.warning("%s gets %s (--random-init): its attention means nothing", name, RANDOM_WEIGHTS)
    model = HookedViT.from_timm(name, pretrained=False)
    return LoadedModel(model, name, f"{RANDOM_WEIGHTS} (--random-init; pretrained weights unavailable)", random=True)


def load_models(
    names: list[str], random_init: bool = False, device: str | None = None, comparable: bool = False
) -> list[LoadedModel]:
    """`load_model` for each; with comparable=True, models that cannot be compared head by head exit."""
    loaded = [load_model(name, random_init, device) for name in names]
    if comparable and len(loaded) > 1:
        from vitmech.analysis.compare import check_comparable

        try:
            for other in loaded[1:]:
                check_comparable(loaded[0].model, other.model)
        except ModelMismatchError as error:
            raise SystemExit(f"error: {error}") from None
    return loaded
