"""Direct logit attribution at the CLS token and the logit lens.

The class logit is W_H[:, c] . LN_final(x)[0] + b_H[c], with x the final residual stream (Elhage et al. 2021; docs/circuits.md#direct-logit-attribution).
Freezing the final LayerNorm's scale sigma (sqrt(var + eps), from the full residual at CLS), LN_final is
affine in x, and x at CLS is a sum of components, so

    logit_c = sum_k (gamma * W_H[:, c]) . (c_k - mean(c_k)) / sigma  +  beta . W_H[:, c]  +  b_H[c]

exactly. Components here: the CLS token and its position embedding (or, in pre-norm models, ln_pre's output),
each head's result z[h] @ W_O[h] at CLS, each layer's b_O, each MLP's post @ W_out and its b_out, and the two
constants beta . W_H[:, c] ("ln_final.b") and b_H[c] ("b_H").

Both analyses read the class token (`vitmech.tokens.TokenLayout.class_index`); for models without one
(average or attention pooling), or whose output reads the patch mean although they have one (pool="avg"),
they raise a ValueError naming the analysis, since no single token's residual stream is what the head reads.

    dla = direct_logit_attribution(model, images)             # the predicted class of each image
    dla.head_attributions()                                    # [batch, layer, head]
    logit_lens(model, images).to_frame()                       # predicted class / p(final class) by layer
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from transformer_lens import ActivationCache
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.heads import head_label
from vitmech.analysis.circuits import head_results
from vitmech.batching import concat_results, image_batches
from vitmech.device import on_model_device
from vitmech.errors import IndexOutOfRangeError, InputError, UnknownNameError
from vitmech.model.hooked_vit import HookedViT
from vitmech.tokens import TokenLayout, token_layout

ClassSpec = str | int | Sequence[int] | Int[torch.Tensor, " batch"]


def _class_readout(model: HookedViT, what: str) -> TokenLayout:
    """The model's token layout; a clear error unless its output is read from the class token."""
    layout = token_layout(model)
    layout.require_class_token(what)
    if layout.readout_index is None:
        raise InputError(
            f"{what} reads the class token, and this model's output reads the patch tokens (pool={model.cfg.pool!r})"
        )
    return layout


def _require_classifier(model: HookedViT) -> None:
    if not model.cfg.has_classifier:
        raise InputError(
            "direct logit attribution and the logit lens need a model with a classifier head (n_classes > 0)"
        )


def resolve_classes(
    model: HookedViT, classes: ClassSpec, logits: Float[torch.Tensor, "batch n_classes"]
) -> Int[torch.Tensor, " batch"]:
    """One class index per image from "predicted" (argmax of logits), a class index, a class name, or one per image."""
    batch = logits.shape[0]
    if isinstance(classes, str) and classes == "predicted":
        return logits.argmax(-1)
    if isinstance(classes, str):
        return torch.full((batch,), model.to_single_token(classes), dtype=torch.long, device=logits.device)
    idx = torch.as_tensor(classes, dtype=torch.long, device=logits.device)
    if idx.ndim == 0:
        idx = idx.expand(batch)
    if idx.shape != (batch,):
        raise InputError(
            f"classes must be 'predicted', a class, or one class per image ({batch}); got shape {tuple(idx.shape)}"
        )
    if ((idx < 0) | (idx >= model.cfg.n_classes)).any():
        raise IndexOutOfRangeError(f"class index out of range [0, {model.cfg.n_classes}): {idx.tolist()}")
    return idx.clone()


class LogitComponent(NamedTuple):
    """One term of a direct logit attribution: its name, its kind, and its layer and head (-1 where none)."""

    label: str
    kind: str
    layer: int = -1
    head: int = -1


