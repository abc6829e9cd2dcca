"""Register tokens and high-norm "artifact" tokens (Darcet et al. 2024, "Vision Transformers Need
Registers", arXiv 2309.16588).

Large ViTs trained without registers repurpose a few low-information patch tokens as global scratch space:
those tokens' residual norms grow far above the other patches' (a bimodal norm distribution) and they
absorb much of the attention, which shows up as spikes in attention maps. Register tokens give the model
that scratch space explicitly. This module measures both sides on any model:

    result = register_analysis(model, images)          # RegisterAnalysis
    result.to_frame()                                  # per stage: token norms, outliers, attention shares
    result.share_of("outlier patches", query="class")  # [layer] attention the class token gives to outliers
    plot_register_analysis(result)                     # vitmech.viz.registers

Definitions (stated in every result):
- stage s: the residual stream entering block s (s = 0 is the embedding), and after the last block
  (s = n_layers). Block l's attention reads stage l, so its keys' norms are those of stage l.
- token norm: the L2 norm of a token's residual-stream vector (no LayerNorm), per image and stage.
- outlier patch: a patch token whose norm exceeds `factor` times the median patch-token norm of the same
  image and stage (default factor 3; Darcet et al. use an absolute cut, 150, for their DINOv2 ViT-g; a
  ratio to the median carries over across model sizes and random weights). Prefix tokens are never outliers.
- attention share: the attention weight a query gives to a group of keys (summing over the group), from
  the softmax pattern of each layer and head; for a group of queries, the mean over its queries. Key
  groups: KEY_GROUPS; query groups: QUERY_GROUPS. An empty group (no registers, no class token) is NaN
  as a query group and has share 0 as a key group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from vitmech.batching import concat_results, image_batches
from vitmech.errors import InputError, UnknownNameError
from vitmech.tokens import TokenLayout, layout_for, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model.hooked_vit import HookedViT

KEY_GROUPS: tuple[str, ...] = ("class", "distillation", "registers", "outlier patches", "other patches")
QUERY_GROUPS: tuple[str, ...] = ("class", "registers", "patches")
DEFAULT_FACTOR = 3.0


def token_norms(resid: Float[Tensor, "*batch pos d_model"]) -> Float[Tensor, "*batch pos"]:
    """L2 norm of every token's residual-stream vector (float64 accumulation, returned in resid's dtype)."""
    return torch.linalg.vector_norm(resid.double(), dim=-1).to(resid.dtype)


def outlier_patches(
    norms: Float[Tensor, "*batch pos"], layout: TokenLayout, factor: float = DEFAULT_FACTOR
) -> Bool[Tensor, "*batch pos"]:
    """High-norm patch tokens: norm > factor x the median patch norm of the same row (prefix tokens False).

    The median is torch's lower median for an even number of patches.
    """
    if not factor > 0:
        raise InputError(f"factor must be > 0, got {factor!r}")
    layout = layout_for(norms.shape[-1], layout, "norms")
    patches = layout.patches(norms, -1)
    median = patches.median(-1, keepdim=True).values
    return layout.pad_prefix(patches > factor * median, dims=(-1,), value=False)


def key_group_masks(outliers: Bool[Tensor, "*batch pos"], layout: TokenLayout) -> Float[Tensor, "*batch group pos"]:
    """One 0/1 row per key group of KEY_GROUPS over the P tokens (every token in exactly one group)."""
    layout = layout_for(outliers.shape[-1], layout, "outliers")
    masks = torch.zeros(*outliers.shape[:-1], len(KEY_GROUPS), outliers.shape[-1], dtype=torch.bool)
    masks = masks.to(outliers.device)
    if layout.class_index is not None:
        masks[..., 0, layout.class_index] = True
    if layout.distill_index is not None:
        masks[..., 1, layout.distill_index] = True
    layout.registers(masks[..., 2, :], -1).fill_(True)
    patch = layout.pad_prefix(torch.ones(layout.n_patches, dtype=torch.bool, device=outliers.device), value=False)
    masks[..., 3, :] = outliers & patch
    masks[..., 4, :] = ~outliers & patch
    return masks.float()


def query_group_weights(layout: TokenLayout, dtype: torch.dtype = torch.float32) -> Float[Tensor, "group pos"]:
    """One averaging row per query group of QUERY_GROUPS (weights 1/size on its members; NaN rows for empty
    groups)."""
    weights = torch.zeros(len(QUERY_GROUPS), layout.n_tokens, dtype=dtype)
    if layout.class_index is not None:
        weights[0, layout.class_index] = 1.0
    else:
        weights[0] = float("nan")
    if layout.n_registers:
        layout.registers(weights[1], -1).fill_(1.0 / layout.n_registers)
    else:
        weights[1] = float("nan")
    layout.patches(weights[2], -1).fill_(1.0 / layout.n_patches)
    return weights


def attention_shares(
    patterns: Float[Tensor, "batch layer head query key"],
    key_outliers: Bool[Tensor, "batch layer key"],
    layout: TokenLayout,
) -> Float[Tensor, "batch layer head query_group key_group"]:
    """Attention each query group gives each key group, per image, layer and head.

    key_outliers[b, l] marks the outlier patches among layer l's keys (the outliers of stage l).
    share[b, l, h, q, k] = sum over queries i, keys j of w_q[i] A[b, l, h, i, j] m_k[b, l, j].
    """
    layout = layout_for(patterns.shape[-1], layout, "patterns")
    masks = key_group_masks(key_outliers, layout).to(patterns.dtype)  # [B, L, K, P]
    queries = query_group_weights(layout, patterns.dtype).to(patterns.device)  # [Q, P]
    to_groups = torch.einsum("blhij,blkj->blhik", patterns, masks)  # [B, L, H, P, K]
    return torch.einsum("qi,blhik->blhqk", queries, to_groups)


@dataclass
class RegisterAnalysis:
    """Token norms, outlier patches and attention shares of one model on a set of images.

    Attributes:
        norms: [batch, stage, pos] L2 norms of the residual stream entering each block and after the last.
        outliers: [batch, stage, pos] the outlier patches of each stage (see the module docstring).
        shares: [batch, layer, head, query_group, key_group] attention shares (QUERY_GROUPS x KEY_GROUPS).
        register_maps: [batch, layer, head, register, patch] each register query's attention over the
            patches (not renormalised); size 0 on the register axis without registers.
        layout: the token layout.
        factor: the outlier threshold factor.
    """

    norms: Float[Tensor, "batch stage pos"]
    outliers: Bool[Tensor, "batch stage pos"]
    shares: Float[Tensor, "batch layer head query_group key_group"]
    register_maps: Float[Tensor, "batch layer head register patch"]
    layout: TokenLayout
    factor: float

    @property
    def n_images(self) -> int:
        return self.norms.shape[0]

    @property
    def n_layers(self) -> int:
        return self.shares.shape[1]

    @property
    def stage_labels(self) -> list[str]:
        return ["embed"] + [f"L{layer}" for layer in range(self.n_layers)]

    def share_of(self, key_group: str, query: str = "class") -> Float[Tensor, " layer"]:
        """Mean over images and heads of the attention `query` (a QUERY_GROUPS name) gives `key_group`."""
        if key_group not in KEY_GROUPS or query not in QUERY_GROUPS:
            raise UnknownNameError(f"key_group must be one of {KEY_GROUPS} and query one of {QUERY_GROUPS}")
        return self.shares[..., QUERY_GROUPS.index(query), KEY_GROUPS.index(key_group)].mean((0, 2))

    def outlier_fraction(self) -> Float[Tensor, " stage"]:
        """Fraction of patch tokens that are outliers, per stage (over all images)."""
        return self.layout.patches(self.outliers, -1).float().mean((0, 2))

    def mean_norms(self) -> dict[str, Float[Tensor, " stage"]]:
        """Mean norm per stage of each kind of token present (outlier/other patches: over those tokens)."""
        out: dict[str, Tensor] = {}
        if self.layout.class_index is not None:
            out["class"] = self.layout.class_token(self.norms, -1).mean(0)
        if self.layout.n_registers:
            out["registers"] = self.layout.registers(self.norms, -1).mean((0, 2))
        patches = self.layout.patches(self.norms, -1)
        marked = self.layout.patches(self.outliers, -1).float()
        out["patches (median)"] = patches.median(-1).values.mean(0)
        out["outlier patches"] = (patches * marked).sum((0, 2)) / marked.sum((0, 2))  # NaN where none
        out["other patches"] = (patches * (1 - marked)).sum((0, 2)) / (1 - marked).sum((0, 2))
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per stage: mean norms by token kind, outlier fraction, and (for the block reading the
        stage) the attention shares of the outlier patches and registers from the class, register and
        patch queries (means over images and heads)."""
        import pandas as pd

        frame = pd.DataFrame({"stage": self.stage_labels, "block": [*range(self.n_layers), None]})
        for kind, values in self.mean_norms().items():
            frame[f"norm {kind}"] = values.tolist()
        frame["outlier fraction"] = self.outlier_fraction().tolist()
        nan = [float("nan")]
        for query in QUERY_GROUPS:
            for key in ("outlier patches", "registers", "class"):
                # stage s feeds block s: block l's share goes on stage l's row; the last stage has no block
                frame[f"share {query} -> {key}"] = self.share_of(key, query).tolist() + nan
        frame["factor"] = self.factor
        frame["n_images"] = self.n_images
        frame["readout"] = self.layout.readout_name
        return frame

    @classmethod
    def concat(cls, parts: Sequence[RegisterAnalysis]) -> RegisterAnalysis:
        """Join results of image batches (same layout and factor) along the image axis."""
        return concat_results(parts)


