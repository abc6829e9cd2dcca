"""Attention summaries of one model and comparisons of two on the same images (the Galaxy Zoo fine-tuning study's comparison, docs/attention.md#the-galaxy-zoo-fine-tuning-table-and-the-scripts).

    summary = summarize_attention(model, images)                 # metrics + CLS rollout, streamed in batches
    comparison = compare_models(pretrained, finetuned, images)  # both models, their differences
    comparison.summary_table()      # last-layer CLS entropy, top-10, rollout entropy: before, after, change
    comparison.locality_table()     # mean attention distance by layer: before, after, change
    comparison.head_table()         # every metric per layer x head for both models, and the change
    comparison.weights.to_frame()   # relative Frobenius change of W_QK and W_OV per head
    comparison.cka.to_frame()       # linear CKA of the residual streams per layer

Patterns are never stored for all layers at once: hooks on each hook_pattern reduce a layer's
[batch, head, P, P] to its metrics and its fused rollout matrix as the forward pass goes.
`images` is a preprocessed tensor [B, C, S, S] (used as-is for both models) or raw images (PIL / uint8),
which each model preprocesses with its own preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from vitmech.analysis.attention import AttentionMetrics, AttentionSettings, attention_metrics
from vitmech.analysis.rollout import Rollout, RolloutSettings, fuse_heads, rollout_from_fused
from vitmech.analysis.stats import PairedComparison, holm, paired_comparison
from vitmech.batching import image_batches
from vitmech.device import on_model_device
from vitmech.errors import InputError, ModelMismatchError
from vitmech.tokens import READOUT, TokenLayout, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)

CKATokens = Literal["all", "cls", "patches"]


# ----------------------------------------------------------------------------------------- inputs


def check_comparable(before: HookedViT, after: HookedViT) -> None:
    """Raise ModelMismatchError unless both models have the same depth, heads, image size, patch grid and
    prefix tokens."""
    fields = ("n_layers", "n_heads", "image_size", "patch_size", "grid_size", "n_prefix_tokens")
    diffs = [
        f"{f}: {getattr(before.cfg, f)} vs {getattr(after.cfg, f)}"
        for f in fields
        if getattr(before.cfg, f) != getattr(after.cfg, f)
    ]
    if diffs:
        raise ModelMismatchError(
            "the two models cannot be compared layer by layer and head by head; they differ in " + "; ".join(diffs)
        )


def prepare_images(model: HookedViT, images: Any) -> Float[Tensor, "batch channel height width"]:
    """A float tensor goes to the model's device (checked); PIL images or uint8 arrays are preprocessed."""
    if isinstance(images, Tensor) and images.is_floating_point():
        images = on_model_device(model, images)
        model.check_images(images)
        return images
    return model.preprocess(images)


# ----------------------------------------------------------------------------------------- one model


@dataclass
class AttentionSummary:
    """A model's attention on a set of images.

    Attributes:
        name: the model's name (for tables).
        metrics: per image x layer x head metrics (with the CLS rows kept, for plots).
        rollout: readout rows of the rollout (the class token; the mean over patches for models without
            one), one per image.
        outputs: [batch, n_outputs] the model's outputs (logits).
        rollout_settings: alpha, head fusion, discard ratio of the rollout.
    """

    name: str
    metrics: AttentionMetrics
    rollout: Rollout
    outputs: Float[Tensor, "batch out"]
    rollout_settings: RolloutSettings

    @property
    def last_layer(self) -> int:
        return self.metrics.layers[-1]

    @property
    def layer_distance(self) -> Float[Tensor, "batch layer"]:
        """Mean attention distance (pixels) per image and layer, averaged over heads."""
        return self.metrics.mean_distance.mean(-1)

    def image_scalars(self) -> dict[str, Float[Tensor, " batch"]]:
        """The Galaxy Zoo table's per-image quantities: last-layer CLS entropy and top-k (both head variants), rollout entropy."""
        m, k = self.metrics, self.metrics.settings.k
        return {
            "cls_entropy_last_head_mean_map": m.cls_entropy_head_mean[:, -1],
            "cls_entropy_last_mean_over_heads": m.cls_entropy[:, -1].mean(-1),
            f"cls_top{k}_last_head_mean_map": m.cls_top_k_head_mean[:, -1],
            f"cls_top{k}_last_mean_over_heads": m.cls_top_k[:, -1].mean(-1),
            "rollout_entropy": self.rollout.entropy(),
            f"rollout_top{k}": self.rollout.top_k(k),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rollout_settings": self.rollout_settings.to_dict(),
            "metrics": self.metrics.to_dict(),
            "image_means": {k: float(v.mean()) for k, v in self.image_scalars().items()},
        }


