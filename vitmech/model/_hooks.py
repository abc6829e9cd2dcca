"""Small helpers shared by the hooked components."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformer_lens.hook_points import HookPoint

FwdHooks = list[tuple[str | Callable[..., Any], Callable[..., Any]]]
"""(hook name or name filter, hook function) pairs, as HookedRootModule.hooks / run_with_hooks take them."""


def is_hooked(*points: HookPoint) -> bool:
    """True if any of these hook points has a forward or backward hook attached.

    Components use it to choose between a fused fast path and the explicit path that
    materialises (and fires) the hooked intermediate.
    """
    return any(p.fwd_hooks or p.bwd_hooks for p in points)
