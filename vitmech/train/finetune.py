"""One call from a model and a labelled set to a fine-tuned HookedViT: head swap, tier, loop, merge, evaluation.

    from vitmech.train import TierConfig, TrainConfig, fine_tune
    result = fine_tune(HookedViT.from_pretrained("google/vit-base-patch16-224"), train, TierConfig("lora"),
                       TrainConfig(steps=500, batch_size=32, warmup_steps=50), val=val)
    result.model.save_pretrained("runs/vit_b16_lora", card=result.card())

The input model is never changed: the result is a new HookedViT (LoRA merged into plain weights) that
every analysis opens and that exports to timm/HF like any other.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vitmech.errors import InputError, TrainingDataError
from vitmech.model.hooked_vit import HookedViT
from vitmech.train.data import ArrayDataset, batch_indices
from vitmech.train.evaluate import ClassificationEval, Evaluation, evaluate, predict
from vitmech.train.heads import check_head, with_new_head
from vitmech.train.loop import LossFn, TrainConfig, TrainResult, fit, lr_factor, optimizer_step, task_loss
from vitmech.train.lora import has_lora, lora_summary, merge_lora
from vitmech.train.tiers import TierConfig, prepare_tier, trainable_parameter_count

logger = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    """The fine-tuned model, the run's history, and its evaluation on `val` (if given)."""

    model: HookedViT
    tier: TierConfig
    train_config: TrainConfig
    train_result: TrainResult
    evaluation: Evaluation | None = None
    trainable_parameters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def card(self, **more: Any) -> dict[str, Any]:
        """Card entries for `save_pretrained`: tier, hyperparameters, trainable parameters, time, metrics."""
        card: dict[str, Any] = {
            "tier": self.tier.tier,
            "tier_config": self.tier.to_dict(),
            "train_config": self.train_config.to_dict(),
            "trainable_parameters": self.trainable_parameters,
            "train_seconds": round(self.train_result.seconds, 1),
            "train_cpu_seconds": round(self.train_result.cpu_seconds, 1),
            "final_train_loss": self.train_result.final_loss,
            **self.extra,
        }
        if self.evaluation is not None:
            card["metrics"] = {"validation": self.evaluation.to_dict()}
        card.update(more)
        return card


def _metric(model: HookedViT, data: ArrayDataset) -> dict[str, float]:
    ev = evaluate(model, data)
    return {"accuracy": ev.accuracy} if isinstance(ev, ClassificationEval) else {"mean_mse": ev.mean_mse}


def ridge_fit(
    features: Float[Tensor, "n f"], targets: Float[Tensor, "n k"], alpha: float
) -> tuple[Float[Tensor, "f k"], Float[Tensor, " k"]]:
    """Closed-form ridge regression with an unpenalised intercept: (W, b) minimising
    ||X W + b - Y||^2 + alpha ||W||^2, solved in float64 in the dual (n x n) or primal (f x f) form,
    whichever is smaller. Returns W [f, k] and b [k] in the features' dtype."""
    if not alpha > 0:
        raise InputError(f"the ridge alpha must be > 0, got {alpha!r}")
    x, y = features.double(), targets.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n, f = xc.shape
    if n <= f:
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        weights = xc.T @ torch.linalg.solve(xc @ xc.T + alpha * eye, yc)
    else:
        eye = torch.eye(f, dtype=x.dtype, device=x.device)
        weights = torch.linalg.solve(xc.T @ xc + alpha * eye, xc.T @ yc)
    bias = y_mean - x_mean @ weights
    return weights.to(features.dtype), bias.to(features.dtype)