@dataclass
class _BatchResult:
    metrics: AttentionMetrics
    fused: Float[Tensor, "batch layer query key"]
    outputs: Tensor
    streams: list[Tensor] = field(default_factory=list)


def _run_batch(
    model: HookedViT,
    batch: Tensor,
    settings: AttentionSettings,
    rollout_settings: RolloutSettings,
    keep_streams: bool,
) -> _BatchResult:
    """One forward pass; each layer's pattern is reduced in its hook and then dropped."""
    n_layers = model.cfg.n_layers
    per_layer: list[AttentionMetrics | None] = [None] * n_layers
    fused: list[Tensor | None] = [None] * n_layers
    streams: dict[str, Tensor] = {}

    def on_pattern(pattern: Tensor, hook: Any) -> None:
        layer = hook.layer()
        per_layer[layer] = attention_metrics(
            pattern[:, None],
            model,
            settings,
            layers=[layer],
            keep_cls_attention=True,
            layout=token_layout(model),
        )
        fused[layer] = fuse_heads(pattern, rollout_settings.head_fusion)

    def on_stream(resid: Tensor, hook: Any) -> None:
        streams[hook.name] = resid

    hooks: list[tuple[Any, Any]] = [(lambda n: n.endswith("attn.hook_pattern"), on_pattern)]
    if keep_streams:
        hooks += [(get_act_name("resid_pre", 0), on_stream), (lambda n: n.endswith("hook_resid_post"), on_stream)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        outputs = model(batch, return_type="auto")
    names = [get_act_name("resid_pre", 0)] + [get_act_name("resid_post", layer) for layer in range(n_layers)]
    return _BatchResult(
        metrics=AttentionMetrics.stack_layers(per_layer),  # type: ignore[arg-type]  # every layer's hook filled its slot
        fused=torch.stack(fused, 1),  # type: ignore[arg-type]  # every layer's hook filled its slot
        outputs=outputs,
        streams=[streams[name] for name in names] if keep_streams else [],
    )


def _summary(
    name: str, parts: list[_BatchResult], rollout_settings: RolloutSettings, layout: TokenLayout
) -> AttentionSummary:
    rollouts = [
        rollout_from_fused(
            p.fused,
            rollout_settings.alpha,
            rollout_settings.discard_ratio,
            tokens=[READOUT],
            settings={"head_fusion": rollout_settings.head_fusion},
            layout=layout,
        )
        for p in parts
    ]
    return AttentionSummary(
        name=name,
        metrics=AttentionMetrics.concat([p.metrics for p in parts]),
        rollout=Rollout.concat(rollouts),
        outputs=torch.cat([p.outputs for p in parts]),
        rollout_settings=rollout_settings,
    )


def summarize_attention(
    model: HookedViT,
    images: Any,
    *,
    name: str = "model",
    settings: AttentionSettings | None = None,
    rollout_settings: RolloutSettings | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> AttentionSummary:
    """Attention metrics of every image, layer and head, and the CLS rollout, in batches with a progress bar."""
    settings = settings or AttentionSettings()
    rollout_settings = rollout_settings or RolloutSettings()
    pixels = prepare_images(model, images)
    parts = []
    bar = tqdm(total=pixels.shape[0], desc=f"attention ({name})", unit="img", disable=not progress)
    for _, batch in image_batches(pixels, batch_size):
        parts.append(_run_batch(model, batch, settings, rollout_settings, keep_streams=False))
        bar.update(batch.shape[0])
    bar.close()
    return _summary(name, parts, rollout_settings, token_layout(model))


# ----------------------------------------------------------------------------------------- CKA


def linear_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> float:
    """Linear CKA (Kornblith et al. 2019): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centred;
    computed in float64."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"linear_cka takes [n, d1] and [n, d2] with the same n, got {list(x.shape)} and {list(y.shape)}"
        )
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean(0)
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    denom = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return float(cross / denom) if denom > 0 else float("nan")


class CKAAccumulator:
    """Linear CKA between two sets of activations [site, n, d], accumulated over batches of rows.

    Keeps float64 sums and Gram matrices per site, of the data shifted by the first batch's mean (so the
    centring at the end does not cancel large means); memory O(sites * d^2), independent of n.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: tuple[Tensor, Tensor] | None = None
        self._sums: list[Tensor] = []

    def update(self, x: Float[Tensor, "site n d1"], y: Float[Tensor, "site n d2"]) -> None:
        if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
            raise InputError(f"update takes [site, n, d1] and [site, n, d2], got {list(x.shape)} and {list(y.shape)}")
        if self._shift is None:
            self._shift = (x.mean(1, keepdim=True), y.mean(1, keepdim=True))
        xs, ys = x - self._shift[0], y - self._shift[1]
        terms = [xs.sum(1), ys.sum(1), xs.transpose(1, 2) @ xs, ys.transpose(1, 2) @ ys, ys.transpose(1, 2) @ xs]
        terms = [t.double() for t in terms]
        self._sums = terms if not self._sums else [a + b for a, b in zip(self._sums, terms)]
        self.n += x.shape[1]

    def result(self) -> Float[Tensor, " site"]:
        """Linear CKA per site."""
        if self.n < 2:
            raise InputError("CKA needs at least 2 rows")
        sx, sy, xx, yy, yx = self._sums
        mx, my = sx / self.n, sy / self.n
        cxx = xx - self.n * mx[:, :, None] * mx[:, None, :]
        cyy = yy - self.n * my[:, :, None] * my[:, None, :]
        cyx = yx - self.n * my[:, :, None] * mx[:, None, :]
        norm = torch.linalg.matrix_norm
        return norm(cyx) ** 2 / (norm(cxx) * norm(cyy))


def _stream_rows(stream: Float[Tensor, "batch pos d"], tokens: CKATokens, layout: TokenLayout) -> Float[Tensor, "n d"]:
    if tokens == "cls":
        return layout.class_token(stream, 1, what="CKA on the class token (cka_tokens='cls')")
    if tokens == "patches":
        return layout.patches(stream, 1).reshape(-1, stream.shape[-1])
    return stream.reshape(-1, stream.shape[-1])


@dataclass
class CKAResult:
    """Linear CKA between the two models' residual streams at each site (same images, same tokens).

    Sites: `blocks.0.hook_resid_pre` (the embeddings; layer -1) and `blocks.{l}.hook_resid_post`.
    """

    cka: Float[Tensor, " site"]
    sites: tuple[str, ...]
    layers: tuple[int, ...]
    tokens: CKATokens
    n_rows: int

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(
            {
                "layer": list(self.layers),
                "site": list(self.sites),
                "linear_cka": self.cka.tolist(),
                "tokens": self.tokens,
                "n_rows": self.n_rows,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "n_rows": self.n_rows, "sites": list(self.sites), "cka": self.cka.tolist()}


# ----------------------------------------------------------------------------------------- weights


def _frobenius_sq_of_product(a: Float[Tensor, "*lead d r"], b: Float[Tensor, "*lead d r"]) -> Float[Tensor, "*lead"]:
    """||a @ b^T||_F^2 = sum((a^T a) * (b^T b)) without forming the d x d product."""
    return (torch.einsum("...di,...dj->...ij", a, a) * torch.einsum("...di,...dj->...ij", b, b)).sum((-2, -1))


@dataclass
class WeightChange:
    """Relative Frobenius change per head: ||M_after - M_before||_F / ||M_before||_F for M = W_Q W_K^T (QK)
    and W_V W_O (OV). Biases are not included."""

    qk: Float[Tensor, "layer head"]
    ov: Float[Tensor, "layer head"]

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        n_layers, n_heads = self.qk.shape
        return pd.DataFrame(
            {
                "layer": [layer for layer in range(n_layers) for _ in range(n_heads)],
                "head": list(range(n_heads)) * n_layers,
                "qk_relative_change": self.qk.flatten().tolist(),
                "ov_relative_change": self.ov.flatten().tolist(),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {"qk_relative_change": self.qk.tolist(), "ov_relative_change": self.ov.tolist()}


def weight_change(before: HookedViT, after: HookedViT) -> WeightChange:
    """Per-head relative Frobenius change of the QK and OV circuits (exact, via d_head-sized Gram matrices)."""
    check_comparable(before, after)
    if (before.cfg.d_model, before.cfg.d_head) != (after.cfg.d_model, after.cfg.d_head):
        raise ModelMismatchError(
            f"weight-space change needs the same d_model and d_head: {before.cfg.d_model}/{before.cfg.d_head} vs "
            f"{after.cfg.d_model}/{after.cfg.d_head}"
        )
    with torch.no_grad():
        q0, k0, v0, o0 = (t.double() for t in (before.W_Q, before.W_K, before.W_V, before.W_O))
        q1, k1, v1, o1 = (t.double() for t in (after.W_Q, after.W_K, after.W_V, after.W_O))
        o0t, o1t = o0.transpose(-2, -1), o1.transpose(-2, -1)  # [L, H, d, dh]: W_V W_O = W_V (W_O^T)^T
        qk_diff = _frobenius_sq_of_product(torch.cat([q1, -q0], -1), torch.cat([k1, k0], -1))
        ov_diff = _frobenius_sq_of_product(torch.cat([v1, -v0], -1), torch.cat([o1t, o0t], -1))
        qk = (qk_diff.clamp_min(0) / _frobenius_sq_of_product(q0, k0)).sqrt()
        ov = (ov_diff.clamp_min(0) / _frobenius_sq_of_product(v0, o0t)).sqrt()
    return WeightChange(qk=qk.float(), ov=ov.float())


# ----------------------------------------------------------------------------------------- two models


SIGNIFICANCE = 0.05
"""Holm-adjusted p below which a change gets a direction word ("more focused"); otherwise
"no significant change"."""


def _direction(change: float, smaller: str, larger: str, p_holm: float) -> str:
    """A direction word only for a Holm-significant change (p_holm < SIGNIFICANCE)."""
    if not p_holm < SIGNIFICANCE or change == 0:  # NaN p (constant differences, n < 2) is not significant
        return "no significant change"
    return smaller if change < 0 else larger


@dataclass
class ModelComparison:
    """Two models' attention on the same images and their differences (after - before)."""

    before: AttentionSummary
    after: AttentionSummary
    weights: WeightChange | None
    cka: CKAResult | None

    @property
    def names(self) -> tuple[str, str]:
        return self.before.name, self.after.name

    def summary_tests(self) -> dict[str, PairedComparison]:
        """Paired comparisons (per image) of the Galaxy Zoo table's quantities."""
        b, a = self.before.image_scalars(), self.after.image_scalars()
        return {key: paired_comparison(b[key], a[key]) for key in b}

    def summary_table(self) -> pd.DataFrame:
        """The Galaxy Zoo fine-tuning table: last-layer CLS entropy (nats), top-k concentration and rollout entropy, before,
        after and change (means over images), with paired t-test, Holm-adjusted p, d_z and bootstrap CI."""
        import pandas as pd

        k = self.before.metrics.settings.k
        query = "CLS" if self.readout == "class token" else f"Readout ({self.readout})"
        labels = {
            "cls_entropy_last_head_mean_map": (f"{query} attention entropy, last layer (head-mean map)", "nats"),
            "cls_entropy_last_mean_over_heads": (f"{query} attention entropy, last layer (mean of per-head)", "nats"),
            f"cls_top{k}_last_head_mean_map": (f"Top-{k} patch concentration, last layer (head-mean map)", "fraction"),
            f"cls_top{k}_last_mean_over_heads": (
                f"Top-{k} patch concentration, last layer (mean of per-head)",
                "fraction",
            ),
            "rollout_entropy": (f"Rollout {query} entropy", "nats"),
            f"rollout_top{k}": (f"Rollout top-{k} concentration", "fraction"),
        }
        tests = self.summary_tests()
        adjusted = holm([t.p for t in tests.values()])
        rows = []
        for (key, test), p_holm in zip(tests.items(), adjusted):
            label, unit = labels[key]
            entropy = "entropy" in key
            rows.append(
                {
                    "metric": label,
                    "unit": unit,
                    "before": test.mean_before,
                    "after": test.mean_after,
                    "change": test.mean_change,
                    "direction": _direction(test.mean_change, "more focused", "more spread", p_holm)
                    if entropy
                    else _direction(test.mean_change, "more spread", "more focused", p_holm),
                    "ci95_low": test.ci_low,
                    "ci95_high": test.ci_high,
                    "t": test.t,
                    "p": test.p,
                    "p_holm": p_holm,
                    "cohens_dz": test.cohens_dz,
                    "n_images": test.n,
                    "key": key,
                }
            )
        return pd.DataFrame(rows)

    def locality_table(self) -> pd.DataFrame:
        """Mean attention distance (px) by layer, averaged over heads and images: before, after, change,
        with a paired t-test per layer (Holm over layers)."""
        import pandas as pd

        before, after = self.before.layer_distance, self.after.layer_distance
        tests = [paired_comparison(before[:, i], after[:, i]) for i in range(before.shape[1])]
        adjusted = holm([t.p for t in tests])
        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "distance_before_px": t.mean_before,
                    "distance_after_px": t.mean_after,
                    "change_px": t.mean_change,
                    "change_pct": 100 * t.mean_change / t.mean_before if t.mean_before else float("nan"),
                    "direction": _direction(t.mean_change, "more local", "more global", p),
                    "p": t.p,
                    "p_holm": p,
                    "cohens_dz": t.cohens_dz,
                }
                for layer, t, p in zip(self.before.metrics.layers, tests, adjusted)
            ]
        )

    def layer_table(self) -> pd.DataFrame:
        """Per-layer metrics of both models (means over images and heads) and their change; CKA by layer."""
        frame = _merge_change(self.before.metrics.layer_frame(), self.after.metrics.layer_frame(), ["layer"])
        if self.cka is not None:
            cka = self.cka.to_frame()[["layer", "linear_cka"]]
            frame = frame.merge(cka, on="layer", how="left")
        return frame

    def head_table(self) -> pd.DataFrame:
        """Every per-head metric for both models (means over images) and the change; weight change per head."""
        frame = _merge_change(self.before.metrics.to_frame(), self.after.metrics.to_frame(), ["layer", "head"])
        if self.weights is not None:
            frame = frame.merge(self.weights.to_frame(), on=["layer", "head"], how="left")
        return frame

    @property
    def readout(self) -> str:
        """The query the "CLS" metrics read: "class token", or "mean over patches" (models without one)."""
        return self.before.metrics.query

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "readout": self.readout,
            "attention_settings": self.before.metrics.settings.to_dict(),
            "rollout_settings": self.before.rollout_settings.to_dict(),
            "summary": self.summary_table().to_dict(orient="records"),
            "locality": self.locality_table().to_dict(orient="records"),
            "weights": self.weights.to_dict() if self.weights is not None else None,
            "cka": self.cka.to_dict() if self.cka is not None else None,
        }


