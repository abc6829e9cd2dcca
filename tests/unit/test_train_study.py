"""run_study: tier vs linear probe vs chance on one test set; LP-FT starts from the probe's head."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import tiny_model
from tests.unit.test_train_tiers import procedural_set
from vitmech.train import TierConfig, TrainConfig
from vitmech.train.study import run_study


@pytest.fixture(scope="module")
def splits():
    data = procedural_set(60, seed=11)
    return data.split([40, 20], seed=0)


def test_study_reports_tier_probe_and_chance(tiny_vit, splits):
    train, test = splits
    study = run_study(
        tiny_vit,
        train,
        None,
        test,
        TierConfig("full", head_lr=1e-2, backbone_lr=1e-3),
        TrainConfig(steps=6, batch_size=8),
        probe_config=TrainConfig(steps=20, batch_size=8),
        progress=False,
    )
    metrics = study.card_metrics()
    assert metrics["margins"]["over_linear_probe"] == pytest.approx(study.test.accuracy - study.probe_test.accuracy)
    assert metrics["baselines"]["uniform"] == pytest.approx(1 / 4) and metrics["split_sizes"] == {
        "train": 40,
        "val": 0,
        "test": 20,
        "probe_train": 40,
    }
    assert [r["model"] for r in study.summary_rows()] == [
        "full fine-tune",
        "linear probe",
        "chance (uniform)",
        "chance (majority class)",
    ]


def test_lp_ft_starts_from_the_probe_head(splits):
    train, test = splits
    tiny_rates = TierConfig("full", head_lr=1e-9, backbone_lr=1e-9)
    study = run_study(
        tiny_model(1),
        train,
        None,
        test,
        tiny_rates,
        TrainConfig(steps=2, batch_size=8),
        probe_config=TrainConfig(steps=20, batch_size=8),
        head_from_probe=True,
        progress=False,
    )
    assert torch.allclose(study.tuned.model.head.W_H, study.probe.model.head.W_H, atol=1e-6)
    assert study.probe.model.head.W_H.abs().max() > 1e-3 and study.tuned.card()["head_init"] == "linear probe (LP-FT)"
    with pytest.raises(ValueError, match="head_from_probe needs the linear probe"):
        run_study(
            tiny_model(1), train, None, test, tiny_rates, TrainConfig(steps=1), head_from_probe=True, progress=False
        )
