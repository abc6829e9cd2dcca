"""Head ablations (docs/ablation.md#interventions) and the hooks that apply them.

Ablating head (l, h) replaces its context vector z = `blocks.l.attn.hook_z[:, :, h]` [B, P, d_head]
before W_O:

- `ZeroAblation`: z <- 0 (the same as zeroing that head's W_V and b_V).
- `MeanAblation`: z <- mean of z over a reference set, per position ([P, d_head] per head).
- `ResampleAblation`: z(x) <- z(x') for another input x' (seeded).
- `UniformAttention`: the head's pattern <- 1/P over all keys (what zeroing W_Q and W_K does), so
  z <- mean over keys of v. A different intervention from silencing the head.

Each ablation is *bound* to a batch (`ablation.bind(model, images)`) before use, because resampling
draws per-example sources. A bound ablation gives replacement z values for any layer; the sweep
engine uses those directly, and `head_ablation_hooks` wraps them as transformer_lens hooks:

    hooks = head_ablation_hooks(model, [(3, 5), (7, 1)], "zero")
    logits = model.run_with_hooks(images, fwd_hooks=hooks)
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from einops import repeat
from jaxtyping import Float
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.errors import AblationError, EmptyReferenceError
from vitmech.analysis.ablation.heads import Head, HeadsLike, parse_heads
from vitmech.batching import image_batches
from vitmech.fingerprint import tensor_fingerprint

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

ValueMean = Callable[[], Float[torch.Tensor, "n head d_head"]]
Hook = tuple[str | Callable[..., Any], Callable[..., Any]]


def z_hook_name(layer: int) -> str:
    return get_act_name("z", layer)


def pattern_hook_name(layer: int) -> str:
    return get_act_name("pattern", layer)


class BoundAblation(ABC):
    """An ablation fixed to one batch of B images: replacement context vectors for any layer."""

    @abstractmethod
    def replacement(
        self,
        layer: int,
        z: Float[torch.Tensor, "n pos head d_head"],
        positions: slice,
        value_mean: ValueMean | None,
    ) -> Float[torch.Tensor, "n pos head d_head"]:
        """Replacement z for every head of `layer`, shaped like `z`.

        z holds the current context vectors at query `positions` for n = k * B rows (k stacked copies of
        the batch, copy-major); value_mean() gives mean_k v [n, head, d_head] of the same forward pass.
        """


class HeadAblation(ABC):
    """A way of removing a head's contribution; `name` is how tables and files refer to it."""

    name: ClassVar[str]
    #: whether replacements read the head's values v (uniform attention)
    needs_values: ClassVar[bool] = False
    #: the fewest images a batch it is bound to may hold (resampling within the batch needs 2)
    min_batch: int = 1

    @abstractmethod
    def bind(self, model: HookedViT, images: torch.Tensor | None = None, batch_index: int = 0) -> BoundAblation:
        """Fix the ablation to a batch of images (batch_index seeds per-batch randomness)."""

    def key(self) -> str:
        """A string that changes whenever the ablation's outcome could (used to key stored sweeps)."""
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"ablation": self.name}


# ---------------------------------------------------------------------------------------------- zero
class _BoundZero(BoundAblation):
    def replacement(self, layer, z, positions, value_mean):
        return torch.zeros_like(z)


@dataclass(frozen=True)
class ZeroAblation(HeadAblation):
    """z <- 0: the head writes nothing but its share of b_O (which is not per-head)."""

    name: ClassVar[str] = "zero"

    def bind(self, model, images=None, batch_index=0):
        return _BoundZero()


# ---------------------------------------------------------------------------------------------- mean
class _BoundMean(BoundAblation):
    def __init__(self, mean_z: Sequence[torch.Tensor]) -> None:
        self.mean_z = mean_z

    def replacement(self, layer, z, positions, value_mean):
        return self.mean_z[layer][positions].to(z.dtype).expand_as(z)