def fit_head_on_features(
    model: HookedViT,
    train: ArrayDataset,
    config: TrainConfig,
    groups: list[dict[str, Any]],
    progress: bool = True,
    ridge: float | None = None,
) -> TrainResult:
    """The linear probe's fast path: compute the frozen backbone's pooled features once, then train only the
    head on them with the same AdamW / schedule / batches as `fit` (no augmentation: features are fixed), or,
    with `ridge` (regression only), set it to the closed-form ridge solution of that alpha (`ridge_fit`)."""
    t0, c0 = time.perf_counter(), time.process_time()
    features = predict(model, train, return_type="features", progress=progress)
    head = model.head
    if ridge is not None:
        if train.task != "regression":
            raise TrainingDataError(f"a ridge probe fits regression targets; this training set is {train.task}")
        weights, bias = ridge_fit(features, train.targets.float(), ridge)
        with torch.no_grad():
            head.W_H.copy_(weights.to(head.W_H))
            head.b_H.copy_(bias.to(head.b_H))
            loss = task_loss(head(features), train.targets, train.task)
        result = TrainResult(history=[{"step": 0, "loss": float(loss), "lr_factor": 0.0}])
        result.seconds = time.perf_counter() - t0
        result.cpu_seconds = time.process_time() - c0
        return result
    optimizer = torch.optim.AdamW(groups, betas=config.betas, eps=config.eps)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    result = TrainResult()
    running, count = 0.0, 0
    for step in range(config.steps):
        rows = batch_indices(len(train), config.batch_size, step, config.seed)
        loss = task_loss(head(features[rows]), train.targets[rows], train.task, config.label_smoothing)
        value, _ = optimizer_step(optimizer, loss, list(head.parameters()), config, step, head)
        running, count = running + value, count + 1
        if (step + 1) % max(1, config.log_every) == 0 or step + 1 == config.steps:
            result.history.append({"step": step + 1, "loss": running / count, "lr_factor": lr_factor(step, config)})
            running, count = 0.0, 0
    result.steps_done = config.steps
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result


def fine_tune(
    model: HookedViT,
    train: ArrayDataset,
    tier: TierConfig,
    config: TrainConfig,
    *,
    val: ArrayDataset | None = None,
    new_head: bool = True,
    cache_features: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    card: dict[str, Any] | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    fingerprint_extra: dict[str, Any] | None = None,
    ridge: float | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of `model` on `train` by tier; returns the merged model and its history.

    Args:
        new_head: give the copy a fresh zero-initialised head sized for `train` (names = train.names);
            False keeps the model's head, which must then match (HeadMismatchError otherwise).
        cache_features: for the linear probe, train the head on features computed once (fast; no
            augmentation); False runs the generic loop with the backbone frozen (checkpointed).
        checkpoint_dir / resume: see `fit`.
        loss_fn / fingerprint_extra: a loss replacing the task loss, and what a resume must match about
            it (see `fit`; used by the attention-supervised tier).
        ridge: for the cached linear probe of a regression, the closed-form ridge head of this alpha
            instead of AdamW steps (`ridge_fit`; `config.steps` is then unused).
    """
    if new_head:
        work = with_new_head(model, train.n_outputs, train.names, task=train.task, seed=config.seed)
    else:
        check_head(model, train.n_outputs, f"the {train.task} targets")
        work = copy.deepcopy(model)
    if val is not None:
        check_head(work, val.n_outputs, f"the validation {val.task} targets")
    groups = prepare_tier(work, tier, seed=config.seed)
    n_trainable = trainable_parameter_count(work)
    adapters = lora_summary(work)
    extra = {"lora": adapters} if adapters.get("adapters") else {}
    if loss_fn is not None and tier.tier == "linear_probe" and cache_features:
        raise InputError("a custom loss_fn needs the generic loop: pass cache_features=False for the linear probe")
    if ridge is not None and not (tier.tier == "linear_probe" and cache_features):
        raise InputError("ridge fits the cached linear probe only (tier 'linear_probe', cache_features=True)")
    if ridge is not None:
        extra["head_fit"] = {"ridge_alpha": ridge}
    if tier.tier == "linear_probe" and cache_features:
        result = fit_head_on_features(work, train, config, groups, progress=progress, ridge=ridge)
    else:
        evaluate_fn = (lambda m: _metric(m, val)) if val is not None else None
        result = fit(
            work,
            groups,
            train,
            config,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            evaluate=evaluate_fn,
            card=card,
            fingerprint_extra={"tier": tier.to_dict(), **(fingerprint_extra or {})},
            progress=progress,
            loss_fn=loss_fn,
        )
    if has_lora(work):
        merge_lora(work)
    for param in work.parameters():
        param.requires_grad_(True)
    work.eval()
    evaluation = evaluate(work, val) if val is not None else None
    return FineTuneResult(work, tier, config, result, evaluation, n_trainable, extra)


__all__ = ["FineTuneResult", "fine_tune", "fit_head_on_features", "ridge_fit"]
