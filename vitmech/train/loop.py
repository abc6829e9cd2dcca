"""The training loop: AdamW, linear warm-up then cosine decay, gradient clipping, seeded, resumable.

Everything a step does is a function of (seed, step) and the state before it: the batch
(`data.batch_indices`), its augmentation and any dropout (a generator seeded from (seed, step)), the
learning rate (`lr_factor(step)`). Checkpoints hold the model and AdamW state, so a run interrupted
after a checkpoint and resumed ends with the same weights as one that was never interrupted
(bit-identical on the same machine and thread count; tested).
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from vitmech.errors import InputError, NonFiniteLossError
from vitmech.fingerprint import module_fingerprint, tensor_fingerprint
from vitmech.io.lock import LOCK_NAME, WriterLock
from vitmech.model.hooked_vit import HookedViT
from vitmech.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vitmech.train.data import ArrayDataset, Augment, augment_batch, batch_indices, step_generator, to_model_input
from vitmech.train.errors import TrainingDataError
from vitmech.train.heads import check_head

logger = logging.getLogger(__name__)


LossFn = Callable[[HookedViT, Tensor, Tensor, Tensor], Tensor]
"""(model, input batch [B, C, S, S], targets, dataset rows [B]) -> scalar loss."""


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of one run (learning rates live in the tier's parameter groups).

    Attributes:
        steps: optimizer steps in total.
        batch_size: images per step.
        warmup_steps: linear warm-up from lr/warmup_steps to lr over the first steps.
        min_lr_ratio: the cosine decays to lr * min_lr_ratio at the last step.
        clip_norm: max global gradient norm (None: no clipping).
        seed: everything random in the run derives from it.
        augment: None, "hflip" or "dihedral" (see data.augment_batch).
        label_smoothing: for classification losses.
        betas, eps: AdamW's.
        checkpoint_every: write a checkpoint every N steps (0: only at the end); needs a checkpoint_dir.
        keep_checkpoints: newest checkpoints kept (0: all).
        log_every: steps between history rows.
        eval_every: steps between calls of the evaluation callback (0: only at the end).
    """

    steps: int
    batch_size: int = 32
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip_norm: float | None = 1.0
    seed: int = 0
    augment: Augment = None
    label_smoothing: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise InputError(f"steps must be a positive int, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise InputError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise InputError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InputError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise InputError(f"clip_norm must be > 0 or None, got {self.clip_norm!r}")
        if self.augment not in (None, "hflip", "dihedral"):
            raise InputError(f"augment must be None, 'hflip' or 'dihedral', got {self.augment!r}")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def recipe(self) -> dict[str, Any]:
        """The fields that change the numbers (a resume must match them); bookkeeping left out."""
        d = self.to_dict()
        for key in ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every"):
            d.pop(key)
        return d


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of each group's base lr at `step` (0-based): linear warm-up, then cosine to min_lr_ratio.

    transformers' `get_cosine_with_min_lr_schedule_with_warmup` read one step ahead, so step 0 already
    trains (lr / warmup_steps) and the last step ends at lr * min_lr_ratio.

    >>> config = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    >>> [round(lr_factor(s, config), 3) for s in (0, 1, 9)]
    [0.5, 1.0, 0.1]
    """
    return float(_cosine_schedule(config.warmup_steps, config.steps, config.min_lr_ratio)(step + 1))


@functools.lru_cache(maxsize=16)
def _cosine_schedule(warmup_steps: int, steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """transformers' schedule as a function of the number of optimizer steps taken (its LambdaLR's lambda)."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(probe, warmup_steps, steps, min_lr_rate=min_lr_ratio)
    return scheduler.lr_lambdas[0]


@dataclass
class TrainResult:
    """What a run did. `history` rows: step, loss (mean since the last row), lr factor, grad norm,
    and any evaluation metrics; `seconds` wall time and `cpu_seconds` process CPU time (all threads)
    of this call; `interrupted` when it stopped early at `stop_at_step`."""

    history: list[dict[str, Any]] = field(default_factory=list)
    steps_done: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    resumed_from: int | None = None
    interrupted: bool = False

    def to_frame(self):  # noqa: ANN201 (pandas is imported lazily)
        import pandas as pd

        return pd.DataFrame(self.history)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def final_loss(self) -> float:
        losses = [row["loss"] for row in self.history if "loss" in row]
        return losses[-1] if losses else float("nan")


