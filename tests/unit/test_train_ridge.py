"""The closed-form ridge probe: `ridge_fit` against numpy's least squares on the augmented system, and the
probe head it sets on a flatten-readout regressor (the chirp regressor's LP stage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import tiny_model
from tests.unit.test_train_tiers import procedural_set
from vitmech.train import ArrayDataset, TierConfig, TrainConfig, fine_tune
from vitmech.train.evaluate import predict
from vitmech.train.finetune import ridge_fit
from vitmech.train.heads import with_new_head


def lstsq_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """min ||[X 1] [W; b] - Y||^2 + alpha ||W||^2 as one least-squares problem: rows sqrt(alpha) I below X."""
    n, f = x.shape
    design = np.vstack([np.hstack([x, np.ones((n, 1))]), np.hstack([np.sqrt(alpha) * np.eye(f), np.zeros((f, 1))])])
    rhs = np.vstack([y, np.zeros((f, y.shape[1]))])
    solution = np.linalg.lstsq(design, rhs, rcond=None)[0]
    return solution[:f], solution[f]


@pytest.mark.parametrize(("n", "f"), [(12, 30), (40, 6)])  # dual (n < f) and primal (n > f) forms
def test_ridge_fit_equals_least_squares_on_the_augmented_system(n, f):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, f, generator=g, dtype=torch.float64) + 0.5
    y = torch.randn(n, 3, generator=g, dtype=torch.float64)
    weights, bias = ridge_fit(x, y, alpha=2.5)
    ref_w, ref_b = lstsq_ridge(x.numpy(), y.numpy(), 2.5)
    np.testing.assert_allclose(weights.numpy(), ref_w, atol=1e-9)
    np.testing.assert_allclose(bias.numpy(), ref_b, atol=1e-9)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        ridge_fit(x, y, alpha=0.0)


def test_ridge_probe_sets_the_flatten_head_to_the_closed_form():
    images = procedural_set(16, seed=5).images
    targets = torch.randn(16, 2, generator=torch.Generator().manual_seed(6))
    data = ArrayDataset(images, targets, ["a", "b"], "regression")
    model = with_new_head(tiny_model(2), 2, ["a", "b"], task="regression", pool="flatten")
    probe = fine_tune(model, data, TierConfig("linear_probe"), TrainConfig(steps=1), ridge=3.0, progress=False)
    features = predict(model, data, return_type="features")
    ref_w, ref_b = lstsq_ridge(features.double().numpy(), targets.double().numpy(), 3.0)
    np.testing.assert_allclose(probe.model.head.W_H.detach().numpy(), ref_w, atol=1e-4)
    np.testing.assert_allclose(probe.model.head.b_H.detach().numpy(), ref_b, atol=1e-4)
    assert probe.card()["head_fit"] == {"ridge_alpha": 3.0}
    with pytest.raises(ValueError, match="ridge fits the cached linear probe only"):
        fine_tune(model, data, TierConfig("full"), TrainConfig(steps=1), ridge=3.0, progress=False)
    classes = procedural_set(16, seed=5)
    with pytest.raises(ValueError, match="a ridge probe fits regression targets"):
        fine_tune(tiny_model(2), classes, TierConfig("linear_probe"), TrainConfig(steps=1), ridge=3.0, progress=False)