@dataclass
class DirectLogitAttribution:
    """Each component's direct contribution to one class logit per image, at the CLS token.

    Attributes:
        attributions: [batch, n_components]; rows sum to `logits` (exactly, up to float rounding).
        components: what each column is (`LogitComponent`): labels such as "cls_token", "pos_embed", "L3H7",
            "b_O L3", "MLP3", "b_out L3", "ln_final.b", "b_H"; kinds "embed", "head", "attn_bias", "mlp",
            "mlp_bias", "value_bias", "ln_final_bias", "head_bias".
        classes: the attributed class of each image, [batch].
        logits: the model's own logit for that class, [batch] (the reference the sum must match).
        class_names: the model's class names, if any.
    """

    attributions: Float[torch.Tensor, "batch component"]
    components: tuple[LogitComponent, ...]
    classes: Int[torch.Tensor, " batch"]
    logits: Float[torch.Tensor, " batch"]
    class_names: list[str] | None = None

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.components]

    @property
    def kinds(self) -> list[str]:
        return [c.kind for c in self.components]

    @property
    def layers(self) -> list[int]:
        return [c.layer for c in self.components]

    @property
    def heads(self) -> list[int]:
        return [c.head for c in self.components]

    @property
    def total(self) -> Float[torch.Tensor, " batch"]:
        """Sum of all components: equals `logits`."""
        return self.attributions.sum(-1)

    @property
    def max_abs_error(self) -> float:
        """max |sum of components - model logit| over the batch."""
        return float((self.total - self.logits).abs().max())

    def _select(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == kind]

    def head_attributions(self) -> Float[torch.Tensor, "batch layer head"]:
        """The heads' contributions arranged [batch, n_layers, n_heads]."""
        idx = self._select("head")
        n_layers, n_heads = max(self.layers) + 1, max(self.heads) + 1
        return rearrange(self.attributions[:, idx], "b (l h) -> b l h", l=n_layers, h=n_heads)

    def mlp_attributions(self) -> Float[torch.Tensor, "batch layer"]:
        return self.attributions[:, self._select("mlp")]

    def by_kind(self) -> dict[str, Float[torch.Tensor, " batch"]]:
        """Summed contribution of each kind of component."""
        return {kind: self.attributions[:, self._select(kind)].sum(-1) for kind in dict.fromkeys(self.kinds)}

    def class_label(self, c: int) -> str:
        return self.class_names[c] if self.class_names else str(c)

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (image, component)."""
        rows = []
        for b in range(self.attributions.shape[0]):
            c = int(self.classes[b])
            for i, part in enumerate(self.components):
                rows.append(
                    {
                        "image": b,
                        "class": c,
                        "class_name": self.class_label(c),
                        "component": part.label,
                        "kind": part.kind,
                        "layer": part.layer,
                        "head": part.head,
                        "attribution": float(self.attributions[b, i]),
                    }
                )
        return pd.DataFrame(rows)

    def summary_frame(self) -> pd.DataFrame:
        """One row per component: mean and mean |.| over the images, and mean share of the logit."""
        mean = self.attributions.mean(0)
        mean_abs = self.attributions.abs().mean(0)
        return pd.DataFrame(
            [
                {
                    "component": part.label,
                    "kind": part.kind,
                    "layer": part.layer,
                    "head": part.head,
                    "mean_attribution": float(mean[i]),
                    "mean_abs_attribution": float(mean_abs[i]),
                }
                for i, part in enumerate(self.components)
            ]
        )

    def to_dict(self) -> dict:
        return {
            "labels": self.labels,
            "kinds": self.kinds,
            "classes": self.classes.tolist(),
            "logits": self.logits.tolist(),
            "attributions": self.attributions.tolist(),
            "max_abs_error": self.max_abs_error,
        }


def _needed_hooks(model: HookedViT) -> list[str]:
    names = ["ln_final.hook_scale", "head.hook_logits"]
    names += ["hook_ln_pre"] if model.cfg.pre_norm else ["hook_embed", "hook_pos_embed"]
    for layer in range(model.cfg.n_layers):
        names += [get_act_name("z", layer), get_act_name("mlp_out", layer)]
    return names


def direct_logit_attribution_from_cache(
    model: HookedViT,
    cache: ActivationCache | dict[str, torch.Tensor],
    classes: ClassSpec = "predicted",
    split_value_bias: bool = False,
) -> DirectLogitAttribution:
    """Direct logit attribution at CLS from a cache holding `_needed_hooks(model)` (a full run_with_cache does).

    split_value_bias: report each head's constant b_V[h] @ W_O[h] (attention weights sum to 1, so it reaches
    the output whatever the pattern) as a separate "b_V L{l}H{h}" bias component instead of inside the head.
    """
    _require_classifier(model)
    cached = set(cache.keys())
    missing = [n for n in _needed_hooks(model) if n not in cached]
    if missing:
        raise UnknownNameError(
            f"the cache lacks {missing[:4]}{'...' if len(missing) > 4 else ''}; run model.run_with_cache(images) "
            "without a names_filter, or call direct_logit_attribution(model, images)"
        )
    cfg = model.cfg
    layout = _class_readout(model, "direct logit attribution")

    def at_cls(x: torch.Tensor) -> torch.Tensor:
        return layout.class_token(x, 1, what="direct logit attribution")

    logits_all = cache["head.hook_logits"]
    classes_t = resolve_classes(model, classes, logits_all)
    with torch.no_grad():
        parts: list[torch.Tensor] = []  # each [batch, k, d_model] at CLS
        components: list[LogitComponent] = []  # what each row of `parts` is

        def add(vectors: torch.Tensor, names: list[str], kind: str, layer: int, head_ids: list[int]) -> None:
            parts.append(vectors)
            components.extend(LogitComponent(name, kind, layer, head) for name, head in zip(names, head_ids))

        batch = logits_all.shape[0]
        if cfg.pre_norm:
            add(at_cls(cache["hook_ln_pre"])[:, None], ["embed (ln_pre)"], "embed", -1, [-1])
        else:
            add(at_cls(cache["hook_embed"])[:, None], ["cls_token"], "embed", -1, [-1])
            add(at_cls(cache["hook_pos_embed"])[:, None], ["pos_embed"], "embed", -1, [-1])
        value_biases = []
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            z = at_cls(cache[get_act_name("z", layer)])  # [batch, H, d_head]
            if split_value_bias:
                z = z - attn.b_V
                value_biases.append((layer, head_results(attn, attn.b_V)))  # [H, d]
            add(
                head_results(attn, z),
                [head_label((layer, h)) for h in range(cfg.n_heads)],
                "head",
                layer,
                list(range(cfg.n_heads)),
            )
            add(attn.b_O.expand(batch, 1, -1), [f"b_O L{layer}"], "attn_bias", layer, [-1])
            mlp_out = at_cls(cache[get_act_name("mlp_out", layer)])[:, None]
            add(mlp_out - block.mlp.b_out, [f"MLP{layer}"], "mlp", layer, [-1])
            add(block.mlp.b_out.expand(batch, 1, -1), [f"b_out L{layer}"], "mlp_bias", layer, [-1])
        for layer, vb in value_biases:
            add(
                vb.expand(batch, -1, -1),
                [f"b_V {head_label((layer, h))}" for h in range(cfg.n_heads)],
                "value_bias",
                layer,
                list(range(cfg.n_heads)),
            )
        vectors = torch.cat(parts, dim=1)  # [batch, n_components, d]
        sigma = at_cls(cache["ln_final.hook_scale"])  # [batch, 1]
        directions = model.tokens_to_residual_directions(classes_t)  # [batch, d] = gamma * W_H[:, c]
        centred = vectors - vectors.mean(-1, keepdim=True)
        attributions = einsum(centred, directions, "b k d, b d -> b k") / sigma
        constants = torch.stack([model.ln_final.b @ model.W_H[:, classes_t], model.b_H[classes_t]], dim=-1)
        attributions = torch.cat([attributions, constants], dim=-1)
    components += [LogitComponent("ln_final.b", "ln_final_bias"), LogitComponent("b_H", "head_bias")]
    return DirectLogitAttribution(
        attributions=attributions,
        components=tuple(components),
        classes=classes_t,
        logits=logits_all.gather(-1, classes_t[:, None])[:, 0],
        class_names=model.class_names,
    )


def direct_logit_attribution(
    model: HookedViT,
    images: Float[torch.Tensor, "batch c h w"],
    classes: ClassSpec = "predicted",
    split_value_bias: bool = False,
    batch_size: int | None = 32,
) -> DirectLogitAttribution:
    """Run the model and attribute one class logit per image (default: its predicted class) to every component.

    classes: "predicted", a class index or name, or one index per image. Caches only the hooks it needs.
    """
    _require_classifier(model)
    images = on_model_device(model, images)
    model.check_images(images)
    results = []
    offset = 0
    for _, chunk in image_batches(images, max(1, images.shape[0]) if batch_size is None else batch_size):
        chunk_classes = classes
        if not isinstance(classes, (str, int)):
            chunk_classes = torch.as_tensor(classes)
            if chunk_classes.ndim == 1:
                if chunk_classes.shape[0] != images.shape[0]:
                    raise InputError(f"{chunk_classes.shape[0]} classes for {images.shape[0]} images")
                chunk_classes = chunk_classes[offset : offset + chunk.shape[0]]
        with torch.no_grad():
            _, cache = model.run_with_cache(chunk, names_filter=_needed_hooks(model), return_type="logits")
        results.append(direct_logit_attribution_from_cache(model, cache, chunk_classes, split_value_bias))
        offset += chunk.shape[0]
    return concat_results(results)


# ---------------------------------------------------------------------------------------------- logit lens
@dataclass
class LogitLens:
    """The classifier (final LayerNorm + head) applied to the CLS residual stream after every layer.

    Attributes:
        logits: [batch, n_layers + 1, n_classes]; index 0 is the residual entering block 0 ("embed"),
            index l + 1 the residual after block l; the last equals the model's logits.
        labels: "embed", "L0", ..., f"L{n_layers - 1}".
        final_classes: the model's predicted class per image, [batch].
        class_names: the model's class names, if any.
    """

    logits: Float[torch.Tensor, "batch stage n_classes"]
    labels: list[str]
    final_classes: Int[torch.Tensor, " batch"]
    class_names: list[str] | None = None

    @property
    def probabilities(self) -> Float[torch.Tensor, "batch stage n_classes"]:
        return torch.softmax(self.logits, -1)

    @property
    def predicted(self) -> Int[torch.Tensor, "batch stage"]:
        return self.logits.argmax(-1)

    @property
    def final_class_probability(self) -> Float[torch.Tensor, "batch stage"]:
        """p(final class) at each stage."""
        idx = self.final_classes[:, None, None].expand(-1, self.logits.shape[1], 1)
        return self.probabilities.gather(-1, idx)[..., 0]

    @property
    def agreement(self) -> Float[torch.Tensor, " stage"]:
        """Share of images whose predicted class at each stage is already the final one."""
        return (self.predicted == self.final_classes[:, None]).float().mean(0)

    def to_frame(self) -> pd.DataFrame:
        """One row per (image, stage): predicted class, its probability, p(final class)."""
        probs, pred, pfinal = self.probabilities, self.predicted, self.final_class_probability
        rows = []
        for b in range(self.logits.shape[0]):
            for s, label in enumerate(self.labels):
                c = int(pred[b, s])
                rows.append(
                    {
                        "image": b,
                        "stage": s,
                        "after": label,
                        "predicted_class": c,
                        "predicted_name": self.class_names[c] if self.class_names else str(c),
                        "predicted_probability": float(probs[b, s, c]),
                        "final_class": int(self.final_classes[b]),
                        "final_class_probability": float(pfinal[b, s]),
                    }
                )
        return pd.DataFrame(rows)

    def summary_frame(self) -> pd.DataFrame:
        """One row per stage: share of images agreeing with the final class, mean p(final class)."""
        agree, pfinal = self.agreement, self.final_class_probability.mean(0)
        return pd.DataFrame(
            [
                {
                    "stage": s,
                    "after": label,
                    "agreement_with_final": float(agree[s]),
                    "mean_final_class_probability": float(pfinal[s]),
                }
                for s, label in enumerate(self.labels)
            ]
        )


def logit_lens_from_cache(model: HookedViT, cache: ActivationCache | dict[str, torch.Tensor]) -> LogitLens:
    """Logit lens from a cache holding `hook_resid_pre` of block 0 and every `hook_resid_post`."""
    _require_classifier(model)
    names = [get_act_name("resid_pre", 0)] + [get_act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]
    cached = set(cache.keys())
    missing = [n for n in names if n not in cached]
    if missing:
        raise UnknownNameError(
            f"the cache lacks {missing[:4]}; run model.run_with_cache(images) or call logit_lens(model, images)"
        )
    layout = _class_readout(model, "the logit lens")
    with torch.no_grad():
        resid = torch.stack(
            [layout.class_token(cache[n], 1, what="the logit lens") for n in names], dim=1
        )  # [B, L + 1, d]
        ln = model.ln_final
        normalized = torch.nn.functional.layer_norm(resid, (resid.shape[-1],), ln.w, ln.b, ln.eps)
        logits = normalized @ model.W_H + model.b_H
    return LogitLens(
        logits=logits,
        labels=["embed"] + [f"L{layer}" for layer in range(model.cfg.n_layers)],
        final_classes=logits[:, -1].argmax(-1),
        class_names=model.class_names,
    )


def logit_lens(model: HookedViT, images: Float[torch.Tensor, "batch c h w"], batch_size: int | None = 32) -> LogitLens:
    """Run the model and apply the final LayerNorm + classifier to the CLS residual after every layer."""
    _require_classifier(model)
    images = on_model_device(model, images)
    model.check_images(images)
    names = [get_act_name("resid_pre", 0)] + [get_act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]
    lenses = []
    for _, chunk in image_batches(images, max(1, images.shape[0]) if batch_size is None else batch_size):
        with torch.no_grad():
            _, cache = model.run_with_cache(chunk, names_filter=names, return_type=None)
        lenses.append(logit_lens_from_cache(model, cache))
    return LogitLens(
        logits=torch.cat([lens.logits for lens in lenses]),
        labels=lenses[0].labels,
        final_classes=torch.cat([lens.final_classes for lens in lenses]),
        class_names=model.class_names,
    )