class MeanAblation(HeadAblation):
    """z <- mean of z over a reference set, per position: mean_z[layer] is [P, n_heads, d_head]."""

    name: ClassVar[str] = "mean"

    def __init__(self, mean_z: Sequence[Float[torch.Tensor, "pos head d_head"]], n_reference: int) -> None:
        if n_reference < 1:
            raise EmptyReferenceError("mean ablation needs a reference set of at least one image")
        self.mean_z = [m.detach() for m in mean_z]
        self.n_reference = int(n_reference)
        self._key = f"mean:{tensor_fingerprint(*self.mean_z)}"

    @classmethod
    @torch.no_grad()
    def from_reference(cls, model: HookedViT, images: torch.Tensor, batch_size: int = 32) -> MeanAblation:
        """Mean z per layer and position over `images` [N, C, S, S] (float64 accumulation)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise EmptyReferenceError(f"mean ablation needs a non-empty reference batch [N, C, S, S]; got {shape}")
        names = [z_hook_name(layer) for layer in range(len(model.blocks))]
        sums: list[torch.Tensor] | None = None
        for _, batch in image_batches(images, batch_size):
            _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
            batch_sums = [cache[name].double().sum(0) for name in names]
            sums = batch_sums if sums is None else [s + b for s, b in zip(sums, batch_sums)]
        assert sums is not None
        n = images.shape[0]
        return cls([(s / n).to(images.dtype) for s in sums], n_reference=n)

    def bind(self, model, images=None, batch_index=0):
        expected = [(model.cfg.n_tokens, block.attn.n_heads, block.attn.d_head) for block in model.blocks]
        got = [tuple(m.shape) for m in self.mean_z]
        if got != expected:
            raise AblationError(
                f"mean_z shapes {got} do not fit this model (expected [pos, head, d_head] per layer: {expected})"
            )
        return _BoundMean([m.to(model.device) for m in self.mean_z])

    def key(self) -> str:
        return self._key

    def to_dict(self) -> dict[str, Any]:
        return {"ablation": self.name, "n_reference": self.n_reference}


# ---------------------------------------------------------------------------------------------- resample
class _BoundResample(BoundAblation):
    def __init__(self, source_z: Sequence[torch.Tensor], source_index: torch.Tensor) -> None:
        self.source_z = source_z  # per layer [B, P, H, d_head]
        self.source_index = source_index

    def replacement(self, layer, z, positions, value_mean):
        source = self.source_z[layer][:, positions]
        copies, rem = divmod(z.shape[0], source.shape[0])
        if rem:
            raise AblationError(
                f"resample ablation was bound to a batch of {source.shape[0]} but sees {z.shape[0]} rows"
            )
        return repeat(source, "b p h e -> (k b) p h e", k=copies)


class ResampleAblation(HeadAblation):
    """z(x) <- z(x') with x' drawn (seeded) from `source` images, or, when source is None, from the
    same batch by a random derangement (every example gets another example's z; needs B >= 2)."""

    name: ClassVar[str] = "resample"

    def __init__(self, source: torch.Tensor | None = None, seed: int = 0) -> None:
        if source is not None and (not isinstance(source, torch.Tensor) or source.ndim != 4 or source.shape[0] == 0):
            shape = list(source.shape) if isinstance(source, torch.Tensor) else type(source).__name__
            raise EmptyReferenceError(f"resample source must be a non-empty image batch [N, C, S, S]; got {shape}")
        self.source = source
        self.seed = int(seed)
        self.min_batch = 1 if source is not None else 2
        self._key = f"resample:{self.seed}:{'self' if source is None else tensor_fingerprint(source)}"

    def source_indices(self, batch_size: int, batch_index: int = 0) -> torch.Tensor:
        """Index into the source (or into the batch itself) for each of the batch's examples."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index)
        if self.source is not None:
            return torch.randint(self.source.shape[0], (batch_size,), generator=g)
        if batch_size < 2:
            raise EmptyReferenceError(
                "resampling within the batch needs at least 2 images; pass source=reference images"
            )
        order = torch.randperm(batch_size, generator=g)
        index = torch.empty(batch_size, dtype=torch.long)
        index[order] = order.roll(-1)  # a cycle through a random order: no example keeps its own z
        return index

    @torch.no_grad()
    def bind(self, model, images=None, batch_index=0):
        if images is None:
            raise AblationError("resample ablation must be bound to the batch it ablates: pass images")
        index = self.source_indices(images.shape[0], batch_index)
        pool = images if self.source is None else self.source.to(device=images.device, dtype=images.dtype)
        names = [z_hook_name(layer) for layer in range(len(model.blocks))]
        _, cache = model.run_with_cache(pool[index], names_filter=names, return_type=None)
        return _BoundResample([cache[name] for name in names], index)

    def key(self) -> str:
        return self._key

    def to_dict(self) -> dict[str, Any]:
        n = None if self.source is None else int(self.source.shape[0])
        return {"ablation": self.name, "seed": self.seed, "source_images": n if n is not None else "the batch itself"}


# ---------------------------------------------------------------------------------------------- uniform attention
class _BoundUniform(BoundAblation):
    def replacement(self, layer, z, positions, value_mean):
        if value_mean is None:
            raise AblationError("uniform attention needs the head's values; apply it with head_ablation_hooks")
        return value_mean()[:, None].to(z.dtype).expand_as(z)


@dataclass(frozen=True)
class UniformAttention(HeadAblation):
    """The head attends uniformly (1/P) to every token, CLS included: z <- mean over keys of v.

    Not a silencing: the head still writes mean(v) @ W_O. As hooks it edits `hook_pattern`."""

    name: ClassVar[str] = "uniform_attention"
    needs_values: ClassVar[bool] = True

    def bind(self, model, images=None, batch_index=0):
        return _BoundUniform()


# ---------------------------------------------------------------------------------------------- resolution and hooks
AblationLike = str | HeadAblation
_BY_NAME: dict[str, Callable[[], HeadAblation]] = {
    "zero": ZeroAblation,
    "resample": ResampleAblation,
    "uniform_attention": UniformAttention,
    "uniform": UniformAttention,
}


def resolve_ablation(ablation: AblationLike) -> HeadAblation:
    """An ablation from its name ('zero', 'resample', 'uniform_attention') or itself."""
    if isinstance(ablation, HeadAblation):
        return ablation
    if ablation == "mean":
        raise AblationError(
            "mean ablation needs a reference set: pass MeanAblation.from_reference(model, reference_images)"
        )
    if isinstance(ablation, str) and ablation in _BY_NAME:
        return _BY_NAME[ablation]()
    raise AblationError(
        f"unknown ablation {ablation!r}; use 'zero', 'resample', 'uniform_attention', or a HeadAblation "
        "(ZeroAblation(), MeanAblation.from_reference(model, images), ResampleAblation(source, seed), UniformAttention())"
    )


def _by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for layer, head in heads:
        grouped.setdefault(layer, []).append(head)
    return grouped


def head_ablation_hooks(
    model: HookedViT,
    heads: HeadsLike,
    ablation: AblationLike = "zero",
    images: torch.Tensor | None = None,
    batch_index: int = 0,
) -> list[Hook]:
    """Forward hooks that ablate `heads` for `model.run_with_hooks(images, fwd_hooks=...)`.

    z-replacing ablations hook `attn.hook_z`; UniformAttention hooks `attn.hook_pattern` (so those
    layers run the explicit softmax). ResampleAblation needs the `images` it will run on.
    """
    ablation = resolve_ablation(ablation)
    parsed = parse_heads(model, heads)
    if not parsed:
        return []
    return hooks_for_bound(model, parsed, ablation, ablation.bind(model, images, batch_index))


def hooks_for_bound(
    model: HookedViT, heads: Sequence[Head], ablation: HeadAblation, bound: BoundAblation
) -> list[Hook]:
    """The hooks of `head_ablation_hooks` for validated heads and an already bound ablation."""
    hooks: list[Hook] = []
    for layer, hs in _by_layer(heads).items():
        index = torch.tensor(hs, device=model.device)
        if isinstance(ablation, UniformAttention):
            hooks.append((pattern_hook_name(layer), _uniform_pattern_hook(index)))
        else:
            hooks.append((z_hook_name(layer), _replace_z_hook(bound, layer, index)))
    return hooks


def _replace_z_hook(bound: BoundAblation, layer: int, index: torch.Tensor) -> Callable[..., torch.Tensor]:
    def hook(z: Float[torch.Tensor, "batch pos head d_head"], hook: Any = None) -> torch.Tensor:
        replacement = bound.replacement(layer, z, slice(None), None)
        z = z.clone()
        z[:, :, index] = replacement[:, :, index]
        return z

    return hook


def _uniform_pattern_hook(index: torch.Tensor) -> Callable[..., torch.Tensor]:
    def hook(pattern: Float[torch.Tensor, "batch head query key"], hook: Any = None) -> torch.Tensor:
        pattern = pattern.clone()
        pattern[:, index] = 1.0 / pattern.shape[-1]
        return pattern

    return hook


@contextlib.contextmanager
def ablated(
    model: HookedViT, heads: HeadsLike, ablation: AblationLike = "zero", images: torch.Tensor | None = None
) -> Iterator[HookedViT]:
    """Context manager: inside it, every forward of `model` runs with `heads` ablated.

    with ablated(model, [(3, 5)]):
        logits = model(images)
    """
    with model.hooks(fwd_hooks=head_ablation_hooks(model, heads, ablation, images)):
        yield model
