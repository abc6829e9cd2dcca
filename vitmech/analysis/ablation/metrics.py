"""Metrics of a model's output: one value per example, so sweeps can average and give standard errors.

A `Metric` reads one kind of output:
- "logits": the classifier output [B, n_classes] (regression heads too: their outputs are "logits");
- "features": the final-normalised CLS token [B, d_model] (models without a classifier);
- "tokens": the final-normalised tokens [B, P, d_model] (then the exact sweep cannot use its CLS-only shortcut).

Built-ins: `class_logit`, `logit_diff`, `cross_entropy`, `accuracy`, `mse`, `mse_to_clean`, `kl_to_clean`; any function
of the output with `metric_from_function`. A metric is called as `metric(output, clean=..., targets=...)`
and its result is checked: a finite float tensor [B].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float

from vitmech.analysis.ablation.errors import MetricError
from vitmech.fingerprint import Unfingerprintable, function_fingerprint, tensor_fingerprint

if TYPE_CHECKING:
    from vitmech.model.hooked_vit import HookedViT

OutputKind = Literal["logits", "features", "embeddings", "tokens"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "features", "embeddings", "tokens")


@dataclass(frozen=True)
class Metric:
    """A per-example function of the model output.

    Attributes:
        name: how tables call it; with `params` it keys stored sweeps.
        fn: fn(output, clean, targets) -> [B] (clean and targets may be None).
        output: which output it reads ("logits", "features", "embeddings" or "tokens").
        needs_targets: whether targets (labels / regression values) are required.
        needs_clean: whether the clean output is passed (e.g. KL to clean).
        params: the metric's settings (class index, ...), recorded with results.
        code: fingerprint of a user function's code and closure (`metric_from_function`), part of `key()`.
        keyable: False when nothing identifies the function (no name given and no fingerprint): such a
            metric works in memory but a resumable store refuses it.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor] = field(repr=False)
    output: OutputKind = "logits"
    needs_targets: bool = False
    needs_clean: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    code: str | None = None
    keyable: bool = True

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise MetricError(f"metric output must be one of {OUTPUT_KINDS}, got {self.output!r}")

    @property
    def reads_cls_only(self) -> bool:
        """True when the metric only sees the CLS token's output (all kinds but "tokens")."""
        return self.output != "tokens"

    def key(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        code = f"#{self.code}" if self.code else ""
        return f"{self.name}({params}){code}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "output": self.output, **self.params}

    def check_model(self, model: HookedViT) -> None:
        """MetricError if the model lacks the output this metric reads."""
        if self.output == "logits" and not model.cfg.has_classifier:
            raise MetricError(
                f"metric {self.name!r} reads classifier logits, but this model has no classifier head "
                "(n_classes=0); use a features metric, e.g. metric_from_function(fn, output='features')"
            )

    def __call__(
        self,
        output: torch.Tensor,
        clean: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> Float[torch.Tensor, " batch"]:
        """Per-example values [B], validated."""
        batch = output.shape[0]
        if self.needs_targets:
            if targets is None:
                raise MetricError(f"metric {self.name!r} needs targets (labels or regression values): pass targets=")
            if targets.shape[0] != batch:
                raise MetricError(f"metric {self.name!r}: {targets.shape[0]} targets for {batch} examples")
        if self.needs_clean and clean is None:
            raise MetricError(f"metric {self.name!r} compares with the clean output, which was not given")
        values = self.fn(output, clean, targets)
        return check_per_example(values, batch, self.name)


def check_per_example(values: Any, batch: int, name: str) -> Float[torch.Tensor, " batch"]:
    """values as a float tensor [batch], or MetricError saying what was wrong."""
    if not isinstance(values, torch.Tensor):
        raise MetricError(
            f"metric {name!r} must return a tensor with one value per example [{batch}], got {type(values).__name__}"
        )
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (batch,):
        hint = " (did it average over the batch? return per-example values)" if values.ndim == 0 else ""
        raise MetricError(
            f"metric {name!r} must return one value per example, shape [{batch}]; got {list(values.shape)}{hint}"
        )
    if not values.is_floating_point():
        values = values.float()
    if not bool(torch.isfinite(values).all()):
        raise MetricError(f"metric {name!r} returned non-finite values (NaN or inf)")
    return values


def _targets_as_index(targets: torch.Tensor, name: str, n_classes: int | None = None) -> torch.Tensor:
    """Class targets as long indices, after checking each lies in [0, n_classes) (the head's outputs)."""
    if targets.ndim != 1 or targets.is_floating_point():
        raise MetricError(f"metric {name!r} needs integer class targets [B], got {targets.dtype} {list(targets.shape)}")
    if n_classes is None:
        return targets.long()
    outside = ((targets < 0) | (targets >= n_classes)).nonzero().flatten()
    if len(outside):
        shown = sorted({int(targets[i]) for i in outside})[:10]
        raise MetricError(
            f"metric {name!r}: {len(outside)} label(s) outside the model's {n_classes} classes (valid 0..{n_classes - 1}): "
            f"{shown}; check that the labels belong to this model's head"
        )
    return targets.long()


def _check_class(index: int, output: torch.Tensor, name: str) -> None:
    if not 0 <= index < output.shape[-1]:
        raise MetricError(f"metric {name!r}: class {index} is out of range for {output.shape[-1]} outputs")


def class_logit(target: int | None = None) -> Metric:
    """The logit of a fixed class, or (target=None) of each example's target class."""
    if target is None:

        def fn(out, clean, targets):
            idx = _targets_as_index(targets, "class_logit", out.shape[-1])
            return out.gather(1, idx[:, None].to(out.device))[:, 0]

        return Metric("class_logit", fn, needs_targets=True, params={"class": "target"})

    def fixed(out, clean, targets):
        _check_class(target, out, "class_logit")
        return out[:, target]

    return Metric("class_logit", fixed, params={"class": int(target)})


def logit_diff(a: int | None = None, b: int | None = None) -> Metric:
    """logit[a] - logit[b]; with no classes, the margin: target logit minus the largest other logit."""
    if (a is None) != (b is None):
        raise MetricError("logit_diff takes two classes (a, b) or none (margin of the target class)")
    if a is None or b is None:

        def margin(out, clean, targets):
            idx = _targets_as_index(targets, "logit_diff", out.shape[-1]).to(out.device)
            target_logit = out.gather(1, idx[:, None])[:, 0]
            others = out.scatter(1, idx[:, None], float("-inf"))
            return target_logit - others.max(1).values

        return Metric("logit_diff", margin, needs_targets=True, params={"classes": "target vs best other"})

    def diff(out, clean, targets):
        _check_class(a, out, "logit_diff")
        _check_class(b, out, "logit_diff")
        return out[:, a] - out[:, b]

    return Metric("logit_diff", diff, params={"a": int(a), "b": int(b)})


def cross_entropy() -> Metric:
    """Cross-entropy of the target class, in nats."""

    def fn(out, clean, targets):
        return F.cross_entropy(
            out, _targets_as_index(targets, "cross_entropy", out.shape[-1]).to(out.device), reduction="none"
        )

    return Metric("cross_entropy", fn, needs_targets=True)


def accuracy() -> Metric:
    """1 where the arg-max class equals the target, else 0."""

    def fn(out, clean, targets):
        return (out.argmax(-1) == _targets_as_index(targets, "accuracy", out.shape[-1]).to(out.device)).to(out.dtype)

    return Metric("accuracy", fn, needs_targets=True)


def mse() -> Metric:
    """Mean over outputs of (output - target)^2 per example (regression heads); targets [B, C] or [B]."""

    def fn(out, clean, targets):
        t = targets.to(device=out.device, dtype=out.dtype)
        if t.ndim == 1:
            t = t[:, None]
        if t.shape != out.shape:
            raise MetricError(f"metric 'mse': targets {list(targets.shape)} do not match outputs {list(out.shape)}")
        return (out - t).pow(2).mean(-1)

    return Metric("mse", fn, needs_targets=True)


def kl_to_clean() -> Metric:
    """KL(softmax(clean) || softmax(output)) per example, in nats (0 for the clean run)."""

    def fn(out, clean, targets):
        log_p = F.log_softmax(clean.to(out.dtype), -1)
        return (log_p.exp() * (log_p - F.log_softmax(out, -1))).sum(-1)

    return Metric("kl_to_clean", fn, needs_clean=True)


def mse_to_clean(output: OutputKind = "logits") -> Metric:
    """Mean over outputs of (output - clean output)^2 per example: a regressor's drift without targets (0 when
    clean); output="features" for the pooled features of a model without a classifier."""

    def fn(out, clean, targets):
        return (out - clean.to(out.dtype)).pow(2).mean(-1)

    name = "mse_to_clean" if output == "logits" else f"{output}_mse_to_clean"
    return Metric(name, fn, output=output, needs_clean=True)


def feature_direction(direction: torch.Tensor, output: OutputKind = "features") -> Metric:
    """The model's pooled features (or, output="embeddings", its projected image embedding) projected on a
    direction [d]: a scalar per example for models without a classifier (DINOv2, CLIP, SigLIP, MAE)."""
    vector = torch.as_tensor(direction).detach().flatten()

    def fn(out, clean, targets):
        return out @ vector.to(device=out.device, dtype=out.dtype)

    return Metric("feature_direction", fn, output=output, params={"direction": tensor_fingerprint(vector)})


def metric_from_function(
    fn: Callable[..., torch.Tensor],
    name: str | None = None,
    output: OutputKind = "logits",
    needs_targets: bool = False,
    needs_clean: bool = False,
    params: dict[str, Any] | None = None,
) -> Metric:
    """Wrap a user function of the output as a Metric.

    fn is called as fn(output), fn(output, targets), fn(output, clean) or fn(output, clean, targets)
    depending on needs_targets / needs_clean, and must return one value per example [B].
    Stored sweeps are keyed by `name`, `params` and a fingerprint of fn's code, closure values and the
    globals it reads, so two different lambdas never share stored results. A callable that cannot be
    fingerprinted (a callable object) is refused by a resumable store unless `name` is given.
    """
    if not callable(fn):
        raise MetricError(f"a metric must be callable, got {type(fn).__name__}")
    try:
        code: str | None = function_fingerprint(fn)
    except Unfingerprintable:
        code = None
    keyable = code is not None or name is not None
    metric_name = name or str(getattr(fn, "__name__", type(fn).__name__))

    def call(out, clean, targets):
        args = [out]
        if needs_clean:
            args.append(clean)
        if needs_targets:
            args.append(targets)
        return fn(*args)

    return Metric(
        metric_name,
        call,
        output=output,
        needs_targets=needs_targets,
        needs_clean=needs_clean,
        params=dict(params or {}),
        code=code,
        keyable=keyable,
    )


MetricLike = str | Metric | Callable[..., torch.Tensor]
BUILTIN_METRICS: dict[str, Callable[[], Metric]] = {
    "cross_entropy": cross_entropy,
    "ce": cross_entropy,
    "accuracy": accuracy,
    "mse": mse,
    "kl_to_clean": kl_to_clean,
    "kl": kl_to_clean,
    "mse_to_clean": mse_to_clean,
    "features_mse_to_clean": lambda: mse_to_clean("features"),
    "class_logit": class_logit,
    "logit_diff": logit_diff,
}


def resolve_metric(metric: MetricLike) -> Metric:
    """A Metric from itself, a built-in name, or a plain function output -> [B]."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in BUILTIN_METRICS:
            raise MetricError(f"unknown metric {metric!r}; built-ins: {sorted(BUILTIN_METRICS)}, or pass a function")
        return BUILTIN_METRICS[metric]()
    if callable(metric):
        return metric_from_function(metric)
    raise MetricError(f"metric must be a name, a Metric or a function of the output; got {type(metric).__name__}")
