"""Chefer et al. 2021 ("Transformer Interpretability Beyond Attention Visualization", arXiv 2012.09838):
the LRP-based transformer attribution, and the attention Grad-CAM baseline of that paper.

Transformer attribution. Relevance starts as the one-hot target at the logits and is propagated down to
every block's attention map with the paper's rules (as in the authors' code, github.com/hila-chefer/
Transformer-Explainability, `ViT_LRP.py`, alpha = 1, beta = 0):

- linear maps (head, MLP, qkv, output projection): LRP-alpha1beta0, biases left out:
  R_in = x+ * ((R / z) @ W+^T) + x- * ((R / z) @ W-^T) with z = x+ @ W+ + x- @ W-;
- LayerNorm, GELU, softmax: relevance passes unchanged;
- the two matrix products of attention (q k^T and A v): R_a = a * grad_a(a @ b . (R / (a @ b))), the same
  for b, each then halved;
- residual additions a + b: R_a = a * R / (a + b), rescaled so that R_a and R_b sum to
  |sum R_a| / (|sum R_a| + |sum R_b|) * sum R (and the same for b), per image;
- the class-token pooling: relevance goes to the class token (the mean over patches spreads it).

Divisions are the authors' `safe_divide`: a / (b + 1e-9) (and 0 where b == 0). With R_b the relevance of
block b's attention map and dA_b = d y_target / d A_b: Abar_b = I + mean_h[(dA_b * R_b)^+], C = Abar_L ...
Abar_1, and the map is the readout row of C over the patches.

Attention Grad-CAM (the paper's "GradCAM" baseline for ViTs): on the last block, per head the class
token's attention row over the patches times the mean of its gradient over those patches, averaged over
heads, negative values zeroed.

    maps = transformer_attribution(model, images, target)        # [B, gh, gw]
    maps = attention_gradcam(model, images, target)               # [B, gh, gw]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.utilities import get_act_name

from vitmech.analysis.rollout import Target, attention_gradients
from vitmech.errors import InputError
from vitmech.tokens import token_layout

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

EPS = 1e-9
"""The stabiliser of the authors' safe_divide."""


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """The authors' `safe_divide`: a / (b + 1e-9), with 0 where b == 0."""
    den = b.clamp(min=EPS) + b.clamp(max=EPS)
    den = den + den.eq(0).to(den.dtype) * EPS
    return a / den * b.ne(0).to(b.dtype)


def linear_relevance(
    x: Float[Tensor, "*batch d_in"], weight: Float[Tensor, "d_in d_out"], relevance: Float[Tensor, "*batch d_out"]
) -> Float[Tensor, "*batch d_in"]:
    """LRP-alpha1beta0 through y = x @ weight (+ bias, left out): the positive contributions x+ W+ and x- W-."""
    px, nx = x.clamp(min=0), x.clamp(max=0)
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    s = safe_divide(relevance, px @ pw + nx @ nw)
    return px * (s @ pw.T) + nx * (s @ nw.T)


def residual_relevance(
    a: Float[Tensor, "batch pos d"], b: Float[Tensor, "batch pos d"], relevance: Float[Tensor, "batch pos d"]
) -> tuple[Float[Tensor, "batch pos d"], Float[Tensor, "batch pos d"]]:
    """Relevance of the two terms of a + b, renormalised per image so their totals keep the ratio of their
    absolute sums and together conserve the relevance (Chefer et al. 2021, eq. 9)."""
    s = safe_divide(relevance, a + b)
    ra, rb = a * s, b * s
    sum_a, sum_b = ra.sum((1, 2), keepdim=True), rb.sum((1, 2), keepdim=True)
    total = relevance.sum((1, 2), keepdim=True)
    denom = sum_a.abs() + sum_b.abs()
    ra = ra * safe_divide(safe_divide(sum_a.abs(), denom) * total, sum_a)
    rb = rb * safe_divide(safe_divide(sum_b.abs(), denom) * total, sum_b)
    return ra, rb


def clone_relevance(x: Tensor, *relevances: Tensor) -> Tensor:
    """Relevance of a tensor used twice (a residual branch point): x * sum_i R_i / x."""
    return x * sum(safe_divide(r, x) for r in relevances)