def task_loss(outputs: Tensor, targets: Tensor, task: str, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy on class indices, or mean squared error on (z-scored) regression targets."""
    if task == "classification":
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)
    return F.mse_loss(outputs, targets)


def run_fingerprint(
    model: HookedViT,
    optimizer: torch.optim.Optimizer,
    train: ArrayDataset,
    config: TrainConfig,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint's: architecture, the starting weights, trainable
    tensors, groups, recipe, and the data (size, names and a hash of its images and targets)."""
    trainable = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    groups = [
        {
            "name": g.get("name", str(i)),
            "lr": g["base_lr"],
            "weight_decay": g["weight_decay"],
            "n_params": len(g["params"]),
        }
        for i, g in enumerate(optimizer.param_groups)
    ]
    return {
        "model_config": model.cfg.to_dict(),
        "start_weights": module_fingerprint(model),
        "trainable": trainable,
        "groups": groups,
        "recipe": config.recipe(),
        "data": {
            "n": len(train),
            "task": train.task,
            "names": train.names,
            "image_size": train.image_size,
            "content": tensor_fingerprint(train.images, train.targets),
        },
        **({"extra": extra} if extra else {}),
    }


def fit(
    model: HookedViT,
    param_groups: list[dict[str, Any]],
    train: ArrayDataset,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    evaluate: Callable[[HookedViT], dict[str, float]] | None = None,
    card: dict[str, Any] | None = None,
    fingerprint_extra: dict[str, Any] | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train `model` in place on `train` with AdamW over `param_groups` (from `prepare_tier`).

    Args:
        checkpoint_dir: where checkpoints go; with `resume`, the newest one there is loaded first
            (its fingerprint must match this run, else ResumeMismatchError).
        evaluate: called on the model (in eval mode) every `eval_every` steps and at the end; its
            metrics join the history.
        card: stored in each checkpoint (source model, data, tier, ...).
        stop_at_step: stop after this many steps as if interrupted (checkpoint written first).
        loss_fn: the step's loss from (model, input batch, targets, dataset rows) instead of the task
            loss (e.g. the attention-supervised loss of `vitmech.train.attention_supervision`).
    Returns:
        TrainResult. The model is left in eval mode.
    """
    if len(train) == 0:
        raise TrainingDataError("the training split is empty")
    check_head(model, train.n_outputs, f"the {train.task} targets ({len(train.names)} names)")
    trainable = [p for g in param_groups for p in g["params"]]
    if not trainable or not any(p.requires_grad for p in trainable):
        raise InputError("no trainable parameters in the groups; call prepare_tier(model, tier_config) first")
    if train.image_size != model.cfg.image_size:
        logger.warning(
            "training images are %d px, the model takes %d px: every batch goes through PIL preprocessing",
            train.image_size,
            model.cfg.image_size,
        )

    lock = None
    if checkpoint_dir is not None:  # one writer per run folder
        lock = WriterLock(Path(checkpoint_dir) / LOCK_NAME, what=f"training run folder {checkpoint_dir}").acquire()
    try:
        return _fit(
            model,
            param_groups,
            train,
            config,
            checkpoint_dir,
            resume,
            evaluate,
            card,
            fingerprint_extra,
            stop_at_step,
            progress,
            trainable,
            loss_fn,
        )
    finally:
        if lock is not None:
            lock.release()


def _rng_state() -> dict[str, Any]:
    """The global torch and numpy generators (what a resumed run must continue from), JSON-able."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _fit(
    model: HookedViT,
    param_groups: list[dict[str, Any]],
    train: ArrayDataset,
    config: TrainConfig,
    checkpoint_dir: str | Path | None,
    resume: bool,
    evaluate: Callable[[HookedViT], dict[str, float]] | None,
    card: dict[str, Any] | None,
    fingerprint_extra: dict[str, Any] | None,
    stop_at_step: int | None,
    progress: bool,
    trainable: list[torch.nn.Parameter],
    loss_fn: LossFn | None = None,
) -> TrainResult:
    optimizer = torch.optim.AdamW(param_groups, betas=config.betas, eps=config.eps)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    fingerprint = run_fingerprint(model, optimizer, train, config, fingerprint_extra)
    result = TrainResult()
    start = 0
    running, count = 0.0, 0  # loss sum and steps since the last history row
    if checkpoint_dir is not None and resume:
        last = latest_checkpoint(checkpoint_dir)
        if last is not None:
            meta = load_checkpoint(last, model, optimizer, fingerprint)
            start = int(meta["step"])
            result.history = list(meta.get("history", []))
            result.resumed_from = start
            running, count = (
                float(meta.get("running_loss", {}).get("sum", 0.0)),
                int(meta.get("running_loss", {}).get("count", 0)),
            )
            if "rng" in meta:
                _set_rng_state(meta["rng"])
            logger.info("resumed from %s (step %d of %d)", last, start, config.steps)

    def checkpoint(step: int) -> None:
        if checkpoint_dir is None:
            return
        state = {
            "fingerprint": fingerprint,
            "history": result.history,
            "running_loss": {"sum": running, "count": count},
            "rng": _rng_state(),
            "card": card or {},
            "train_config": config.to_dict(),
        }
        save_checkpoint(checkpoint_dir, step, model, optimizer, state, keep=config.keep_checkpoints)

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train()
        result.history.append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})

    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    end = config.steps if stop_at_step is None else min(config.steps, stop_at_step)
    bar = tqdm(range(start, end), total=config.steps, initial=start, desc="train", unit="step", disable=not progress)
    for step in bar:
        loss, grad_norm = _train_step(model, optimizer, train, config, step, trainable, loss_fn)
        running += loss
        count += 1
        done = step + 1
        if done % max(1, config.log_every) == 0 or done == config.steps:
            row = {"step": done, "loss": running / count, "lr_factor": lr_factor(step, config), "grad_norm": grad_norm}
            result.history.append(row)
            bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0
        if config.eval_every and done % config.eval_every == 0 and done != config.steps:
            run_eval(done)
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done in (end, config.steps):
            if done == config.steps:
                run_eval(done)
            checkpoint(done)
    bar.close()
    model.eval()
    result.steps_done = end
    result.interrupted = end < config.steps
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result


