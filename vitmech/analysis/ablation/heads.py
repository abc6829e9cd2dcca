"""Head sets: parse and validate (layer, head) indices, and name the cells of a sweep.

A head is `(layer, head)`, both 0-based. A set of heads can be given as one pair, a sequence of
pairs, or a mapping `{layer: [heads]}` / `{layer: "all"}`. Layers may carry different head counts
(pruned models), so validation reads each block's own `attn.n_heads`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vitmech.analysis.ablation.errors import AblationError, HeadIndexError

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

Head = tuple[int, int]
HeadsLike = Head | Sequence[Head] | Mapping[int, Sequence[int] | str] | None


def heads_per_layer(model: HookedViT) -> list[int]:
    """Number of heads in each block (equal to cfg.n_heads unless the model was pruned)."""
    return [int(block.attn.n_heads) for block in model.blocks]


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int):
            raise AblationError(f"{what} must be an int, got {value!r} ({type(value).__name__})")
    return value


def check_layer(model: HookedViT, layer: Any) -> int:
    """The layer index, or HeadIndexError when it is outside [0, n_layers)."""
    return model.cfg.layer_index(_as_int(layer, "layer"), allow_negative=False, error=HeadIndexError)


def check_head(model: HookedViT, layer: Any, head: Any) -> Head:
    """A validated (layer, head) pair."""
    layer = check_layer(model, layer)
    head = _as_int(head, "head")
    n = heads_per_layer(model)[layer]
    if not 0 <= head < n:
        raise HeadIndexError(f"head {head} is out of range in layer {layer}: it has {n} heads (0 to {n - 1})")
    return layer, head


def parse_heads(model: HookedViT, heads: HeadsLike) -> tuple[Head, ...]:
    """Validated, sorted, de-duplicated heads from any accepted form (None or [] -> no heads)."""
    if heads is None:
        return ()
    if isinstance(heads, Mapping):
        pairs: list[Head] = []
        for layer, hs in heads.items():
            layer = check_layer(model, layer)
            if isinstance(hs, str):
                if hs != "all":
                    raise AblationError(f"heads for layer {layer} must be a list of ints or 'all', got {hs!r}")
                hs = range(heads_per_layer(model)[layer])
            pairs.extend(check_head(model, layer, h) for h in hs)
        return tuple(sorted(set(pairs)))
    if isinstance(heads, tuple) and len(heads) == 2 and not isinstance(heads[0], (tuple, list)):
        return (check_head(model, *heads),)
    if not isinstance(heads, Iterable) or isinstance(heads, (str, bytes)):
        raise AblationError(f"heads must be (layer, head), a list of such pairs or {{layer: [heads]}}; got {heads!r}")
    pairs = []
    for item in heads:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise AblationError(f"each head must be a (layer, head) pair, got {item!r}")
        pairs.append(check_head(model, *item))
    return tuple(sorted(set(pairs)))


def all_heads(model: HookedViT, layers: Iterable[int] | None = None) -> list[Head]:
    """Every head of the given layers (all layers by default), layer-major."""
    counts = heads_per_layer(model)
    chosen = range(len(counts)) if layers is None else [check_layer(model, layer) for layer in layers]
    return [(layer, h) for layer in chosen for h in range(counts[layer])]


def head_label(head: Head) -> str:
    """The label of a head: 0-based layer and head.

    >>> head_label((3, 5))
    'L3H5'
    """
    return f"L{head[0]}H{head[1]}"


@dataclass(frozen=True)
class Cell:
    """One entry of a sweep: a named set of heads ablated together (empty = nothing ablated)."""

    name: str
    heads: tuple[Head, ...]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for layer, _ in self.heads}))

    @property
    def start_layer(self) -> int:
        """First layer whose computation changes (0 for the empty cell: recomputed from the start)."""
        return min((layer for layer, _ in self.heads), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "heads": [list(h) for h in self.heads]}


def make_cell(model: HookedViT, heads: HeadsLike, name: str | None = None) -> Cell:
    """A validated cell; named by its heads ('L3H5+L3H7') unless a name is given."""
    parsed = parse_heads(model, heads)
    if name is None:
        name = "+".join(head_label(h) for h in parsed) or "none"
    return Cell(name=name, heads=parsed)


def single_head_cells(model: HookedViT, heads: HeadsLike = None, layers: Sequence[int] | None = None) -> list[Cell]:
    """One cell per head, named by it ('L3H5'): all heads, the heads of `layers`, or the given `heads`."""
    if heads is not None and layers is not None:
        raise AblationError("give heads or layers, not both")
    chosen = all_heads(model, layers) if heads is None else list(make_cell(model, heads).heads)
    if not chosen:
        raise AblationError("no heads to sweep")
    return [Cell(head_label(h), (h,)) for h in chosen]


def make_cells(model: HookedViT, sets: Mapping[str, HeadsLike] | Sequence[Cell | HeadsLike]) -> list[Cell]:
    """Validated cells from named sets {name: heads} or a sequence of cells or head sets; names must be unique."""
    if isinstance(sets, Mapping):
        cells = [make_cell(model, heads, str(name)) for name, heads in sets.items()]
    else:
        cells = [make_cell(model, s.heads, s.name) if isinstance(s, Cell) else make_cell(model, s) for s in sets]
    if not cells:
        raise AblationError("no cells to evaluate: give at least one head set")
    names = [c.name for c in cells]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AblationError(f"cell names must be unique; repeated: {duplicates}")
    return cells