def matmul_relevance(
    a: Float[Tensor, "*batch m k"], b: Float[Tensor, "*batch k n"], relevance: Float[Tensor, "*batch m n"]
) -> tuple[Float[Tensor, "*batch m k"], Float[Tensor, "*batch k n"]]:
    """Relevance of both factors of a @ b (gradient times input with s = R / (a @ b)), each halved."""
    s = safe_divide(relevance, a @ b)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def check_supported(model: HookedViT) -> None:
    """A clear error for the parts the published rules do not cover."""
    cfg = model.cfg
    unsupported = [
        name
        for name, present in (
            ("a gated MLP", cfg.gated_mlp),
            ("an MLP hidden norm", cfg.mlp_norm),
            ("LayerScale", cfg.layer_scale),
            ("qk-norm", cfg.qk_norm),
            ("rotary position embeddings", cfg.rope != "none"),
            ("attention pooling", cfg.pool == "map"),
            (f"position-keeping pooling ({cfg.pool})", cfg.pool in ("flatten", "rowcol")),
            ("a distillation head", cfg.has_distill_head),
            ("pruned heads", cfg.n_heads_per_layer is not None),
        )
        if present
    ]
    if not cfg.has_classifier:
        unsupported.append("no classifier head")
    if unsupported:
        raise InputError(
            "the LRP transformer attribution (Chefer et al. 2021) covers ViTs with a classifier, class-token or "
            f"average pooling and plain MLPs; this model has {', '.join(unsupported)}"
        )


def attention_relevance(
    model: HookedViT, images: Float[Tensor, "batch channel height width"], target: Int[Tensor, " batch"]
) -> Float[Tensor, "batch layer head query key"]:
    """R(A_b) for every block: the LRP relevance of each attention map for the target class (one-hot at
    the logits), propagated with the rules in the module docstring."""
    check_supported(model)
    layout = token_layout(model)
    names: tuple[str, ...] = (
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "hook_mlp_out",
        "hook_resid_post",
        "mlp.hook_post",
    )
    names += ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern", "attn.hook_z")
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            images, names_filter=lambda n: n.endswith(names) or n in ("hook_pooled",), return_type="logits"
        )
        n_classes = logits.shape[-1]
        relevance = F.one_hot(target.long(), n_classes).to(logits.dtype)
        pooled = cache["hook_pooled"]
        if model.cfg.final_norm == "pooled":
            pooled = F.layer_norm(pooled, (model.cfg.d_model,), model.fc_norm.w, model.fc_norm.b, model.fc_norm.eps)
        relevance = linear_relevance(pooled, model.head.W_H, relevance)  # [B, d]
        last = model.cfg.n_layers - 1
        tokens = cache[get_act_name("resid_post", last)]
        if model.cfg.final_norm == "tokens":
            tokens = F.layer_norm(tokens, (model.cfg.d_model,), model.ln_final.w, model.ln_final.b, model.ln_final.eps)
        if model.cfg.pool == "cls":  # pooled = tokens[:, class]; relevance x * R / x at the class token
            index = layout.require_class_token("class-token pooling")
            r_tokens = torch.zeros_like(tokens)
            r_tokens[:, index] = tokens[:, index] * safe_divide(relevance, tokens[:, index])
        else:  # pooled = mean over the patch tokens
            patches = layout.patches(tokens)
            r_patches = patches * safe_divide(relevance, patches.mean(1))[:, None] / patches.shape[1]
            r_tokens = layout.pad_prefix(r_patches, dims=(1,))
        per_layer: list[Tensor] = [torch.empty(0)] * model.cfg.n_layers
        relevance = r_tokens
        for layer in range(last, -1, -1):
            block = model.blocks[layer]
            resid_pre, resid_mid = cache[get_act_name("resid_pre", layer)], cache[get_act_name("resid_mid", layer)]
            # resid_post = resid_mid + mlp(ln2(resid_mid))
            r_skip, r_mlp = residual_relevance(resid_mid, cache[get_act_name("mlp_out", layer)], relevance)
            post = cache[get_act_name("post", layer)]
            r_post = linear_relevance(post, block.mlp.W_out, r_mlp)
            ln2 = F.layer_norm(resid_mid, (resid_mid.shape[-1],), block.ln2.w, block.ln2.b, block.ln2.eps)
            r_ln2 = linear_relevance(ln2, block.mlp.W_in, r_post)  # GELU: relevance passes unchanged
            relevance = clone_relevance(resid_mid, r_skip, r_ln2)  # ln2: unchanged
            # resid_mid = resid_pre + attn(ln1(resid_pre))
            r_skip, r_attn = residual_relevance(resid_pre, cache[get_act_name("attn_out", layer)], relevance)
            z = rearrange(cache[get_act_name("z", layer)], "b p h e -> b p (h e)")
            r_z = linear_relevance(z, rearrange(block.attn.W_O, "h e d -> (h e) d"), r_attn)
            r_z = rearrange(r_z, "b p (h e) -> b h p e", h=block.attn.n_heads)
            pattern = cache[get_act_name("pattern", layer)]  # [B, H, P, P]
            v = rearrange(cache[get_act_name("v", layer)], "b p h e -> b h p e")
            r_pattern, r_v = matmul_relevance(pattern, v, r_z)
            per_layer[layer] = r_pattern
            q = rearrange(cache[get_act_name("q", layer)], "b p h e -> b h p e")
            k = rearrange(cache[get_act_name("k", layer)], "b p h e -> b h p e")
            r_q, r_kt = matmul_relevance(q, k.transpose(-1, -2), r_pattern)  # softmax: unchanged
            ln1 = F.layer_norm(resid_pre, (resid_pre.shape[-1],), block.ln1.w, block.ln1.b, block.ln1.eps)
            r_ln1 = torch.zeros_like(ln1)  # q, k and v are one linear map (qkv) whose outputs split the relevance
            for w, r in ((block.attn.W_Q, r_q), (block.attn.W_K, r_kt.transpose(-1, -2)), (block.attn.W_V, r_v)):
                r_ln1 = r_ln1 + linear_relevance(
                    ln1, rearrange(w, "h d e -> d (h e)"), rearrange(r, "b h p e -> b p (h e)")
                )
            relevance = clone_relevance(resid_pre, r_skip, r_ln1)  # ln1: unchanged
    return torch.stack(per_layer, 1)