def _merge_change(before: pd.DataFrame, after: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Columns `<metric>_before`, `<metric>_after`, `<metric>_change` for each `<metric>_mean` column."""
    import pandas as pd

    metrics = [c[: -len("_mean")] for c in before.columns if c.endswith("_mean")]
    frame = pd.DataFrame(before[keys])
    for metric in metrics:
        frame[f"{metric}_before"] = before[f"{metric}_mean"]
        frame[f"{metric}_after"] = after[f"{metric}_mean"]
        frame[f"{metric}_change"] = after[f"{metric}_mean"] - before[f"{metric}_mean"]
    frame["n_images"] = before["n_images"]
    return frame


def compare_models(
    before: HookedViT,
    after: HookedViT,
    images: Any,
    *,
    names: Sequence[str] = ("before", "after"),
    settings: AttentionSettings | None = None,
    rollout_settings: RolloutSettings | None = None,
    batch_size: int = 16,
    cka_tokens: CKATokens | None = "all",
    progress: bool = True,
) -> ModelComparison:
    """Run two models on the same images and compare their attention, weights and residual streams.

    Raises ModelMismatchError for models of different depth, heads, image size or patch grid. The weight
    change needs equal d_model and d_head too (skipped with a log message otherwise). cka_tokens chooses
    the residual-stream rows entering linear CKA ("all" tokens, "cls", "patches"; None skips CKA).
    """
    check_comparable(before, after)
    if len(names) != 2:
        raise InputError(f"names must be two strings, got {names!r}")
    if cka_tokens not in ("all", "cls", "patches", None):
        raise InputError(f"cka_tokens must be 'all', 'cls', 'patches' or None, got {cka_tokens!r}")
    settings = settings or AttentionSettings()
    rollout_settings = rollout_settings or RolloutSettings()
    pixels_before, pixels_after = prepare_images(before, images), prepare_images(after, images)
    if pixels_before.shape[0] != pixels_after.shape[0]:
        raise InputError("the two models got different numbers of images")
    if isinstance(images, Tensor) and images.is_floating_point() and before.preprocessing != after.preprocessing:
        logger.warning(
            "the models preprocess differently but got the same preprocessed tensor; pass raw images "
            "to have each model preprocess them its own way"
        )
    parts_before, parts_after = [], []
    accumulator = CKAAccumulator() if cka_tokens is not None else None
    bar = tqdm(total=pixels_before.shape[0], desc="compare models", unit="img", disable=not progress)
    for (_, batch_b), (_, batch_a) in zip(
        image_batches(pixels_before, batch_size), image_batches(pixels_after, batch_size)
    ):
        result_b = _run_batch(before, batch_b, settings, rollout_settings, keep_streams=accumulator is not None)
        result_a = _run_batch(after, batch_a, settings, rollout_settings, keep_streams=accumulator is not None)
        if accumulator is not None and cka_tokens is not None:
            accumulator.update(
                torch.stack([_stream_rows(s, cka_tokens, token_layout(before)) for s in result_b.streams]),
                torch.stack([_stream_rows(s, cka_tokens, token_layout(after)) for s in result_a.streams]),
            )
            result_b.streams, result_a.streams = [], []
        parts_before.append(result_b)
        parts_after.append(result_a)
        bar.update(batch_b.shape[0])
    bar.close()
    cka = None
    if accumulator is not None and cka_tokens is not None:
        n_layers = before.cfg.n_layers
        sites = (get_act_name("resid_pre", 0),) + tuple(get_act_name("resid_post", layer) for layer in range(n_layers))
        cka = CKAResult(
            cka=accumulator.result().float(),
            sites=sites,
            layers=tuple(range(-1, n_layers)),
            tokens=cka_tokens,
            n_rows=accumulator.n,
        )
    try:
        weights = weight_change(before, after)
    except ModelMismatchError as error:
        logger.info("weight-space change skipped: %s", error)
        weights = None
    return ModelComparison(
        before=_summary(names[0], parts_before, rollout_settings, token_layout(before)),
        after=_summary(names[1], parts_after, rollout_settings, token_layout(after)),
        weights=weights,
        cka=cka,
    )
