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
4. when the metric reads only the CLS output, computes the last layer for the CLS query alone:
   scores = LN1(x) . (W_K q_cls) (the key bias only shifts scores, cancelling in the softmax) and
   z_cls = (pattern @ LN1(x)) @ W_V + b_V (rows of the pattern sum to 1), never forming keys or values;
5. stacks k ablation variants along the batch axis ("(k b)" rows, variant-major) in one forward.

All tensors here are float, on the model's device; nothing keeps gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from jaxtyping import Bool, Float

from vitmech.analysis.ablation.interventions import BoundAblation
from vitmech.analysis.ablation.metrics import OutputKind
from vitmech.model.block import TransformerBlock
from vitmech.model.mlp import ACTIVATIONS
from vitmech.model.hooked_vit import HookedViT

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
        names += [f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.attn.hook_z"]
        if need_values:
            names.append(f"blocks.{layer}.attn.hook_v")
    output, cache = model.run_with_cache(images, names_filter=names, return_type=output_kind, return_cache_object=False)
    state = CleanState(output=output)
    for layer in start_layers:
        state.resid_mid[layer] = cache[f"blocks.{layer}.hook_resid_mid"]
        state.z[layer] = cache[f"blocks.{layer}.attn.hook_z"]
        if need_values:
            state.value_mean[layer] = cache[f"blocks.{layer}.attn.hook_v"].mean(1)
    return state


def _rows(mask: Bool[torch.Tensor, "variant head"], batch: int) -> Bool[torch.Tensor, "row 1 head 1"]:
    return repeat(mask, "k h -> (k b) 1 h 1", b=batch)


def _attn_out(block: TransformerBlock, z: Float[torch.Tensor, "n pos head d_head"]) -> Float[torch.Tensor, "n pos d_model"]:
    attn = block.attn
    return F.linear(rearrange(z, "n p h e -> n p (h e)"), rearrange(attn.W_O, "h e d -> (h e) d").T, attn.b_O)


def _mlp_half(block: TransformerBlock, resid_mid: torch.Tensor) -> torch.Tensor:
    return resid_mid + block.mlp(block.ln2(resid_mid))


def block_with_replacement(
    block: TransformerBlock,
    resid: Float[torch.Tensor, "n pos d_model"],
    rows: Bool[torch.Tensor, "n 1 head 1"],
    bound: BoundAblation,
    layer: int,
) -> Float[torch.Tensor, "n pos d_model"]:
    """A full block whose z is replaced where `rows` is True (per row and head)."""
    attn = block.attn
    q, k, v = attn.qkv(block.ln1(resid))
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    replacement = bound.replacement(layer, z, slice(None), lambda: v.mean(1))
    z = torch.where(rows, replacement, z)
    return _mlp_half(block, resid + _attn_out(block, z))


def cls_block(
    block: TransformerBlock,
    resid: Float[torch.Tensor, "n pos d_model"],
    rows: Bool[torch.Tensor, "n 1 head 1"] | None,
    bound: BoundAblation,
    layer: int,
) -> Float[torch.Tensor, "n 1 d_model"]:
    """The block's output at the CLS position only (keys and values never formed)."""
    attn = block.attn
    x = block.ln1(resid)  # [n, P, d]
    q = einsum(x[:, 0], attn.W_Q, "n d, h d e -> n h e") + attn.b_Q
    key_dirs = einsum(q, attn.W_K, "n h e, h d e -> n h d") * attn.scale
    pattern = torch.softmax(torch.bmm(key_dirs, x.transpose(1, 2)), dim=-1)  # [n, h, P]
    pooled = torch.bmm(pattern, x)  # [n, h, d]
    z = einsum(pooled, attn.W_V, "n h d, h d e -> n h e") + attn.b_V
    if rows is not None:
        def value_mean() -> torch.Tensor:
            return einsum(x.mean(1), attn.W_V, "n d, h d e -> n h e") + attn.b_V

        replacement = bound.replacement(layer, z[:, None], slice(0, 1), value_mean)[:, 0]
        z = torch.where(rows[:, 0], replacement, z)
    attn_out = einsum(z, attn.W_O, "n h e, h e d -> n d") + attn.b_O
    return _mlp_half(block, resid[:, :1] + attn_out[:, None])


def _start_layer_mlp(
    block: TransformerBlock,
    state: CleanState,
    layer: int,
    positions: slice,
    resid_mid: Float[torch.Tensor, "n pos d_model"],
    diff: Float[torch.Tensor, "batch pos used d_head"],
    used: torch.Tensor,
    weights: Float[torch.Tensor, "variant used"],
) -> Float[torch.Tensor, "n pos d_model"]:
    """resid_mid + MLP(LN2(resid_mid)) for resid_mid = clean + sum_h weights[k, h] (diff_h @ W_O[h]), with the
    shared part of LN2(.) @ W_in taken from the clean run (see the module docstring, step 3)."""
    ln2, mlp = block.ln2, block.mlp
    cache_key = (layer, positions.stop)
    if cache_key not in state.centred_mlp_in:
        clean = state.resid_mid[layer][:, positions]
        state.centred_mlp_in[cache_key] = (clean - clean.mean(-1, keepdim=True)) * ln2.w @ mlp.W_in
    w_o = block.attn.W_O[used]
    head_in = (w_o - w_o.mean(-1, keepdim=True)) * ln2.w @ mlp.W_in  # [U, d_head, d_mlp]
    per_head = einsum(diff, head_in, "b p u e, u e m -> u b p m")
    shared = state.centred_mlp_in[cache_key]
    centred_in = rearrange(shared + einsum(weights, per_head, "k u, u b p m -> k b p m"), "k b p m -> (k b) p m")
    sigma = (resid_mid.var(-1, unbiased=False, keepdim=True) + ln2.eps).sqrt()
    pre = centred_in / sigma + (ln2.b @ mlp.W_in + mlp.b_in)
    return resid_mid + F.linear(ACTIVATIONS[mlp.act_fn](pre), mlp.W_out.T, mlp.b_out)


@torch.no_grad()
def run_variants(
    model: HookedViT,
    state: CleanState,
    bound: BoundAblation,
    start_layer: int,
    masks: VariantMasks,
    n_variants: int,
    output_kind: OutputKind,
) -> torch.Tensor:
    """Outputs of `n_variants` ablations of one batch, stacked "(k b) ...".

    masks[l][k, h] is True where variant k ablates head h of layer l; no layer before `start_layer`
    may be ablated. Variants with no heads at start_layer just recompute from there.
    """
    n_layers = len(model.blocks)
    cls_only = output_kind != "tokens"
    l0 = start_layer
    if any(layer < l0 for layer in masks):
        raise ValueError(f"masks ablate layers {sorted(masks)} before the start layer {l0}")
    batch = state.resid_mid[l0].shape[0]
    positions = slice(0, 1) if (cls_only and l0 == n_layers - 1) else slice(None)

    resid_mid = repeat(state.resid_mid[l0][:, positions], "b p d -> (k b) p d", k=n_variants)
    start_mask = masks.get(l0)
    if start_mask is not None and bool(start_mask.any()):
        used = start_mask.any(0).nonzero()[:, 0]
        z = state.z[l0][:, positions]
        replacement = bound.replacement(l0, z, positions, lambda: state.value_mean[l0])
        diff = (replacement - z)[:, :, used]  # [B, p, U, d_head]
        weights = start_mask[:, used].to(diff.dtype)  # [k, U]
        per_head = einsum(diff, model.blocks[l0].attn.W_O[used], "b p u e, u e d -> u b p d")
        delta = einsum(weights, per_head, "k u, u b p d -> k b p d")
        resid_mid = resid_mid + rearrange(delta, "k b p d -> (k b) p d")
        resid = _start_layer_mlp(model.blocks[l0], state, l0, positions, resid_mid, diff, used, weights)
    else:
        resid = _mlp_half(model.blocks[l0], resid_mid)

    for layer in range(l0 + 1, n_layers):
        block = model.blocks[layer]
        mask = masks.get(layer)
        rows = _rows(mask, batch) if mask is not None and bool(mask.any()) else None
        if cls_only and layer == n_layers - 1:
            resid = cls_block(block, resid, rows, bound, layer)
        elif rows is None:
            resid = block(resid)
        else:
            resid = block_with_replacement(block, resid, rows, bound, layer)
    return model.unembed(resid, return_type=output_kind)
