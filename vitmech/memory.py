"""Memory estimates before large activation caches, and a user-settable budget.

    vitmech.set_cache_budget(8 * 2**30)         # refuse caches above 8 GiB (None: the automatic budget)
    estimate_cache_bytes(model, batch=64)       # what run_with_cache would hold, from the config alone

`HookedViT.run_with_cache` calls `check_cache_size` before running: above `LOG_THRESHOLD_BYTES` it logs
the estimate; above the budget it raises `CacheBudgetError` with advice (a names_filter, a smaller
batch, or streaming the analysis). The automatic budget is 80% of the memory free on the model's device
(CPU: available RAM). Sizes come from the config (tokens, heads, widths) and the batch, so the check
costs nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from vitmech.errors import CacheBudgetError, RuntimeSettingError

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)

LOG_THRESHOLD_BYTES = 2 * 2**30
AUTO_FRACTION = 0.8
_budget: int | None = None
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def set_cache_budget(n_bytes: int | None) -> None:
    """Largest activation cache (bytes) `run_with_cache` may build; None restores the automatic budget."""
    global _budget
    if n_bytes is not None and (not isinstance(n_bytes, int) or n_bytes <= 0):
        raise RuntimeSettingError(f"the cache budget must be a positive number of bytes or None, got {n_bytes!r}")
    _budget = n_bytes


def free_bytes(device: torch.device) -> int | None:
    """Memory free on `device` (CPU: available RAM), or None where it cannot be read."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            return _available_ram()
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return None


def _available_ram() -> int:
    """MemAvailable (free plus reclaimable page cache) where /proc/meminfo exists, else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def cache_budget(device: torch.device) -> tuple[int | None, str]:
    """The budget in bytes and where it comes from."""
    if _budget is not None:
        return _budget, "set with vitmech.set_cache_budget"
    free = free_bytes(device)
    if free is None:
        return None, "no limit (free memory unknown)"
    return int(free * AUTO_FRACTION), f"{AUTO_FRACTION:.0%} of the {free / 2**30:.1f} GiB free on {device}"


def hook_numel(model: HookedViT, name: str, batch: int) -> int:
    """Elements of the activation at hook `name` for `batch` images (from the config; no forward)."""
    cfg = model.cfg
    p, d = cfg.n_tokens, cfg.d_model
    match = _LAYER.match(name)
    heads = cfg.n_heads
    per_layer = getattr(cfg, "n_heads_per_layer", None)
    if match and per_layer:
        heads = per_layer[int(match.group(1))]
    suffix = name.rsplit(".", 1)[-1]
    if match and ".ln1." in name:  # with per-head attention inputs, ln1 normalises each head's copy
        block = model.blocks[int(match.group(1))]
        if getattr(block, "use_split_qkv_input", False) or getattr(block, "use_attn_in", False):
            return heads * (batch * p if suffix == "hook_scale" else batch * p * d)
    if suffix == "hook_scale":
        return batch * p
    if suffix in ("hook_attn_scores", "hook_pattern"):
        return batch * heads * p * p
    if suffix in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return batch * p * heads * cfg.d_head
    if suffix == "hook_result" or suffix.endswith("_input") or suffix == "hook_attn_in":
        return batch * p * heads * d
    if name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return batch * p * cfg.d_mlp
    if suffix == "hook_pooled":  # the pooled readout [B, pooled_dim] (d_model but for positional pools)
        return batch * cfg.pooled_dim
    if suffix == "hook_logits":
        return batch * max(1, cfg.n_classes or 1)
    return batch * p * d


_SWITCHED = {  # hooks that fire only when a block switch is on
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_attn_in": "use_attn_in",
    "hook_mlp_in": "use_hook_mlp_in",
}


def hook_fires(model: HookedViT, name: str) -> bool:
    """False for hooks that a forward does not reach with the model's current switches."""
    match = _LAYER.match(name)
    switch = _SWITCHED.get(name.rsplit(".", 1)[-1])
    if match is None or switch is None:
        return True
    return bool(getattr(model.blocks[int(match.group(1))], switch, False))


def _selected(names: Iterable[str], names_filter: Any) -> list[str]:
    if names_filter is None:
        return list(names)
    if isinstance(names_filter, str):
        return [n for n in names if n == names_filter]
    if callable(names_filter):
        return [n for n in names if names_filter(n)]
    wanted = set(names_filter)
    return [n for n in names if n in wanted]


def estimate_cache_bytes(
    model: HookedViT, batch: int, names_filter: str | Iterable[str] | Callable[[str], bool] | None = None
) -> int:
    """Bytes `model.run_with_cache` holds for `batch` images with this names_filter (None: every hook)."""
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    names = [n for n in _selected(model.hook_dict, names_filter) if hook_fires(model, n)]
    return itemsize * sum(hook_numel(model, n, batch) for n in names)


def check_cache_size(model: HookedViT, batch: int, names_filter: Any, budget: int | None = None) -> int:
    """Log the estimate above LOG_THRESHOLD_BYTES; CacheBudgetError above the budget. Returns the estimate."""
    needed = estimate_cache_bytes(model, batch, names_filter)
    limit, source = (budget, "the cache_budget argument") if budget is not None else cache_budget(model.device)
    if needed >= LOG_THRESHOLD_BYTES:
        logger.warning("run_with_cache: caching about %.1f GiB of activations (batch %d)", needed / 2**30, batch)
    if limit is not None and needed > limit:
        per_image = needed / max(1, batch)
        raise CacheBudgetError(
            f"run_with_cache would cache about {needed / 2**30:.2f} GiB of activations for {batch} images "
            f"({per_image / 2**20:.1f} MiB each), above the budget of {limit / 2**30:.2f} GiB ({source}). "
            f"Cache only the hooks you need (names_filter=...), use a smaller batch (at most "
            f"{max(1, int(limit // per_image))} images fit), or stream the analysis batch by batch; "
            "vitmech.set_cache_budget(bytes) changes the budget"
        )
    return needed


__all__ = [
    "LOG_THRESHOLD_BYTES",
    "cache_budget",
    "check_cache_size",
    "estimate_cache_bytes",
    "hook_numel",
    "set_cache_budget",
]
