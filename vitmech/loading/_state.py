"""State-dict plumbing shared by the converters: take every source key exactly once, load strictly."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from vitmech.errors import CheckpointMismatchError, NonFiniteWeightsError

_LIST_LIMIT = 20


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return f"[{shown}{more}]"


class SourceWeights:
    """A source state dict that converters consume key by key.

    `finish()` raises if any source key was never taken, so a conversion can never drop
    weights silently.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        self._remaining = dict(state_dict)
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self._remaining

    def take(self, key: str) -> torch.Tensor:
        try:
            return self._remaining.pop(key)
        except KeyError:
            raise CheckpointMismatchError(
                f"{self.source} weights lack {key!r}; keys left: {_listing(sorted(self._remaining))}",
                missing=[key],
            ) from None

    def take_optional(self, key: str) -> torch.Tensor | None:
        return self._remaining.pop(key, None)

    def finish(self) -> None:
        if self._remaining:
            leftover = sorted(self._remaining)
            raise CheckpointMismatchError(
                f"{len(leftover)} {self.source} weights have no place in HookedViT: {_listing(leftover)}",
                unexpected=leftover,
            )


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """NonFiniteWeightsError naming the floating tensors of `state_dict` that hold NaN or inf."""
    bad = []
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            n_nan = int(torch.isnan(value).sum())
            bad.append(f"{key} ({n_nan} NaN, {int((~torch.isfinite(value)).sum()) - n_nan} inf of {value.numel()})")
    if bad:
        raise NonFiniteWeightsError(
            f"{what} has non-finite weights in {len(bad)} tensor(s): {_listing(bad)}. The file is damaged or "
            "the run that wrote it diverged; pass allow_nonfinite=True to load it anyway",
            nonfinite=[b.split(" (")[0] for b in bad],
        )


def load_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, allow_nonfinite: bool = False
) -> None:
    """`module.load_state_dict(strict=True)` with an error that lists missing, unexpected and mis-shaped keys,
    after refusing NaN/inf weights (unless `allow_nonfinite`)."""
    if not allow_nonfinite:
        check_finite(state_dict, what)
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    raise_on_mismatch(what, missing, unexpected, mis_shaped)
    module.load_state_dict(state_dict, strict=True)


def raise_on_mismatch(
    what: str, missing: list[str], unexpected: list[str], mis_shaped: list[str], errors: list[str] | None = None
) -> None:
    """CheckpointMismatchError listing mis-shaped, missing and unexpected keys (and other load errors), if any."""
    if not (missing or unexpected or mis_shaped or errors):
        return
    parts = []
    if mis_shaped:
        parts.append(f"shape mismatches {_listing(mis_shaped)}")
    if missing:
        parts.append(f"missing keys {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listing(unexpected)}")
    if errors:
        parts.append(f"errors {errors}")
    raise CheckpointMismatchError(f"{what} does not fit: " + "; ".join(parts), missing=missing, unexpected=unexpected)
