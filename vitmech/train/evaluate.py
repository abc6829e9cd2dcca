"""Held-out evaluation: accuracy and confusion matrix (classification), MSE and Pearson r per target
(regression), and the baselines a trained model has to beat."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vitmech.model.hooked_vit import HookedViT
from vitmech.train.data import ArrayDataset, to_model_input
from vitmech.train.heads import check_head


@dataclass
class ClassificationEval:
    """accuracy in [0, 1]; confusion [C, C] counts with rows = true class, columns = predicted."""

    accuracy: float
    confusion: Int[np.ndarray, "true predicted"]
    class_names: list[str]
    n: int

    @property
    def per_class_recall(self) -> Float[np.ndarray, " classes"]:
        totals = self.confusion.sum(axis=1)
        return np.divide(np.diag(self.confusion), totals, out=np.full(len(totals), np.nan), where=totals > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "class_names": self.class_names,
            "confusion": self.confusion.tolist(),
            "per_class_recall": dict(zip(self.class_names, self.per_class_recall.tolist())),
        }

    def to_frame(self):  # noqa: ANN201
        """The confusion matrix as a DataFrame (index: true class, columns: predicted class)."""
        import pandas as pd

        return pd.DataFrame(self.confusion, index=pd.Index(self.class_names, name="true"), columns=self.class_names)


@dataclass
class RegressionEval:
    """Per target: mse (in the targets' units as given, e.g. z-scores) and Pearson r."""

    mse: Float[np.ndarray, " targets"]
    pearson_r: Float[np.ndarray, " targets"]
    target_names: list[str]
    n: int

    @property
    def mean_mse(self) -> float:
        return float(np.mean(self.mse))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean_mse": self.mean_mse,
            "mse": dict(zip(self.target_names, self.mse.tolist())),
            "pearson_r": dict(zip(self.target_names, self.pearson_r.tolist())),
        }

    def to_frame(self):  # noqa: ANN201
        import pandas as pd

        return pd.DataFrame({"target": self.target_names, "mse": self.mse, "pearson_r": self.pearson_r})


Evaluation = ClassificationEval | RegressionEval


@torch.no_grad()
def predict(
    model: HookedViT, data: ArrayDataset, batch_size: int = 64, return_type: str = "logits", progress: bool = False
) -> Float[Tensor, "n outputs"]:
    """The model's outputs (logits, or "features" = final-LN CLS) on every image, in order, in eval mode."""
    was_training = model.training
    model.eval()
    outs = []
    for start in tqdm(range(0, len(data), batch_size), desc="predict", disable=not progress):
        x = to_model_input(data.images[start : start + batch_size], model.preprocessing).to(model.device, model.dtype)
        outs.append(model(x, return_type=return_type).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def confusion_matrix(
    true: Sequence[int] | Tensor, predicted: Sequence[int] | Tensor, n_classes: int
) -> Int[np.ndarray, "true predicted"]:
    """Counts [n_classes, n_classes], rows = true class, columns = predicted class."""
    t = np.asarray(true, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def pearson_r(x: Float[np.ndarray, "n k"], y: Float[np.ndarray, "n k"]) -> Float[np.ndarray, " k"]:
    """Pearson correlation per column (float64); nan where a column is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    denom = np.sqrt((xc**2).sum(0) * (yc**2).sum(0))
    return np.divide((xc * yc).sum(0), denom, out=np.full(x.shape[1], np.nan), where=denom > 0)


def score_classification(
    logits: Float[Tensor, "n classes"], labels: Int[Tensor, " n"], class_names: Sequence[str]
) -> ClassificationEval:
    predicted = logits.argmax(dim=1)
    confusion = confusion_matrix(labels, predicted, len(class_names))
    return ClassificationEval(
        float(np.trace(confusion) / max(1, confusion.sum())), confusion, list(class_names), int(len(labels))
    )


def score_regression(
    outputs: Float[Tensor, "n k"], targets: Float[Tensor, "n k"], target_names: Sequence[str]
) -> RegressionEval:
    out, tgt = outputs.double().numpy(), targets.double().numpy()
    mse = ((out - tgt) ** 2).mean(0)
    return RegressionEval(mse, pearson_r(out, tgt), list(target_names), int(len(tgt)))


def evaluate(model: HookedViT, data: ArrayDataset, batch_size: int = 64, progress: bool = False) -> Evaluation:
    """Accuracy + confusion matrix, or MSE + Pearson r per target, on `data`."""
    check_head(model, data.n_outputs, f"the {data.task} targets")
    outputs = predict(model, data, batch_size, progress=progress)
    if data.task == "classification":
        return score_classification(outputs, data.targets, data.names)
    return score_regression(outputs, data.targets, data.names)


def chance_baselines(train_labels: Tensor, test_labels: Tensor, n_classes: int) -> dict[str, float]:
    """Accuracy of guessing: uniform (1/C) and always the training set's majority class (on the test labels)."""
    majority = int(torch.bincount(train_labels, minlength=n_classes).argmax())
    return {"uniform": 1.0 / n_classes, "majority_class": float((test_labels == majority).float().mean())}


def mean_predictor_mse(train_targets: Tensor, test_targets: Tensor) -> Float[np.ndarray, " targets"]:
    """MSE per target of always predicting the training mean (the regression baseline)."""
    mean = train_targets.double().mean(0)
    return ((test_targets.double() - mean) ** 2).mean(0).numpy()


__all__ = [
    "ClassificationEval",
    "RegressionEval",
    "chance_baselines",
    "confusion_matrix",
    "evaluate",
    "mean_predictor_mse",
    "pearson_r",
    "predict",
    "score_classification",
    "score_regression",
]
