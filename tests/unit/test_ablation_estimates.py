"""Gradient estimates: attribution patching and Michel et al. importance, against exact effects and
an independent gate-gradient reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation import (
    HeadEstimates,
    MeanAblation,
    ResampleAblation,
    compare_estimates,
    estimate_head_effects,
    head_sweep,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


def test_attribution_matches_exact_effects_of_small_perturbations(model):
    """For a replacement z' = (1 + eps) z, the first-order estimate is exact up to O(eps^2)."""
    image = seeded_images(1, 32, seed=3)
    _, cache = model.run_with_cache(image)
    eps = 1e-2
    nudged = MeanAblation([cache["z", layer][0] * (1 + eps) for layer in range(3)], n_reference=1)
    label = torch.tensor([1])
    exact = head_sweep(model, image, "cross_entropy", nudged, targets=label, progress=False)
    estimate = estimate_head_effects(model, image, "cross_entropy", nudged, targets=label)
    approx = np.array([estimate.attribution[layer, head] for layer, head in exact.heads])
    assert np.abs(exact.delta).max() > 1e-4
    np.testing.assert_allclose(approx, exact.delta, rtol=0.05, atol=2e-6)


def test_michel_importance_is_the_gate_gradient(model):
    """I_h = mean_x |d m(x) / d xi_h| for a gate xi_h on the head's output (Michel et al. 2019), by hand."""
    images = seeded_images(3, 32, seed=8)
    labels = torch.tensor([0, 2, 4])
    est = estimate_head_effects(model, images, "cross_entropy", targets=labels, batch_size=2)
    reference = torch.zeros(3, 4)
    for i in range(3):
        gates = [torch.ones(4, requires_grad=True) for _ in range(3)]
        hooks = [
            (f"blocks.{layer}.attn.hook_z", lambda z, hook, g=gates[layer]: z * g[None, None, :, None])
            for layer in range(3)
        ]
        logits = model.run_with_hooks(images[i : i + 1], fwd_hooks=hooks)
        loss = torch.nn.functional.cross_entropy(logits, labels[i : i + 1])
        reference += torch.stack(torch.autograd.grad(loss, gates)).abs() / 3
    np.testing.assert_allclose(est.michel, reference.numpy(), rtol=1e-4, atol=1e-6)


def test_zero_ablation_attribution_and_michel_are_related(model):
    images = seeded_images(4, 32, seed=1)
    labels = torch.tensor([0, 1, 2, 3])
    single = estimate_head_effects(model, images[:1], "cross_entropy", targets=labels[:1])
    np.testing.assert_allclose(single.michel, np.abs(single.attribution), rtol=1e-5, atol=1e-7)
    many = estimate_head_effects(model, images, "cross_entropy", targets=labels, batch_size=3)
    assert (many.michel >= np.abs(many.attribution) - 1e-6).all()  # triangle inequality
    assert (many.michel > np.abs(many.attribution) + 1e-4).any()
    normalized = estimate_head_effects(model, images, "cross_entropy", targets=labels, normalize_michel=True)
    np.testing.assert_allclose(np.linalg.norm(normalized.michel, axis=1), 1.0, rtol=1e-6)


def test_estimates_of_no_op_ablations_are_zero(model):
    one = seeded_images(1, 32, seed=9).expand(3, -1, -1, -1).clone()
    labels = torch.tensor([1, 1, 1])
    for ablation in (MeanAblation.from_reference(model, one), ResampleAblation(one[:1], seed=0)):
        est = estimate_head_effects(model, one, "cross_entropy", ablation, targets=labels)
        assert np.abs(est.attribution).max() < 1e-6
        assert np.abs(est.michel).max() > 1e-3  # importance does not depend on the ablation
    kl = estimate_head_effects(model, one, "kl_to_clean")
    assert np.abs(kl.attribution).max() < 1e-6  # KL is at its minimum at the clean output


def test_uniform_attention_estimate_uses_the_mean_value(model):
    images = seeded_images(2, 32, seed=2)
    est = estimate_head_effects(model, images, "kl_to_clean", "uniform_attention")
    assert est.attribution.shape == (3, 4)
    ce = estimate_head_effects(model, images, "cross_entropy", "uniform_attention", targets=torch.tensor([0, 1]))
    zero = estimate_head_effects(model, images, "cross_entropy", "zero", targets=torch.tensor([0, 1]))
    assert not np.allclose(ce.attribution, zero.attribution)


def test_compare_estimates_spearman(model):
    images = seeded_images(4, 32, seed=5)
    labels = torch.tensor([0, 1, 2, 3])
    sweep = head_sweep(model, images, "cross_entropy", targets=labels, progress=False)
    grid = sweep.grid("delta")
    perfect = HeadEstimates(
        attribution=2 * grid,
        michel=-np.abs(grid),
        clean=sweep.clean,
        n_examples=4,
        metric={},
        ablation={},
        michel_normalized=False,
    )
    cmp = compare_estimates(sweep, perfect)
    assert cmp.spearman_attribution == pytest.approx(1.0)
    assert cmp.spearman_michel == pytest.approx(-1.0)
    real = compare_estimates(sweep, estimate_head_effects(model, images, "cross_entropy", targets=labels))
    assert -1 <= real.spearman_attribution <= 1
    assert list(real.to_frame().columns) == ["layer", "head", "exact_delta", "attribution", "abs_exact_delta", "michel"]
    assert set(real.to_dict()) == {"spearman_attribution", "spearman_michel", "n_heads"}
