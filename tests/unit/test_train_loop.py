"""The training loop: exact resume, schedule, sampling, checkpoints, and clear errors on bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers.models import tiny_model
from tests.helpers.typecheck import runtime_checks_off
from tests.unit.test_train_tiers import procedural_set
from vitmech.train import (
    ArrayDataset,
    HeadMismatchError,
    LoRAConfig,
    ResumeMismatchError,
    TierConfig,
    TrainConfig,
    TrainingDataError,
    batch_indices,
    fine_tune,
    fit,
    lr_factor,
    prepare_tier,
    with_new_head,
)
from vitmech.train.checkpoint import checkpoint_dirs, latest_checkpoint


@pytest.fixture(scope="module")
def data() -> ArrayDataset:
    return procedural_set(40, seed=5)


def _model(data: ArrayDataset, seed: int = 0, **overrides):
    return with_new_head(tiny_model(seed, **overrides), data.n_outputs, data.names, init="trunc_normal")


@pytest.mark.parametrize("tier", ["full", "lora"])
def test_resume_after_interruption_gives_the_same_weights(tmp_path, data, tier):
    tier_cfg = TierConfig(tier, head_lr=1e-2, backbone_lr=3e-3, lora=LoRAConfig(rank=2, dropout=0.2))
    config = TrainConfig(steps=9, batch_size=16, warmup_steps=2, checkpoint_every=3, augment="dihedral", seed=11)

    straight = _model(data)
    fit(straight, prepare_tier(straight, tier_cfg), data, config, progress=False)

    interrupted = _model(data)
    result = fit(
        interrupted,
        prepare_tier(interrupted, tier_cfg),
        data,
        config,
        checkpoint_dir=tmp_path,
        stop_at_step=5,
        progress=False,
    )
    assert result.interrupted and result.steps_done == 5
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000003", "step_0000005"]

    resumed = _model(data)  # a fresh process: new model object, same recipe
    result = fit(resumed, prepare_tier(resumed, tier_cfg), data, config, checkpoint_dir=tmp_path, progress=False)
    assert result.resumed_from == 5 and not result.interrupted

    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # and training really changed the weights
    assert not torch.equal(
        a["blocks.0.attn.W_Q" if tier == "full" else "head.W_H"],
        _model(data).state_dict()["blocks.0.attn.W_Q" if tier == "full" else "head.W_H"],
    )


def test_resume_from_another_models_checkpoint_is_refused(tmp_path, data):
    config = TrainConfig(steps=4, batch_size=8, checkpoint_every=2)
    first = _model(data)
    fit(
        first,
        prepare_tier(first, TierConfig("full")),
        data,
        config,
        checkpoint_dir=tmp_path,
        stop_at_step=2,
        progress=False,
    )
    other = _model(data, d_model=48, d_head=12)
    with pytest.raises(ResumeMismatchError, match="another model or recipe.*d_model"):
        fit(other, prepare_tier(other, TierConfig("full")), data, config, checkpoint_dir=tmp_path, progress=False)
    # another tier on the same model is another run too
    same_arch = _model(data)
    with pytest.raises(ResumeMismatchError, match="trainable"):
        fit(
            same_arch,
            prepare_tier(same_arch, TierConfig("linear_probe")),
            data,
            config,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    # and so is another recipe
    longer = _model(data)
    with pytest.raises(ResumeMismatchError, match="recipe.steps"):
        fit(
            longer,
            prepare_tier(longer, TierConfig("full")),
            data,
            TrainConfig(steps=6, batch_size=8),
            checkpoint_dir=tmp_path,
            progress=False,
        )
    # a model of the same architecture with other weights (another source checkpoint) is another run
    other_weights = _model(data, seed=123)
    with pytest.raises(ResumeMismatchError, match="start_weights"):
        fit(
            other_weights,
            prepare_tier(other_weights, TierConfig("full")),
            data,
            config,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    # and so is other data of the same size and names
    other_data = procedural_set(40, seed=6)
    same = _model(data)
    with pytest.raises(ResumeMismatchError, match="data.content"):
        fit(same, prepare_tier(same, TierConfig("full")), other_data, config, checkpoint_dir=tmp_path, progress=False)
    # resume=False starts over instead
    fresh = _model(data)
    result = fit(
        fresh,
        prepare_tier(fresh, TierConfig("linear_probe")),
        data,
        config,
        checkpoint_dir=tmp_path / "new",
        resume=False,
        progress=False,
    )
    assert result.resumed_from is None


def test_checkpoint_holds_safetensors_and_a_json_card(tmp_path, data):
    model = _model(data)
    config = TrainConfig(steps=4, batch_size=8, checkpoint_every=2, keep_checkpoints=1)
    fit(
        model,
        prepare_tier(model, TierConfig("full")),
        data,
        config,
        checkpoint_dir=tmp_path,
        card={"data": "procedural"},
        progress=False,
    )
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000004"]
    last = latest_checkpoint(tmp_path)
    assert {p.name for p in last.iterdir()} == {
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
        "manifest.json",
    }
    meta = json.loads((last / "trainer.json").read_text())
    assert meta["step"] == 4 and meta["card"] == {"data": "procedural"}
    assert meta["fingerprint"]["model_config"]["d_model"] == 32
    assert not list(tmp_path.glob(".tmp_*"))


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine():
    config = TrainConfig(steps=20, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_factor(s, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(19, config) == pytest.approx(0.1)
    for s in range(3, 20):  # closed form, independently: step s has taken s + 1 optimizer steps
        progress = (s + 1 - 4) / (20 - 4)
        assert lr_factor(s, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert [lr_factor(s, config) for s in range(3, 20)] == sorted(
        (lr_factor(s, config) for s in range(3, 20)), reverse=True
    )


def test_batches_cover_each_epoch_exactly_once():
    n, batch = 10, 4
    rows = torch.cat([batch_indices(n, batch, step, seed=3) for step in range(5)])  # 20 = two epochs
    assert sorted(rows[:10].tolist()) == list(range(10)) and sorted(rows[10:].tolist()) == list(range(10))
    assert not torch.equal(rows[:10], rows[10:])  # reshuffled per epoch
    assert torch.equal(batch_indices(n, batch, 2, seed=3), batch_indices(n, batch, 2, seed=3))


def test_head_that_does_not_match_the_labels_is_refused(tiny_vit, data):
    model = tiny_vit  # 5 classes; data has 4
    with pytest.raises(HeadMismatchError, match="5 outputs but .* need 4"):
        fit(model, prepare_tier(model, TierConfig("full")), data, TrainConfig(steps=1), progress=False)
    with pytest.raises(HeadMismatchError, match="with_new_head"):
        fine_tune(model, data, TierConfig("full"), TrainConfig(steps=1), new_head=False, progress=False)


def test_labels_outside_the_class_names_are_refused():
    images = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    with pytest.raises(TrainingDataError, match=r"labels span \[0, 3\] but there are 2 class names"):
        ArrayDataset(images, torch.tensor([0, 1, 2, 3]), ["a", "b"], "classification")


def test_regression_targets_with_nan_are_refused():
    images = torch.zeros(3, 32, 32, 3, dtype=torch.uint8)
    targets = torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 1.0]])
    with pytest.raises(TrainingDataError, match=r"1 regression targets are NaN.*\['t0'\].*first rows \[1\]"):
        ArrayDataset(images, targets, ["t0", "t1"], "regression")


def test_an_empty_training_split_is_refused(data):
    with pytest.raises(TrainingDataError, match="empty"):
        ArrayDataset(
            torch.zeros(0, 32, 32, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), ["a"], "classification"
        )
    with pytest.raises(TrainingDataError, match="empty"):
        data.subset([])


def test_bad_train_configs_are_refused():
    for kwargs in (
        dict(steps=0),
        dict(steps=5, warmup_steps=6),
        dict(steps=5, batch_size=0),
        dict(steps=5, augment="crop"),
        dict(steps=5, clip_norm=0.0),
        dict(steps=5, min_lr_ratio=2.0),
    ):
        with runtime_checks_off(), pytest.raises(ValueError):
            TrainConfig(**kwargs)


def test_regression_training_lowers_the_mse(tiny_vit):
    """A regression head on a tiny model learns a target that is a function of the image (mean brightness)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 32, 32, 3), generator=g, dtype=torch.uint8)
    level = torch.randint(0, 120, (48, 1, 1, 1), generator=g)
    images = (images // 2 + level).to(torch.uint8)
    target = images.float().mean(dim=(1, 2, 3))
    target = ((target - target.mean()) / target.std())[:, None]
    data = ArrayDataset(images, target, ["brightness"], "regression")
    result = fine_tune(
        tiny_vit,
        data,
        TierConfig("full", head_lr=1e-2, backbone_lr=1e-3),
        TrainConfig(steps=30, batch_size=16),
        val=data,
        progress=False,
    )
    assert result.model.card["task"] == "regression"
    assert result.evaluation.mean_mse < 0.5 and result.evaluation.pearson_r[0] > 0.7
