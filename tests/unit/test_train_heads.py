"""Head swaps and resolution changes give models that run, save, load and export like any other."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech import HookedViT
from vitmech.loading import to_timm
from vitmech.train import HeadMismatchError, check_head, interpolate_positions, with_image_size, with_new_head


def test_new_head_copies_the_backbone_and_has_the_new_size(tiny_vit, tmp_path):
    model = tiny_vit
    new = with_new_head(model, 3, ["a", "b", "c"], task="regression")
    assert new.cfg.n_classes == 3 and new.class_names == ["a", "b", "c"] and new.card["task"] == "regression"
    x = seeded_images(2, 32)
    with torch.no_grad():
        assert torch.equal(new(x, return_type="features"), model(x, return_type="features"))
        assert torch.equal(new(x), torch.zeros(2, 3))  # zero-initialised head
    torch.nn.init.normal_(new.head.W_H)
    reloaded = HookedViT.from_pretrained(str(new.save_pretrained(tmp_path / "m")))
    assert reloaded.cfg == new.cfg and reloaded.card["task"] == "regression"
    with torch.no_grad():
        assert torch.equal(reloaded(x), new(x))
        timm_model = to_timm(new).eval()
        assert (timm_model(x) - new(x)).abs().max() < 1e-5


def test_new_head_on_a_headless_model():
    headless = tiny_model(1, n_classes=0)
    new = with_new_head(headless, 2, init="trunc_normal")
    assert new.cfg.n_classes == 2 and new.head.W_H.abs().max() > 0
    with pytest.raises(HeadMismatchError, match="no head"):
        check_head(headless, 2)


def test_bad_head_requests_are_refused():
    with pytest.raises(HeadMismatchError, match="positive"):
        with_new_head(tiny_model(0), 0)
    with pytest.raises(HeadMismatchError, match="2 names for a head with 3"):
        with_new_head(tiny_model(0), 3, ["a", "b"])


def test_position_interpolation_matches_timm():
    from timm.layers import resample_abs_pos_embed

    w = torch.randn(1 + 16, 8, generator=torch.Generator().manual_seed(0))
    ours = interpolate_positions(w, 6)
    ref = resample_abs_pos_embed(
        w[None], new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1, interpolation="bicubic", antialias=False
    )[0]
    assert ours.shape == (37, 8) and torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(interpolate_positions(w, 4), w)


def test_with_image_size_keeps_every_other_weight():
    model = tiny_model(2)  # 32 px, patch 8: 4 x 4 grid
    big = with_image_size(model, 64)
    assert big.cfg.grid_size == 8 and big.preprocessing.image_size == 64 and big.pos_embed.W_pos.shape == (65, 32)
    a, b = model.state_dict(), big.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "pos_embed.W_pos")
    with torch.no_grad():
        assert big(seeded_images(1, 64)).shape == (1, 5)
    back = with_image_size(big, 32)
    assert back.pos_embed.W_pos.shape == model.pos_embed.W_pos.shape
