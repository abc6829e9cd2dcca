"""Built-in metrics against closed forms, and metric validation errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation import (
    MetricError,
    accuracy,
    class_logit,
    cross_entropy,
    head_sweep,
    kl_to_clean,
    logit_diff,
    metric_from_function,
    mse,
    mse_to_clean,
    resolve_metric,
)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 0.0]])
LABELS = torch.tensor([0, 1, 2])


def test_cross_entropy_is_minus_log_softmax_of_the_target():
    expected = [
        -math.log(math.exp(r[t]) / sum(math.exp(v) for v in r)) for r, t in zip(LOGITS.tolist(), LABELS.tolist())
    ]
    torch.testing.assert_close(cross_entropy()(LOGITS, targets=LABELS), torch.tensor(expected), atol=1e-6, rtol=0)


def test_accuracy_class_logit_and_logit_diff():
    assert accuracy()(LOGITS, targets=LABELS).tolist() == [1.0, 0.0, 0.0]
    assert class_logit(2)(LOGITS).tolist() == [-1.0, 3.0, 0.0]
    assert class_logit()(LOGITS, targets=LABELS).tolist() == pytest.approx([2.0, 0.2, 0.0])
    assert logit_diff(0, 2)(LOGITS).tolist() == pytest.approx([3.0, -2.9, 1.0])
    # margin: target logit minus the best other logit
    assert logit_diff()(LOGITS, targets=LABELS).tolist() == pytest.approx([1.5, -2.8, -1.0])


def test_mse_and_kl_to_clean():
    targets = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = ((LOGITS - targets) ** 2).mean(1)
    torch.testing.assert_close(mse()(LOGITS, targets=targets), expected)
    torch.testing.assert_close(mse()(LOGITS[:, :1], targets=targets[:, 0]), (LOGITS[:, 0] - targets[:, 0]) ** 2)
    clean = LOGITS.flip(1)
    reference = F.kl_div(F.log_softmax(LOGITS, -1), F.log_softmax(clean, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_to_clean()(LOGITS, clean=clean), reference, atol=1e-6, rtol=0)
    assert kl_to_clean()(LOGITS, clean=LOGITS).abs().max() < 1e-6
    torch.testing.assert_close(mse_to_clean()(LOGITS, clean=clean), ((LOGITS - clean) ** 2).mean(1))


def test_user_functions_get_what_they_ask_for():
    top = metric_from_function(lambda out: out.max(-1).values, name="top")
    assert top(LOGITS).tolist() == [2.0, 3.0, 1.0]
    hit = metric_from_function(lambda out, t: out[torch.arange(3), t], name="hit", needs_targets=True)
    assert hit(LOGITS, targets=LABELS).tolist() == pytest.approx([2.0, 0.2, 0.0])
    gap = metric_from_function(lambda out, clean: (out - clean).abs().sum(-1), name="gap", needs_clean=True)
    assert gap(LOGITS, clean=LOGITS).tolist() == [0.0, 0.0, 0.0]
    assert resolve_metric(lambda out: out[:, 0]).name == "<lambda>"
    assert resolve_metric("ce").name == "cross_entropy"


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda out: out.mean(), r"one value per example.*average"),
        (lambda out: out, r"one value per example, shape \[3\]; got \[3, 3\]"),
        (lambda out: out[:, 0].tolist(), "must return a tensor"),
        (lambda out: out[:, 0] / 0 * 0, "non-finite"),
    ],
)
def test_metric_that_does_not_return_a_scalar_per_example(fn, message):
    with pytest.raises(MetricError, match=message):
        metric_from_function(fn, name="bad")(LOGITS)


def test_missing_or_misshaped_targets():
    with pytest.raises(MetricError, match="needs targets"):
        cross_entropy()(LOGITS)
    with pytest.raises(MetricError, match="2 targets for 3 examples"):
        cross_entropy()(LOGITS, targets=LABELS[:2])
    with pytest.raises(MetricError, match="integer class targets"):
        accuracy()(LOGITS, targets=LABELS.float())
    with pytest.raises(MetricError, match="do not match"):
        mse()(LOGITS, targets=torch.zeros(3, 2))
    with pytest.raises(MetricError, match="out of range"):
        class_logit(7)(LOGITS)
    with pytest.raises(MetricError, match="unknown metric"):
        resolve_metric("loss")
    with pytest.raises(MetricError, match="two classes"):
        logit_diff(1)


def test_sweeps_validate_the_metric_before_computing(tiny_vit):
    model = tiny_vit
    images = seeded_images(2, 32)
    with pytest.raises(MetricError, match="average"):
        head_sweep(model, images, lambda out: out.sum(), progress=False)
    with pytest.raises(MetricError, match="needs targets"):
        head_sweep(model, images, "accuracy", progress=False)


def test_a_model_without_a_classifier_has_no_logit_metric():
    headless = tiny_model(seed=0, n_classes=0)
    images = seeded_images(2, 32)
    with pytest.raises(MetricError, match="no classifier head"):
        head_sweep(headless, images, "kl_to_clean", progress=False)
    norm = metric_from_function(lambda feats: feats.norm(dim=-1), name="norm", output="features")
    result = head_sweep(headless, images, norm, layers=[2], progress=False)
    assert result.to_frame().shape[0] == 4
