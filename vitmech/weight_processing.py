"""Weight processing that leaves a ViT's function unchanged but makes its weights easier to read
(TransformerLens' `fold_ln`, `center_writing_weights`, `fold_value_biases`, `center_unembed`, for HookedViT).

    from vitmech.weight_processing import process_weights, load_processed
    model = process_weights(model)                  # a processed copy (inplace=True edits the model)
    model = load_processed("vitmech/mini-galaxy")   # the same, as an option on load

Each step and why it is exact (x: the residual stream; docs/circuits.md has the algebra):

- `fold_layer_norm`: LN(x) @ W + b_W = ((x - mean) / sigma) @ (w[:, None] W) + (b @ W + b_W). The LN gain w and
  bias b move into the weights that read the LN (W_Q/W_K/W_V after ln1, W_in after ln2, W_H after ln_final);
  the LayerNorms stay, with w = 1 and b = 0, and still centre and divide by sigma. With
  `center_reading_weights` each folded matrix is also centred over its d_model (input) axis, exact because
  its input (x - mean) / sigma has zero mean.
- `center_writing_weights`: every reader of the residual stream is a LayerNorm, which removes the mean over
  d_model; so subtracting from each writing weight (W_E, b_E, W_cls, W_pos, W_O, b_O, W_out, b_out) its mean
  over d_model changes nothing downstream and leaves the residual stream with zero mean at every position.
- `fold_value_biases`: attention weights sum to 1, so b_V[h] reaches the output as the constant
  b_V[h] @ W_O[h]; b_O += sum_h b_V[h] @ W_O[h] and b_V = 0.
- `center_classifier`: W_H and b_H minus their mean over classes. Logits shift by one constant per image,
  so the softmax (and argmax) is unchanged but the logits are not: not for regression heads.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from einops import einsum
from transformer_lens import FactoredMatrix

from vitmech.errors import InputError, InputTypeError, UnsupportedModelError
from vitmech.model.hooked_vit import HookedViT
from vitmech.model.layer_norm import LayerNorm

logger = logging.getLogger(__name__)

__all__ = [
    "center_classifier",
    "center_writing_weights",
    "fold_layer_norm",
    "fold_value_biases",
    "load_processed",
    "process_weights",
    "refactor_factored_attn_matrices",
]


def unprocessable_features(model: HookedViT) -> list[str]:
    """The parts of this model the processing steps here do not handle (they would change its outputs)."""
    cfg = model.cfg
    checks = {
        "SwiGLU MLPs (W_gate)": cfg.gated_mlp,
        "qk-norm": cfg.qk_norm,
        "rotary position embeddings": getattr(cfg, "rope", "none") != "none",
        "a LayerNorm inside the MLP": getattr(cfg, "mlp_norm", False),
        "LayerScale": cfg.layer_scale,
        "a distillation token or register tokens": cfg.distill_token or cfg.n_register_tokens > 0,
        "no class token": not cfg.class_token,
        f"pool={cfg.pool!r}": cfg.pool != "cls",
        f"final_norm={cfg.final_norm!r}": cfg.final_norm != "tokens",
        "position embeddings that are resampled or partial": cfg.pos_grid is not None
        or cfg.n_pos_prefix != cfg.n_prefix_tokens
        or not cfg.pos_embed,
        "a projection": cfg.projection_dim > 0,
    }
    return [name for name, present in checks.items() if present]


def _target(model: HookedViT, inplace: bool) -> HookedViT:
    if not isinstance(model, HookedViT):
        raise InputTypeError(f"expected a HookedViT, got {type(model).__name__}")
    features = unprocessable_features(model)
    if features:
        raise UnsupportedModelError("weight processing does not handle " + ", ".join(features) + " (yet)")
    return model if inplace else copy.deepcopy(model)


def _record(model: HookedViT, step: str, **options: Any) -> None:
    """Note the step in the model card (saved with the model), so processed weights are never mistaken for raw ones."""
    model.card.setdefault("weight_processing", []).append({"step": step, **options})


def _fold_into_reader(ln: LayerNorm, weight: torch.Tensor, bias: torch.Tensor, center: bool) -> None:
    """Fold LayerNorm `ln`'s gain and bias into the matrix that reads its output, weight [d_model, n], and
    that matrix's bias [n]; `center`: subtract each column's mean over d_model (the normalised input has
    zero mean, so the output is unchanged). `ln` is then reset to gain 1, bias 0."""
    bias.add_(ln.b @ weight)
    weight.mul_(ln.w[:, None])
    if center:
        weight.sub_(weight.mean(0, keepdim=True))
    _reset(ln)


def _reset(ln: LayerNorm) -> None:
    ln.w.fill_(1.0)
    ln.b.zero_()


@torch.no_grad()
def fold_layer_norm(model: HookedViT, center_reading_weights: bool = True, inplace: bool = False) -> HookedViT:
    """Fold every ln1 into W_Q/W_K/W_V, every ln2 into W_in and ln_final into W_H; those LNs get w=1, b=0.

    Pre-norm models keep ln_pre as it is (its output is the residual stream itself, read by no single
    matrix); headless models keep ln_final (its output is the feature vector).
    """
    model = _target(model, inplace)
    for block in model.blocks:
        attn, w, b = block.attn, block.ln1.w, block.ln1.b
        for W, bias in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)):
            bias.add_(einsum(b, W, "d, h d e -> h e"))
            W.mul_(w[None, :, None])
            if center_reading_weights:
                W.sub_(W.mean(-2, keepdim=True))
        _reset(block.ln1)
        _fold_into_reader(block.ln2, block.mlp.W_in, block.mlp.b_in, center_reading_weights)
    if model.cfg.has_classifier:
        _fold_into_reader(model.ln_final, model.head.W_H, model.head.b_H, center_reading_weights)
    else:
        logger.info("no classifier head: ln_final is left as it is (its output is the model's features)")
    if not model.cfg.qkv_bias:
        # the folded LN bias now lives in b_Q/b_K/b_V: keep the config honest so that export keeps them
        model.cfg = model.cfg.replace(qkv_bias=True)
    _record(model, "fold_layer_norm", center_reading_weights=center_reading_weights)
    return model


@torch.no_grad()
def center_writing_weights(model: HookedViT, inplace: bool = False) -> HookedViT:
    """Subtract from every weight that writes to the residual stream its mean over d_model.

    Pre-norm models: the embeddings are centred before ln_pre (no effect on its output) and ln_pre.b is
    centred; ln_pre's output x_hat * w is not centred (no LN parameter can centre it), so their residual
    stream keeps a small mean.
    """
    model = _target(model, inplace)
    writers = [model.embed.W_E, model.embed.b_E, model.cls_token.W_cls, model.pos_embed.W_pos]
    if model.cfg.pre_norm:
        writers.append(model.ln_pre.b)
        logger.info("pre-norm model: ln_pre's scaled output is not centred; only its bias is")
    for block in model.blocks:
        writers += [block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out]
    for weight in writers:
        weight.sub_(weight.mean(-1, keepdim=True))
    _record(model, "center_writing_weights")
    return model


@torch.no_grad()
def fold_value_biases(model: HookedViT, inplace: bool = False) -> HookedViT:
    """b_O += sum_h b_V[h] @ W_O[h]; b_V = 0 (exact: every attention row sums to 1)."""
    model = _target(model, inplace)
    for block in model.blocks:
        attn = block.attn
        attn.b_O.add_(einsum(attn.b_V, attn.W_O, "h e, h e d -> d"))
        attn.b_V.zero_()
    _record(model, "fold_value_biases")
    return model


@torch.no_grad()
def center_classifier(model: HookedViT, inplace: bool = False) -> HookedViT:
    """W_H and b_H minus their mean over classes: logits shift by a constant per image, softmax unchanged.

    Only for softmax classifiers: on a regression head (outputs that are not logits) it changes the outputs.
    """
    model = _target(model, inplace)
    if not model.cfg.has_classifier:
        raise InputError("center_classifier needs a model with a classifier head (n_classes > 0)")
    model.head.W_H.sub_(model.head.W_H.mean(-1, keepdim=True))
    model.head.b_H.sub_(model.head.b_H.mean())
    _record(model, "center_classifier")
    return model


@torch.no_grad()
def refactor_factored_attn_matrices(model: HookedViT, inplace: bool = False) -> HookedViT:
    """TransformerLens' `refactor_factored_attn_matrices`: the same QK and OV circuits, factored evenly.

    Per head, with the biases as an extra input coordinate fixed at 1, W_QK = [W_Q; b_Q] [W_K; b_K]^T = U S V^T
    becomes [W_Q; b_Q] = U S^1/2, [W_K; b_K] = V S^1/2 (queries and keys of equal norm per direction); the value
    bias is folded into b_O, then W_OV = W_V W_O = U S V^T becomes W_V = U S, W_O = V^T (W_O orthonormal rows,
    so |z| is the norm of the head's write). Attention scores and outputs are unchanged up to float error.
    Refused with qk-norm (a LayerNorm between the projections and the scores breaks the bilinear form).
    """
    model = _target(model, inplace)
    if getattr(model.cfg, "qk_norm", False):
        raise InputError("refactor_factored_attn_matrices: with qk-norm the scores are not a bilinear form of W_Q, W_K")
    for block in model.blocks:
        attn = block.attn
        if attn.n_heads == 0:
            continue
        q_eff = torch.cat([attn.W_Q, attn.b_Q[:, None, :]], dim=1)  # [h, d+1, e]
        k_eff = torch.cat([attn.W_K, attn.b_K[:, None, :]], dim=1)
        q_even, k_even_t = FactoredMatrix(q_eff, k_eff.transpose(-1, -2)).make_even().pair
        k_even = k_even_t.transpose(-1, -2)
        attn.W_Q.copy_(q_even[:, :-1])
        attn.b_Q.copy_(q_even[:, -1])
        attn.W_K.copy_(k_even[:, :-1])
        attn.b_K.copy_(k_even[:, -1])
        attn.b_O.add_(einsum(attn.b_V, attn.W_O, "h e, h e d -> d"))
        attn.b_V.zero_()
        u, singular, v = FactoredMatrix(attn.W_V, attn.W_O).svd()  # [h, d, e], [h, e], [h, d, e]
        attn.W_V.copy_(u * singular[:, None, :])
        attn.W_O.copy_(v.transpose(-1, -2))
    _record(model, "refactor_factored_attn_matrices")
    return model


def process_weights(
    model: HookedViT,
    fold_ln: bool = True,
    center_writing: bool = True,
    fold_value_bias: bool = True,
    center_head: bool = False,
    center_reading_weights: bool = True,
    refactor_attn: bool = False,
    inplace: bool = False,
) -> HookedViT:
    """TransformerLens' default processing for a HookedViT, each step optional; returns the processed model.

    Order: fold LN, centre writing weights, centre the classifier, fold value biases (TransformerLens' order),
    then, with refactor_attn, `refactor_factored_attn_matrices` (off by default, as in TransformerLens).
    center_head defaults to False (TransformerLens centres its unembedding by default): it changes the logits
    by a constant per image, which is harmless for a softmax classifier but not for a regression head.
    """
    model = _target(model, inplace)
    if fold_ln:
        fold_layer_norm(model, center_reading_weights=center_reading_weights, inplace=True)
    if center_writing:
        center_writing_weights(model, inplace=True)
    if center_head:
        center_classifier(model, inplace=True)
    if fold_value_bias:
        fold_value_biases(model, inplace=True)
    if refactor_attn:
        refactor_factored_attn_matrices(model, inplace=True)
    return model


def load_processed(name: str, **options: Any) -> HookedViT:
    """`HookedViT.from_pretrained(name)` followed by `process_weights(model, **options)`.

    Options are `process_weights`' keyword arguments; anything else is passed to `from_pretrained`.
    """
    processing_keys = {
        "fold_ln",
        "center_writing",
        "fold_value_bias",
        "center_head",
        "center_reading_weights",
        "refactor_attn",
    }
    processing = {k: options.pop(k) for k in list(options) if k in processing_keys}
    model = HookedViT.from_pretrained(name, **options)
    return process_weights(model, inplace=True, **processing)