def _targets(model: HookedViT, images: Tensor, target: Target) -> Tensor:
    with torch.no_grad():
        logits = model(images, return_type="logits")
    from vitmech.analysis.rollout import _target_values

    if callable(target):
        raise InputError("the LRP attribution needs class indices as the target (None, an int or a [batch] tensor)")
    _, index = _target_values(logits, target)
    assert index is not None
    return index


def transformer_attribution(
    model: HookedViT, images: Float[Tensor, "batch channel height width"], target: Target = None
) -> Float[Tensor, "batch gh gw"]:
    """Chefer et al. 2021's transformer attribution for class `target` (None: the predicted class) on
    the patch grid, unnormalised."""
    check_supported(model)
    layout = token_layout(model)
    index = _targets(model, images, target)
    grads = attention_gradients(model, images, index, progress=False)
    relevance = attention_relevance(model, images, index)
    cams = (grads.gradients * relevance).clamp(min=0).mean(2)  # [B, L, P, P]
    eye = torch.eye(cams.shape[-1], dtype=cams.dtype, device=cams.device)
    joint = eye + cams[:, 0]
    for layer in range(1, cams.shape[1]):
        joint = (eye + cams[:, layer]) @ joint
    row = einsum(layout.readout_weights(joint.dtype, joint.device), joint, "q, b q k -> b k")
    gh, gw = layout.grid
    return rearrange(layout.patches(row, -1), "b (gh gw) -> b gh gw", gh=gh, gw=gw)


def attention_gradcam(
    model: HookedViT, images: Float[Tensor, "batch channel height width"], target: Target = None
) -> Float[Tensor, "batch gh gw"]:
    """Attention Grad-CAM (Chefer et al. 2021's baseline): last block, per head the readout row of the
    attention over the patches weighted by its mean gradient, mean over heads, clamped at 0."""
    layout = token_layout(model)
    last = model.cfg.n_layers - 1
    grads = attention_gradients(model, images, target, layers=[last], progress=False)
    # one stacked layer (the last block): drop the layer axis
    last_pattern = rearrange(grads.patterns, "b 1 h q k -> b h q k")
    last_gradient = rearrange(grads.gradients, "b 1 h q k -> b h q k")
    pattern = layout.patches(layout.readout(last_pattern, dim=-2), -1)  # [B, H, N]
    gradient = layout.patches(layout.readout(last_gradient, dim=-2), -1)
    cam = (pattern * gradient.mean(-1, keepdim=True)).mean(1).clamp(min=0)
    gh, gw = layout.grid
    return rearrange(cam, "b (gh gw) -> b gh gw", gh=gh, gw=gw)


__all__ = [
    "attention_gradcam",
    "attention_relevance",
    "check_supported",
    "linear_relevance",
    "matmul_relevance",
    "residual_relevance",
    "safe_divide",
    "transformer_attribution",
]
