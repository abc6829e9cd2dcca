"""Names -> sources: shipped vitmech models, local paths, timm names and HuggingFace hub ids."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vitmech.loading.families.base import Converted
from vitmech.loading.names import KNOWN_HF_IDS as KNOWN_HF_IDS  # re-exported: names live in loading.names
from vitmech.loading.names import ZOO_DIR as ZOO_DIR
from vitmech.loading.names import ZOO_PREFIX as ZOO_PREFIX
from vitmech.loading.names import check_timm_name as check_timm_name
from vitmech.loading.names import unknown_model as unknown_model
from vitmech.loading.names import zoo_models as zoo_models

logger = logging.getLogger(__name__)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co resolves and accepts a connection (False when HF_HUB_OFFLINE is set).

    Lets scripts fall back quickly instead of waiting through the hub clients' retries (~1 min)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


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
