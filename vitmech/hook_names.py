"""Check hook names before a run: an unknown name or a layer out of range is an error that lists the
closest valid names, instead of a bare KeyError deep in transformer_lens.

    check_hook_names(model, ["blocks.12.attn.hook_z"])
    # HookNameError: no hook 'blocks.12.attn.hook_z': layer 12 is out of range (this model has 12 layers,
    #   0 to 11). Closest: blocks.11.attn.hook_z, ...
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from vitmech.errors import UnknownNameError

_LAYER = re.compile(r"^blocks\.(\d+)\.")


class HookNameError(UnknownNameError):
    """A hook name the model does not have (a KeyError, as transformer_lens raised, and a VitmechError; the
    message lists close matches)."""


def check_hook_names(model: Any, names: Iterable[Any]) -> None:
    """HookNameError for the first string in `names` that is not one of `model.hook_dict`'s names
    (callables, i.e. name filters, are left alone)."""
    valid = model.hook_dict
    for name in names:
        if not isinstance(name, str) or name in valid or _is_hook_alias(model, name):
            continue
        raise HookNameError(unknown_hook_message(name, list(valid), model.cfg.n_layers))


def _is_hook_alias(model: Any, name: str) -> bool:
    """A second name for a hook point (e.g. `blocks.0.attn.hook_q_input`), registered in mod_dict only."""
    from transformer_lens.hook_points import HookPoint

    return isinstance(getattr(model, "mod_dict", {}).get(name), HookPoint)


def unknown_hook_message(name: str, valid: list[str], n_layers: int) -> str:
    reason = ""
    layer = _LAYER.match(name)
    if layer and not 0 <= int(layer.group(1)) < n_layers:
        reason = f": layer {layer.group(1)} is out of range (this model has {n_layers} layers, 0 to {n_layers - 1})"
        # suggest the same hook in the last layer first
        name_for_match = _LAYER.sub(f"blocks.{n_layers - 1}.", name)
    else:
        name_for_match = name
    close = difflib.get_close_matches(name_for_match, valid, n=4, cutoff=0.6)
    hint = f". Closest: {', '.join(close)}" if close else ". See docs/model.md for the hook names"
    return f"no hook {name!r}{reason}{hint}"
