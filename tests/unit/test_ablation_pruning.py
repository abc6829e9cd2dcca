"""Physically pruned models: same outputs as zero ablation, working hooks, smaller weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech import HookedViT
from vitmech.analysis.ablation import (
    ablated_output,
    head_ablation_hooks,
    head_sweep,
    measure_pruning,
    naive_head_sweep,
    prune_heads,
)

HEADS = [(0, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7)


@pytest.fixture(scope="module")
def images():
    return seeded_images(4, 32, seed=3)


def test_pruned_model_computes_what_zero_ablation_computes(model, images):
    pruned = prune_heads(model, HEADS)
    assert type(pruned) is HookedViT
    assert pruned.cfg.n_heads_per_layer == (3, 2, 0)
    assert pruned.card["kept_heads"] == [[0, 2, 3], [1, 3], []]
    assert pruned.blocks[1].attn.W_O.shape == (2, 8, 32)
    torch.testing.assert_close(pruned.blocks[0].attn.W_Q, model.blocks[0].attn.W_Q[[0, 2, 3]])
    with torch.no_grad():
        expected = model.run_with_hooks(images, fwd_hooks=head_ablation_hooks(model, HEADS))
        torch.testing.assert_close(pruned(images), expected, atol=1e-5, rtol=0)
    assert sorted(map(tuple, pruned.card["pruned_heads"])) == HEADS
    removed_params = len(HEADS) * (3 * 32 * 8 + 3 * 8 + 8 * 32)
    assert model.n_params - pruned.n_params == removed_params


def test_pruned_model_keeps_its_hooks(model, images):
    pruned = prune_heads(model, HEADS)
    _, cache = pruned.run_with_cache(images)
    assert cache["z", 0].shape == (4, 17, 3, 8)
    assert cache["z", 2].shape == (4, 17, 0, 8)
    assert cache["pattern", 1].shape == (4, 2, 17, 17)
    # a hook on the pruned model still changes its forward pass, and ablations address its own heads
    with torch.no_grad():
        hooked = pruned.run_with_hooks(images, fwd_hooks=head_ablation_hooks(pruned, [(0, 1)]))
        twice = prune_heads(model, HEADS + [(0, 2)])(images)
    torch.testing.assert_close(hooked, twice, atol=1e-5, rtol=0)
    assert not torch.allclose(hooked, pruned(images), atol=1e-4)


def test_pruning_composes(model, images):
    once = prune_heads(prune_heads(model, [(0, 1)]), [(0, 1)])  # second call: index 1 of the pruned layer = head 2
    direct = prune_heads(model, [(0, 1), (0, 2)])
    assert once.card["kept_heads"][0] == direct.card["kept_heads"][0] == [0, 3]
    with torch.no_grad():
        torch.testing.assert_close(once(images), direct(images), atol=1e-6, rtol=0)


def test_pruned_model_saves_and_loads(model, images, tmp_path):
    pruned = prune_heads(model, HEADS)
    loaded = HookedViT.from_pretrained(str(pruned.save_pretrained(tmp_path / "pruned")))
    assert loaded.cfg == pruned.cfg and loaded.card["kept_heads"] == pruned.card["kept_heads"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), pruned(images), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"\[3, 2, 0\] heads per layer"):
        _ = pruned.W_Q


def test_sweeps_run_on_pruned_models(model, images):
    pruned = prune_heads(model, HEADS)
    exact = head_sweep(pruned, images, "kl_to_clean", progress=False)
    naive = naive_head_sweep(pruned, images, "kl_to_clean", progress=False)
    assert len(exact.cells) == 5
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=1e-5)
    assert exact.grid("delta").shape == (3, 3)


def test_measure_pruning(model, images):
    labels = torch.tensor([0, 1, 2, 3])
    pruned = prune_heads(model, HEADS)
    report = measure_pruning(model, pruned, images, "cross_entropy", targets=labels, repeats=2, batch_size=3)
    expected = torch.nn.functional.cross_entropy(ablated_output(model, images, HEADS), labels).item()
    assert report.metric_after == pytest.approx(expected, abs=1e-5)
    assert report.metric_before == pytest.approx(
        torch.nn.functional.cross_entropy(model(images), labels).item(), abs=1e-6
    )
    assert report.n_heads_before == 12 and report.n_heads_after == 5
    assert report.speedup > 0 and report.seconds_per_image_after > 0
    assert report.to_frame().shape[0] == 1
    assert report.to_dict()["heads_removed"][0] == "L0H1"


def test_what_a_pruned_model_cannot_do(model):
    pruned = prune_heads(model, [(1, 1)])
    with pytest.raises(ValueError, match="per block"):
        _ = pruned.W_Q
    from vitmech import UnsupportedModelError
    from vitmech.loading import to_timm

    with pytest.raises(UnsupportedModelError, match="same number of heads in every layer"):
        to_timm(pruned)
    assert pruned.W_in.shape == model.W_in.shape  # MLP weights still stack
    with pytest.raises(IndexError, match="head 4 is out of range"):
        prune_heads(model, [(0, 4)])