def analyse_tokens(
    stages: Float[Tensor, "batch stage pos d_model"],
    patterns: Float[Tensor, "batch layer head query key"],
    layout: TokenLayout,
    factor: float = DEFAULT_FACTOR,
) -> RegisterAnalysis:
    """A RegisterAnalysis from residual streams of every stage (L + 1) and the attention patterns (L)."""
    if stages.shape[1] != patterns.shape[1] + 1:
        raise InputError(f"{stages.shape[1]} stages for {patterns.shape[1]} layers; give L + 1 residual streams")
    layout = layout_for(patterns.shape[-1], layout, "patterns")
    norms = token_norms(stages)
    outliers = outlier_patches(norms, layout, factor)
    with torch.no_grad():
        shares = attention_shares(patterns, outliers[:, :-1], layout)
        register_maps = layout.patches(layout.registers(patterns, -2), -1).clone()
    return RegisterAnalysis(
        norms=norms.detach(),
        outliers=outliers,
        shares=shares,
        register_maps=register_maps,
        layout=layout,
        factor=factor,
    )


def register_analysis(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    *,
    factor: float = DEFAULT_FACTOR,
    batch_size: int = 8,
    progress: bool = True,
) -> RegisterAnalysis:
    """Token norms, outlier patches and attention shares of `model` on preprocessed `images`, in batches."""
    model.check_images(images)
    layout = token_layout(model)
    n_layers = model.cfg.n_layers
    names = [get_act_name("resid_pre", layer) for layer in range(n_layers)]
    names += [get_act_name("resid_post", n_layers - 1)]
    names += [get_act_name("pattern", layer) for layer in range(n_layers)]
    parts = []
    bar = tqdm(total=images.shape[0], desc="token norms", unit="img", disable=not progress)
    for _, batch in image_batches(images, batch_size):
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
        stages = torch.stack([cache[name] for name in names[: n_layers + 1]], 1)
        patterns = torch.stack([cache[name] for name in names[n_layers + 1 :]], 1)
        parts.append(analyse_tokens(stages, patterns, layout, factor))
        bar.update(batch.shape[0])
    bar.close()
    return RegisterAnalysis.concat(parts)


def summary(result: RegisterAnalysis) -> dict[str, Any]:
    """Headline numbers: outlier fraction at the last stage, and the last block's shares to outliers and
    registers from the readout query (the class token, else the patch mean)."""
    query = "class" if result.layout.class_index is not None else "patches"
    return {
        "factor": result.factor,
        "n_images": result.n_images,
        "outlier_fraction_last_stage": float(result.outlier_fraction()[-1]),
        "query": query,
        "last_block_share_to_outliers": float(result.share_of("outlier patches", query)[-1]),
        "last_block_share_to_registers": float(result.share_of("registers", query)[-1]),
    }


__all__ = [
    "DEFAULT_FACTOR",
    "KEY_GROUPS",
    "QUERY_GROUPS",
    "RegisterAnalysis",
    "analyse_tokens",
    "attention_shares",
    "key_group_masks",
    "outlier_patches",
    "query_group_weights",
    "register_analysis",
    "summary",
    "token_norms",
]
