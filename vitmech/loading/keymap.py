"""Declared key maps: one list of rules per family drives both import (source -> vitmech) and export.

A `Rule` names source keys and vitmech keys and one einops pattern between them; the inverse is the
same pattern read backwards, so import and export cannot disagree and a round trip is exact (the
patterns only move entries). Every source key must be taken by some rule (`SourceWeights.finish`),
so nothing is dropped silently; keys a family deliberately leaves out are `Rule.unused` with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from einops import rearrange

from vitmech.errors import CheckpointMismatchError, UnsupportedModelError
from vitmech.loading._state import SourceWeights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """source keys <-> vitmech keys through `pattern` (source side on the left).

    With several vitmech keys, the pattern's first output axis is split across them (a fused qkv); with
    several source keys, they are stacked on a new first input axis first. `axes` are the einops sizes
    either direction needs. `absent`: the shape of the vitmech tensor (stacked when split) to fill with
    zeros when the source has no such parameter (a bias the source model leaves out); export then omits
    the source key when it is zero and the target model has no place for it.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    pattern: str | None = None
    axes: dict[str, int] = field(default_factory=dict)
    absent: tuple[int, ...] | None = None
    reason: str = ""

    @property
    def is_unused(self) -> bool:
        return not self.target

    @staticmethod
    def unused(key: str, reason: str) -> Rule:
        """A source parameter HookedViT leaves out on purpose (e.g. a mask token used only in pre-training)."""
        return Rule((key,), (), reason=reason)

    def _forward(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = tensors[0] if len(tensors) == 1 else torch.stack(list(tensors))
        if self.pattern is not None:
            x = rearrange(x, self.pattern, **self.axes)
        return [x] if len(self.target) == 1 else list(x.unbind(0))

    def _backward(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = tensors[0] if len(tensors) == 1 else torch.stack(list(tensors))
        if self.pattern is not None:
            left, right = self.pattern.split("->")
            x = rearrange(x, f"{right.strip()} -> {left.strip()}", **self.axes)
        return [x] if len(self.source) == 1 else list(x.unbind(0))


def rule(source: str | Sequence[str], target: str | Sequence[str], pattern: str | None = None, **axes: int) -> Rule:
    """A Rule from strings or sequences of keys."""
    src = (source,) if isinstance(source, str) else tuple(source)
    dst = (target,) if isinstance(target, str) else tuple(target)
    return Rule(src, dst, pattern, dict(axes))


def optional(r: Rule, absent: tuple[int, ...]) -> Rule:
    """The same rule, zero-filled (shape `absent`) when the source has no such parameter."""
    return Rule(r.source, r.target, r.pattern, r.axes, absent)


KeyMap = list[Rule]


def prefixed(rules: KeyMap, prefix: str) -> KeyMap:
    """The rules with every source key under `prefix` (e.g. 'vit.' in a classifier checkpoint)."""
    return [Rule(tuple(prefix + k for k in r.source), r.target, r.pattern, r.axes, r.absent, r.reason) for r in rules]


def import_weights(state: Mapping[str, torch.Tensor], key_map: KeyMap, source: str) -> dict[str, torch.Tensor]:
    """Source state dict -> vitmech state dict; every source key must be taken by exactly one rule."""
    src = SourceWeights(state, source)
    out: dict[str, torch.Tensor] = {}
    for r in key_map:
        if r.is_unused:
            if src.take_optional(r.source[0]) is not None:
                logger.info("%s: leaving out %s (%s)", source, r.source[0], r.reason)
            continue
        if r.absent is not None and not any(k in src for k in r.source):
            stacked = torch.zeros(r.absent)
            parts = [stacked] if len(r.target) == 1 else list(stacked.unbind(0))
        else:
            parts = r._forward([src.take(k) for k in r.source])
        for key, tensor in zip(r.target, parts):
            if key in out:
                raise CheckpointMismatchError(f"two rules of the {source} key map write {key!r}")
            out[key] = tensor.contiguous()
    src.finish()
    return out


def export_weights(
    state: Mapping[str, torch.Tensor], key_map: KeyMap, source_keys: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """vitmech state dict -> source state dict by the same rules read backwards (unused keys are absent).

    With `source_keys` (the target model's keys), optional parameters the target lacks are left out, provided
    they are zero. Raises CheckpointMismatchError if a vitmech weight is not covered by the map (it would be
    lost), UnsupportedModelError if a non-zero weight has no place in the target."""
    present = set(source_keys)
    covered = {k for r in key_map for k in r.target}
    uncovered = sorted(set(state) - covered)
    if uncovered:
        raise CheckpointMismatchError(f"the key map has no source key for the vitmech weights {uncovered}")
    out: dict[str, torch.Tensor] = {}
    for r in key_map:
        if r.is_unused:
            continue
        if r.absent is not None and present and not any(k in present for k in r.source):
            nonzero = [k for k in r.target if state[k].abs().max() > 0]
            if nonzero:
                raise UnsupportedModelError(f"the target model has no parameter {r.source} for the non-zero {nonzero}")
            continue
        parts = r._backward([state[k].detach() for k in r.target])
        for key, tensor in zip(r.source, parts):
            out[key] = tensor.contiguous().clone()
    return out


def optional_source_keys(key_map: KeyMap) -> set[str]:
    """Source keys a target model may lack (zero-filled on import)."""
    return {k for r in key_map if r.absent is not None for k in r.source}
