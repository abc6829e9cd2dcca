"""Evaluation metrics against independent references (naive loops, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr

from vitmech.train import (
    ArrayDataset,
    chance_baselines,
    confusion_matrix,
    evaluate,
    mean_predictor_mse,
    pearson_r,
    predict,
)
from vitmech.train.evaluate import score_classification, score_regression


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_confusion_matrix_matches_a_naive_count(pairs):
    true, pred = zip(*pairs)
    naive = np.zeros((4, 4), dtype=np.int64)
    for t, p in pairs:
        naive[t, p] += 1
    assert np.array_equal(confusion_matrix(true, pred, 4), naive)


def test_classification_score_accuracy_and_recall():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    ev = score_classification(logits, torch.tensor([0, 0, 0, 1]), ["x", "y"])
    assert ev.accuracy == 0.75 and ev.confusion.tolist() == [[2, 1], [0, 1]]
    assert ev.per_class_recall.tolist() == pytest.approx([2 / 3, 1.0])
    assert ev.to_frame().loc["x", "y"] == 1 and ev.to_dict()["per_class_recall"]["y"] == 1.0


def test_pearson_and_mse_match_scipy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 3))
    out = y * np.array([1.0, 0.5, -1.0]) + rng.normal(scale=0.5, size=(50, 3))
    ev = score_regression(torch.tensor(out), torch.tensor(y), ["a", "b", "c"])
    for k in range(3):
        assert ev.pearson_r[k] == pytest.approx(pearsonr(out[:, k], y[:, k])[0], abs=1e-12)
        assert ev.mse[k] == pytest.approx(np.mean((out[:, k] - y[:, k]) ** 2))
    assert np.isnan(pearson_r(np.ones((5, 1)), np.arange(5.0)[:, None])[0])


def test_baselines():
    train = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([1, 1, 0, 2])
    assert chance_baselines(train, test, 3) == {"uniform": pytest.approx(1 / 3), "majority_class": 0.5}
    t = torch.tensor([[0.0], [2.0]])
    assert mean_predictor_mse(t, torch.tensor([[1.0], [3.0]])).tolist() == [2.0]


@pytest.mark.parametrize("squash", [True, False])
def test_evaluate_agrees_with_a_per_image_loop(tiny_vit, squash):
    """Batched uint8 input equals model.preprocess image by image, with or without a centre crop."""
    from vitmech import Preprocessing

    model = tiny_vit
    if squash:
        model.preprocessing = Preprocessing(
            image_size=32, resize_mode="squash", crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3
        )
    images = torch.randint(0, 256, (7, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(images, torch.tensor([0, 1, 2, 3, 4, 0, 1]), [str(i) for i in range(5)], "classification")
    ev = evaluate(model, data, batch_size=3)
    with torch.no_grad():
        one_by_one = torch.cat([model(model.preprocess(images[i].numpy())) for i in range(7)])
    assert torch.allclose(predict(model, data, batch_size=3), one_by_one, atol=1e-5)
    assert ev.accuracy == pytest.approx(float((one_by_one.argmax(1) == data.targets).float().mean()))
