"""The attention-supervised tier: its map, its gradient, and what it buys over full fine-tuning."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import randomize_hooked_, tiny_config
from tests.helpers.typecheck import runtime_checks_off
from vitmech import HookedViT
from vitmech.analysis.alignment import RegionMasks, alignment_scores, cls_attention_grid, head_mean_grid
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.rollout import rollout
from vitmech.train import ArrayDataset, TierConfig, TrainConfig, fine_tune
from vitmech.train.attention_supervision import (
    AttentionSupervision,
    alignment_loss,
    fine_tune_attention_supervised,
    patch_targets,
    supervised_forward,
)
from vitmech.train.data import to_model_input


def grey_squares(n: int, seed: int) -> tuple[ArrayDataset, RegionMasks]:
    """32 px noise images whose class is a red or blue tint of the whole image; an annotated grey 8 px square
    sits on a random patch. The square says nothing about the class, so the task alone need not look at it."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    tint = torch.tensor([[60.0, 0.0, 0.0], [0.0, 0.0, 60.0]])
    images = (torch.rand(n, 32, 32, 3, generator=g) * 120 + tint[labels][:, None, None]).to(torch.uint8)
    masks = torch.zeros(n, 1, 32, 32, dtype=torch.bool)
    corners = torch.randint(0, 4, (n, 2), generator=g) * 8
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, y : y + 8, x : x + 8] = 90
        masks[i, 0, y : y + 8, x : x + 8] = True
    return ArrayDataset(images, labels, ["red", "blue"], "classification"), RegionMasks(masks, ("square",)).with_union()


def _model() -> HookedViT:
    model = HookedViT(tiny_config(n_layers=2, n_heads=2, n_classes=2))
    model.init_weights(0)
    return model.eval()


def _held_out_iou(model: HookedViT, data: ArrayDataset, regions: RegionMasks) -> float:
    x = to_model_input(data.images, model.preprocessing)
    maps = head_mean_grid(cls_attention_grid(model, collect_patterns(model, x, progress=False)))[:, -1]
    return alignment_scores(maps, regions).per_image("iou", "union").mean().item()


def test_supervised_tier_raises_held_out_iou_over_full_fine_tuning() -> None:
    model = _model()
    train, train_regions = grey_squares(128, seed=0)
    test, test_regions = grey_squares(64, seed=1)
    config = TrainConfig(steps=30, batch_size=16, warmup_steps=3, seed=0)
    tier = TierConfig("full", head_lr=1e-3, backbone_lr=1e-3)
    full = fine_tune(model, train, tier, config, progress=False)
    supervised = fine_tune_attention_supervised(
        model, train, train_regions, AttentionSupervision(weight=1.0), config, tier=tier, progress=False
    )
    before = _held_out_iou(model, test, test_regions)
    iou_full = _held_out_iou(full.model, test, test_regions)
    iou_supervised = _held_out_iou(supervised.model, test, test_regions)
    assert iou_supervised > iou_full + 0.3, (before, iou_full, iou_supervised)
    assert supervised.extra["tier_name"] == "attention_supervised"
    assert supervised.train_result.steps_done == 30


def test_cls_map_matches_the_analysis_map_and_rollout_matches_rollout() -> None:
    model = randomize_hooked_(HookedViT(tiny_config(n_layers=2, n_heads=3)), seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    patterns = collect_patterns(model, x, progress=False)
    _, attention = supervised_forward(model, x, AttentionSupervision(layers=(0, 1), heads=(0, 2)))
    reference = cls_attention_grid(model, patterns)[:, :, [0, 2]].mean((1, 2)).flatten(1)
    assert torch.allclose(attention, reference / reference.sum(-1, keepdim=True), atol=1e-6)
    _, rolled = supervised_forward(model, x, AttentionSupervision(source="rollout"))
    expected = cls_attention_grid(model, rollout(patterns, tokens=[0]).row(0), rows="cls").flatten(1)
    assert torch.allclose(rolled, expected, atol=1e-6)


@pytest.mark.parametrize("source", ["cls", "rollout"])
def test_alignment_term_is_differentiable_through_the_explicit_path(source: str) -> None:
    model = randomize_hooked_(HookedViT(tiny_config(n_layers=2, n_heads=2)), seed=2).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    masks = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    masks[0, 0, :8, :16] = True
    masks[1, 0, 16:, 8:24] = True
    target = patch_targets(model, RegionMasks(masks, ("union",))).double()
    supervision = AttentionSupervision(source=source)  # type: ignore[arg-type]

    def term() -> torch.Tensor:
        return alignment_loss(supervised_forward(model, x, supervision)[1], target)

    weight = model.blocks[0].attn.W_Q
    (grad,) = torch.autograd.grad(term(), weight)
    assert grad.abs().sum() > 0
    direction = torch.randn_like(weight)
    eps = 1e-6
    with torch.no_grad():
        weight += eps * direction
        plus = term()
        weight -= 2 * eps * direction
        minus = term()
        weight += eps * direction
    numeric = (plus - minus) / (2 * eps)
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="weight"):
        AttentionSupervision(weight=-1)
    with runtime_checks_off(), pytest.raises(ValueError, match="source"):
        AttentionSupervision(source="gmar")  # type: ignore[arg-type]
    model = _model()
    train, regions = grey_squares(8, seed=0)
    with pytest.raises(ValueError, match="augment"):
        fine_tune_attention_supervised(
            model, train, regions, AttentionSupervision(), TrainConfig(steps=1, augment="hflip"), progress=False
        )
    with pytest.raises(ValueError, match="masks"):
        fine_tune_attention_supervised(
            model, train, regions.subset([0, 1]), AttentionSupervision(), TrainConfig(steps=1), progress=False
        )
    assert alignment_loss(torch.rand(2, 4), torch.zeros(2, 4)).item() == 0.0
