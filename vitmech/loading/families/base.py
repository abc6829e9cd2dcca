"""What a family declares, and what a conversion returns.

A `Family` is one converter, declared by one module of `vitmech.loading.families` (`family_of`): which source models it takes (`matches`), which of their features it cannot
represent (`unsupported`, each named), the `ViTConfig` it reads from them, and its key map (`key_map`)
that drives import and export. `convert` runs one; it returns a `Converted` (config, state dict,
preprocessing, class names) and never builds a HookedViT (`HookedViT.from_converted` does).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import torch

from vitmech.config import ViTConfig
from vitmech.errors import InputTypeError, UnsupportedModelError
from vitmech.loading.keymap import KeyMap, export_weights, import_weights
from vitmech.preprocessing import Preprocessing


@runtime_checkable
class ViTModelLike(Protocol):
    """What export and saving read from a model (a HookedViT), without importing it."""

    cfg: ViTConfig
    class_names: list[str] | None
    preprocessing: Preprocessing

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class Converted:
    """A source model in vitmech terms: everything `HookedViT.from_converted` needs."""

    config: ViTConfig
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    class_names: list[str] | None = None
    card: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    source: str = ""
    allow_nonfinite: bool = False  # build even if weights hold NaN/inf (refused by default, naming the tensors)


@dataclass(frozen=True)
class Family:
    """One converter. `key_map(cfg, source_keys)` may read the source's key names to pick a layout variant
    (transformers 4 / 5 names, a classifier prefix, a packed SwiGLU)."""

    name: str
    source: str
    matches: Callable[[Any], bool]
    unsupported: Callable[[Any], list[str]]
    config: Callable[[Any], ViTConfig]
    key_map: Callable[[ViTConfig, Collection[str]], KeyMap]
    preprocessing: Callable[[Any, ViTConfig], Preprocessing]
    class_names: Callable[[Any, ViTConfig], list[str] | None] = lambda model, cfg: None


FAMILY_FUNCTIONS = ("matches", "unsupported", "config", "key_map", "preprocessing")


def family_of(module: ModuleType) -> Family:
    """The `Family` a converter module declares (docs/model.md#adding-a-family): its `NAME` and `SOURCE`,
    and its functions `matches`, `unsupported`, `config`, `key_map`, `preprocessing` and, where it has one,
    `class_names`."""
    missing = [attr for attr in ("NAME", "SOURCE", *FAMILY_FUNCTIONS) if not hasattr(module, attr)]
    if missing:
        raise InputTypeError(f"family module {module.__name__} does not define {', '.join(missing)}")
    functions = {attr: getattr(module, attr) for attr in (*FAMILY_FUNCTIONS, "class_names") if hasattr(module, attr)}
    return Family(name=module.NAME, source=module.SOURCE, **functions)


def check_supported(family: Family, model: Any, what: str) -> None:
    features = family.unsupported(model)
    if features:
        raise UnsupportedModelError(f"cannot port {what} ({family.name}): unsupported " + "; ".join(features))


def convert(
    family: Family, model: Any, what: str, image_size: int | None = None, exclude: tuple[str, ...] = ()
) -> Converted:
    """Check, read the config, convert every weight by the family's key map (strict).

    image_size: run at another image size than the source was built for (position embeddings are
    resampled at every forward, bicubic as the source does). exclude: key prefixes left out on purpose
    (the caller has said why, e.g. a HF pooler)."""
    check_supported(family, model, what)
    cfg = family.config(model)
    if image_size is not None and image_size != cfg.image_size:
        cfg = cfg.at_image_size(image_size)
    state = {k: v.detach() for k, v in model.state_dict().items() if not k.startswith(exclude)}
    weights = import_weights(state, family.key_map(cfg, state.keys()), f"{family.name} ({what})")
    first = next(model.parameters())
    return Converted(
        config=cfg,
        state_dict=weights,
        preprocessing=family.preprocessing(model, cfg),
        class_names=family.class_names(model, cfg),
        device=first.device,
        dtype=first.dtype,
        source=family.name,
    )


def export(
    family: Family, cfg: ViTConfig, state: dict[str, torch.Tensor], source_keys: Collection[str], complete: bool = True
) -> dict[str, torch.Tensor]:
    """A vitmech state dict in the family's source layout (the key map read backwards). source_keys pick the
    layout variant; when `complete` (they are the target model's keys), optional parameters it lacks are left out."""
    return export_weights(state, family.key_map(cfg, source_keys), source_keys if complete else ())
