"""The exact sweep on ViT-B/16 (12 x 12 heads, 197 tokens) equals the naive hooked loop for a few heads."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from tests.helpers.models import randomize_source_, seeded_images
from vitmech import HookedViT
from vitmech.analysis.ablation import ablated_output, head_sweep, naive_head_sweep

HEADS = [(0, 3), (6, 7), (11, 11)]


@pytest.fixture(scope="module")
def vit_b16():
    source = randomize_source_(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10), seed=3)
    return HookedViT.from_timm(source.eval())


def test_exact_sweep_equals_naive_loop_on_vit_b16(vit_b16):
    images = seeded_images(2, 224, seed=4)
    labels = torch.tensor([3, 7])
    exact = head_sweep(vit_b16, images, "cross_entropy", heads=HEADS, targets=labels, progress=False)
    naive = naive_head_sweep(vit_b16, images, "cross_entropy", heads=HEADS, targets=labels, progress=False)
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=1e-4, rtol=0)
    assert np.abs(exact.delta).max() > 1e-3
    assert exact.grid("delta").shape == (12, 12)


def test_exact_logits_equal_naive_logits_on_vit_b16(vit_b16):
    """A head set across layers, with uniform attention (the pattern-hook reference vs mean-of-values)."""
    images = seeded_images(1, 224, seed=5)
    heads = [(4, 0), (4, 5), (9, 9)]
    exact = ablated_output(vit_b16, images, heads, "uniform_attention")
    naive = ablated_output(vit_b16, images, heads, "uniform_attention", engine="naive")
    assert (exact - vit_b16(images)).abs().max() > 1e-3
    torch.testing.assert_close(exact, naive, atol=1e-4, rtol=0)