def _train_step(
    model: HookedViT,
    optimizer: torch.optim.Optimizer,
    train: ArrayDataset,
    config: TrainConfig,
    step: int,
    trainable: list[torch.nn.Parameter],
    loss_fn: LossFn | None = None,
) -> tuple[float, float]:
    rows = batch_indices(len(train), config.batch_size, step, config.seed)
    images = augment_batch(train.images[rows], config.augment, step_generator(config.seed, step, stream=2))
    x = to_model_input(images, model.preprocessing).to(model.device, model.dtype)
    y = train.targets[rows].to(model.device)
    dropout_seed = int(np.random.SeedSequence([config.seed, step, 3]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dropout_seed)
        if loss_fn is None:
            loss = task_loss(model(x, return_type="logits"), y, train.task, config.label_smoothing)
        else:
            loss = loss_fn(model, x, y, torch.as_tensor(rows))
    return optimizer_step(optimizer, loss, trainable, config, step, model)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    params: list[torch.nn.Parameter],
    config: TrainConfig,
    step: int,
    model: torch.nn.Module,
) -> tuple[float, float]:
    """One update at `step` (0-based): each group's lr = its base_lr times `lr_factor`, backward of `loss`,
    gradient clipping to config.clip_norm, then the optimizer's step. Returns (loss, gradient norm before
    clipping); a non-finite loss is an error (naming `model`'s non-finite weights when that is the cause)."""
    factor = lr_factor(step, config)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with_grad = [p for p in params if p.grad is not None]
    if config.clip_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(with_grad, config.clip_norm))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for p in with_grad if (g := p.grad) is not None])))
    if not math.isfinite(loss.item()):
        broken = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if broken:
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {step} because the model's weights already hold NaN/inf "
                f"before this update: {broken[:8]}; reload the weights (a damaged file?) rather than change the recipe"
            )
        raise NonFiniteLossError(f"loss became {loss.item()} at step {step}; lower the learning rate or check the data")
    optimizer.step()
    return float(loss.item()), norm


__all__ = ["TrainConfig", "TrainResult", "fit", "lr_factor", "optimizer_step", "run_fingerprint", "task_loss"]
