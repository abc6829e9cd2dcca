"""The exact fast path: re-run a ViT from the ablated layer on, starting from clean activations.

Ablating heads changes nothing before the first ablated layer l0, so the engine:

1. caches, in one clean forward, resid_mid and z at l0 (and mean_k v for uniform attention);
2. inside layer l0 adds each ablated head's change to the residual through W_O:
   resid_mid' = resid_mid + sum_h (z'_h - z_h) @ W_O[h]  (no attention recomputation);
3. runs layer l0's MLP without its full input matmul: LN2 is linear up to the per-token scale, so
   LN2(resid_mid') @ W_in = [c(resid_mid) * w @ W_in  +  sum_h (z'_h - z_h) @ (c(W_O[h]) * w @ W_in)] / sigma'
   + b @ W_in, where c() centres over d_model: the first term is shared by every variant of the batch,
   the second costs d_head / d_model of a full matmul; then the later layers, replacing z of any
   later ablated heads;
4. when the output reads only some positions (class pooling; DeiT's distillation token too), computes
   the last layer for those queries alone;
5. stacks k ablation variants along the batch axis ("(k b)" rows, variant-major) in one forward.

Every block is run through its own hook-free steps (`TransformerBlock.attention_residual`,
`mlp_residual`, and the attention / MLP steps they chain), the same maths as the hooked forward, so
LayerScale, qk-norm, gated MLPs and every pooling are exact by construction; blocks of another type are
refused, naming it.

All tensors here are float, on the model's device; nothing keeps gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from einops import einsum, rearrange, repeat
from jaxtyping import Bool, Float
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.interventions import BoundAblation
from vitmech.analysis.ablation.metrics import OutputKind
from vitmech.errors import AblationError, UnsupportedModelError
from vitmech.model.block import TransformerBlock
from vitmech.model.hooked_vit import HookedViT
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.mlp import MLP

VariantMasks = dict[int, Bool[torch.Tensor, "variant head"]]


@dataclass
class CleanState:
    """Clean activations of one batch of B images, at the layers a sweep restarts from."""

    output: torch.Tensor  # [B, n_classes] / [B, d_model] / [B, P, d_model] by output kind
    resid_mid: dict[int, Float[torch.Tensor, "batch pos d_model"]] = field(default_factory=dict)
    z: dict[int, Float[torch.Tensor, "batch pos head d_head"]] = field(default_factory=dict)
    value_mean: dict[int, Float[torch.Tensor, "batch head d_head"]] = field(default_factory=dict)
    # (layer, positions) -> c(resid_mid) * ln2.w @ W_in [batch, pos, d_mlp], computed on first use
    centred_mlp_in: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)

    def release(self, layer: int) -> None:
        """Free what restarting at `layer` needed (a sweep calls it once that layer's cells are done)."""
        for store in (self.resid_mid, self.z, self.value_mean):
            store.pop(layer, None)
        for key in [k for k in self.centred_mlp_in if k[0] == layer]:
            del self.centred_mlp_in[key]


@torch.no_grad()
def run_clean(
    model: HookedViT,
    images: Float[torch.Tensor, "batch c h w"],
    start_layers: set[int],
    output_kind: OutputKind,
    need_values: bool,
) -> CleanState:
    """One clean forward caching what restarting at each of `start_layers` needs."""
    names = []
    for layer in sorted(start_layers):
        names += [get_act_name("resid_mid", layer), get_act_name("z", layer)]
        if need_values:
            names.append(get_act_name("v", layer))
    output, cache = model.run_with_cache(images, names_filter=names, return_type=output_kind, return_cache_object=False)
    state = CleanState(output=output)
    for layer in start_layers:
        state.resid_mid[layer] = cache[get_act_name("resid_mid", layer)]
        state.z[layer] = cache[get_act_name("z", layer)]
        if need_values:
            state.value_mean[layer] = cache[get_act_name("v", layer)].mean(1)
    return state


def _rows(mask: Bool[torch.Tensor, "variant head"], batch: int) -> Bool[torch.Tensor, "row 1 head 1"]:
    return repeat(mask, "k h -> (k b) 1 h 1", b=batch)


def check_recomputable(model: HookedViT) -> None:
    """Refuse, naming the part, a model whose blocks are not vitmech's own (their maths is not known here)."""
    for layer, block in enumerate(model.blocks):
        if type(block) is not TransformerBlock:
            raise UnsupportedModelError(
                f"the exact ablation engine cannot recompute blocks.{layer} ({type(block).__name__}); use engine='naive'"
            )
        for part in (block.ln1, block.ln2, block.mlp):
            if type(part) not in (LayerNorm, MLP):
                raise UnsupportedModelError(
                    f"the exact ablation engine cannot recompute blocks.{layer} {type(part).__name__}; use engine='naive'"
                )


def _z_editor(
    bound: BoundAblation, layer: int, rows: Bool[torch.Tensor, "n 1 head 1"], positions: slice
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """edit_z(z, v) for the block's attention: z replaced by the ablation's values where `rows` is True."""

    def edit(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        replacement = bound.replacement(layer, z, positions, lambda: v.mean(1))
        return torch.where(rows, replacement, z)

    return edit


def full_block(
    block: TransformerBlock,
    resid: Float[torch.Tensor, "n pos d_model"],
    layer: int,
    rows: Bool[torch.Tensor, "n 1 head 1"] | None = None,
    bound: BoundAblation | None = None,
    queries: slice | None = None,
) -> Float[torch.Tensor, "n q_pos d_model"]:
    """The block's own maths (`TransformerBlock.attention_residual` and `mlp_residual`, no hook points) at
    the query positions `queries` (all by default); z replaced by `bound`'s values where `rows` is True."""
    edit = None
    if rows is not None and bound is not None:
        edit = _z_editor(bound, layer, rows, slice(None) if queries is None else queries)
    return block.mlp_residual(block.attention_residual(resid, queries, edit))


def _head_mlp_inputs(
    block: TransformerBlock, layer: int, heads: torch.Tensor, weight_cache: dict | None
) -> Float[torch.Tensor, "head d_head d_mlp"]:
    """c(W_O[h]) * ln2.w @ W_in per head (c centres over d_model; W_O with the LayerScale gain, W_in with the
    gate for gated MLPs): how a change of z_h enters the MLP's pre-activations."""
    key = ("head_mlp_in", layer)
    if weight_cache is not None and key in weight_cache:
        return weight_cache[key][heads]
    w_o = block.attn.W_O_write
    all_heads = (w_o - w_o.mean(-1, keepdim=True)) * block.ln2.w @ block.mlp.input_weights()[0]
    if weight_cache is not None:
        weight_cache[key] = all_heads
    return all_heads[heads]


def start_layer(
    block: TransformerBlock,
    state: CleanState,
    layer: int,
    positions: slice,
    diff: Float[torch.Tensor, "batch pos head d_head"],
    start_mask: Bool[torch.Tensor, "variant head"],
    weight_cache: dict | None = None,
) -> Float[torch.Tensor, "n pos d_model"]:
    """Layer `layer`'s output for each variant, given z' - z of every head (`diff`) at its query positions.

    resid_mid' = clean resid_mid + sum_h (z'_h - z_h) @ W_O[h] (variant k sums the heads of start_mask[k]);
    the MLP input reuses the clean run (module docstring, step 3). Single-head variants (a head sweep) take
    a fused batched matmul per variant; head sets take a weighted sum over the heads used.
    """
    ln2, mlp = block.ln2, block.mlp
    w_in, b_in = mlp.input_weights()
    clean = state.resid_mid[layer][:, positions]
    n_batch, n_pos, d_model = clean.shape
    n_variants = start_mask.shape[0]
    cache_key = (layer, positions.stop)
    if cache_key not in state.centred_mlp_in:
        state.centred_mlp_in[cache_key] = (clean - clean.mean(-1, keepdim=True)) * ln2.w @ w_in
    shared = state.centred_mlp_in[cache_key].reshape(1, n_batch * n_pos, -1)  # [1, B p, m]
    w_o = block.attn.W_O_write
    if bool((start_mask.sum(1) == 1).all()):
        heads = start_mask.to(torch.uint8).argmax(1)  # the one head of each variant
        diff_k = rearrange(diff[:, :, heads], "b p k e -> k (b p) e")
        resid_mid = torch.baddbmm(clean.reshape(1, n_batch * n_pos, d_model), diff_k, w_o[heads])
        centred_in = torch.baddbmm(shared, diff_k, _head_mlp_inputs(block, layer, heads, weight_cache))
    else:
        used = start_mask.any(0).nonzero()[:, 0]
        weights = start_mask[:, used].to(diff.dtype)  # [k, U]
        diff_u = diff[:, :, used]
        per_head = einsum(diff_u, w_o[used], "b p u e, u e d -> u b p d")
        resid_mid = einsum(weights, per_head, "k u, u b p d -> k b p d").reshape(n_variants, -1, d_model)
        resid_mid = resid_mid.add_(clean.reshape(1, n_batch * n_pos, d_model))
        per_head_in = einsum(diff_u, _head_mlp_inputs(block, layer, used, weight_cache), "b p u e, u e m -> u b p m")
        centred_in = einsum(weights, per_head_in, "k u, u b p m -> k b p m").reshape(n_variants, n_batch * n_pos, -1)
        centred_in = centred_in.add_(shared)
    resid_mid = resid_mid.view(n_variants * n_batch, n_pos, d_model)
    sigma = resid_mid.var(-1, unbiased=False, keepdim=True).add_(ln2.eps).sqrt_()
    pre = centred_in.view(n_variants * n_batch, n_pos, -1).div_(sigma).add_(ln2.b @ w_in + b_in)
    return mlp.write(mlp.activate(pre)) + resid_mid


@torch.no_grad()
def run_variants(
    model: HookedViT,
    state: CleanState,
    bound: BoundAblation,
    start_layer_index: int,
    masks: VariantMasks,
    n_variants: int,
    output_kind: OutputKind,
    weight_cache: dict | None = None,
) -> torch.Tensor:
    """Outputs of `n_variants` ablations of one batch, stacked "(k b) ...".

    masks[l][k, h] is True where variant k ablates head h of layer l; no layer before `start_layer_index`
    may be ablated. Variants with no heads at the start layer just recompute from there. weight_cache
    (a dict kept across calls for the same model weights) saves per-head products of weights.
    """
    check_recomputable(model)
    n_layers = len(model.blocks)
    last_queries = model.query_positions() if output_kind != "tokens" else None
    l0 = start_layer_index
    if any(layer < l0 for layer in masks):
        raise AblationError(f"masks ablate layers {sorted(masks)} before the start layer {l0}")
    batch = state.resid_mid[l0].shape[0]
    positions = last_queries if (last_queries is not None and l0 == n_layers - 1) else slice(None)

    start_mask = masks.get(l0)
    if start_mask is not None and bool(start_mask.any()):
        z = state.z[l0][:, positions]
        diff = bound.replacement(l0, z, positions, lambda: state.value_mean[l0]) - z
        resid = start_layer(model.blocks[l0], state, l0, positions, diff, start_mask, weight_cache)
    else:
        clean_mid = repeat(state.resid_mid[l0][:, positions], "b p d -> (k b) p d", k=n_variants)
        resid = model.blocks[l0].mlp_residual(clean_mid)

    for layer in range(l0 + 1, n_layers):
        mask = masks.get(layer)
        rows = _rows(mask, batch) if mask is not None and bool(mask.any()) else None
        queries = last_queries if layer == n_layers - 1 else None
        resid = full_block(model.blocks[layer], resid, layer, rows, bound, queries)
    return model.unembed(resid, return_type=output_kind)
