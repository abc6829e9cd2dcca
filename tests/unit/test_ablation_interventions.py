"""Head ablations as hooks, checked against independent references (weight edits, closed forms)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.ablation import (
    AblationError,
    EmptyReferenceError,
    HeadIndexError,
    MeanAblation,
    ResampleAblation,
    UniformAttention,
    ablated,
    ablated_output,
    head_ablation_hooks,
    parse_heads,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def images():
    return seeded_images(4, 32, seed=2)


def run_hooked(model, images, hooks):
    with torch.no_grad():
        return model.run_with_hooks(images, fwd_hooks=hooks)


@pytest.mark.parametrize("heads", [[(0, 1)], [(1, 0), (1, 3)], [(0, 2), (2, 1)]])
def test_zero_ablation_equals_zeroing_value_weights_and_bias(model, images, heads):
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            edited.blocks[layer].attn.W_V[head] = 0
            edited.blocks[layer].attn.b_V[head] = 0
        reference = edited(images)
    hooked = run_hooked(model, images, head_ablation_hooks(model, heads, "zero"))
    fast = ablated_output(model, images, heads, "zero")
    assert not torch.allclose(reference, model(images), atol=1e-3)  # the edit matters
    torch.testing.assert_close(hooked, reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast, reference, atol=ATOL, rtol=0)


def test_uniform_attention_equals_zeroing_query_weights(model, images):
    """q = 0 makes every score 0, so the pattern is 1/P everywhere (REFERENCE §4)."""
    heads = [(0, 3), (2, 0)]
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            edited.blocks[layer].attn.W_Q[head] = 0
            edited.blocks[layer].attn.b_Q[head] = 0
        reference = edited(images)
    torch.testing.assert_close(
        run_hooked(model, images, head_ablation_hooks(model, heads, UniformAttention())), reference, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(ablated_output(model, images, heads, "uniform_attention"), reference, atol=ATOL, rtol=0)


def test_no_heads_changes_nothing(model, images):
    clean = model(images)
    assert head_ablation_hooks(model, [], "zero") == []
    torch.testing.assert_close(run_hooked(model, images, head_ablation_hooks(model, None)), clean, atol=0, rtol=0)
    # the exact engine recomputes every layer from layer 0 for an empty set: it must reproduce the clean run
    for output in ("logits", "features", "tokens"):
        torch.testing.assert_close(
            ablated_output(model, images, [], output=output), model(images, return_type=output), atol=ATOL, rtol=0
        )


def test_mean_ablation_with_reference_of_the_same_repeated_image_is_a_no_op(model):
    one = seeded_images(1, 32, seed=7)
    batch = one.expand(3, -1, -1, -1).clone()
    mean = MeanAblation.from_reference(model, batch, batch_size=2)
    heads = [(0, 0), (1, 2), (2, 3)]
    clean = model(batch)
    torch.testing.assert_close(
        run_hooked(model, batch, head_ablation_hooks(model, heads, mean)), clean, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(ablated_output(model, batch, heads, mean), clean, atol=ATOL, rtol=0)
    # ... and is not a no-op on other images
    other = seeded_images(3, 32, seed=8)
    assert not torch.allclose(ablated_output(model, other, heads, mean), model(other), atol=1e-3)


def test_mean_ablation_replaces_z_by_the_reference_mean_per_position(model):
    reference = seeded_images(5, 32, seed=3)
    mean = MeanAblation.from_reference(model, reference, batch_size=2)
    _, cache = model.run_with_cache(reference)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(mean.mean_z[layer], cache["z", layer].mean(0), atol=1e-6, rtol=0)
    seen = {}
    hooks = head_ablation_hooks(model, [(1, 2)], mean) + [
        ("blocks.1.attn.hook_z", lambda z, hook: seen.setdefault("z", z))
    ]
    run_hooked(model, seeded_images(2, 32, seed=4), hooks)
    torch.testing.assert_close(seen["z"][:, :, 2], cache["z", 1].mean(0)[:, 2].expand(2, -1, -1), atol=1e-6, rtol=0)


def test_resample_takes_z_from_the_drawn_source_images(model, images):
    source = seeded_images(6, 32, seed=5)
    ablation = ResampleAblation(source, seed=3)
    index = ablation.source_indices(images.shape[0])
    _, source_cache = model.run_with_cache(source)
    seen = {}
    hooks = head_ablation_hooks(model, [(2, 1)], ablation, images) + [
        ("blocks.2.attn.hook_z", lambda z, hook: seen.setdefault("z", z))
    ]
    run_hooked(model, images, hooks)
    torch.testing.assert_close(seen["z"][:, :, 1], source_cache["z", 2][index][:, :, 1], atol=1e-5, rtol=0)


def test_resample_within_the_batch_is_a_seeded_derangement():
    ablation = ResampleAblation(seed=11)
    for batch in (2, 3, 8, 31):
        index = ablation.source_indices(batch, batch_index=batch)
        assert sorted(index.tolist()) == list(range(batch))
        assert (index != torch.arange(batch)).all()
        assert torch.equal(index, ResampleAblation(seed=11).source_indices(batch, batch_index=batch))
    assert not torch.equal(ResampleAblation(seed=1).source_indices(16), ResampleAblation(seed=2).source_indices(16))


def test_context_manager_applies_and_removes_the_hooks(model, images):
    clean = model(images)
    with ablated(model, [(0, 1)], "zero"):
        inside = model(images)
    torch.testing.assert_close(inside, ablated_output(model, images, [(0, 1)]), atol=ATOL, rtol=0)
    torch.testing.assert_close(model(images), clean, atol=0, rtol=0)


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "heads, message",
    [
        ([(3, 0)], "layer 3 is out of range"),
        ([(-1, 0)], "layer -1 is out of range"),
        ([(0, 4)], "head 4 is out of range in layer 0"),
        ({5: [0]}, "layer 5 is out of range"),
        ({0: "some"}, "'all'"),
        ([(0, 1.5)], "must be an int"),
        ([(0,)], "pair"),
        ("L0H1", "heads must be"),
    ],
)
def test_bad_heads_get_a_clear_error(model, heads, message):
    with runtime_checks_off(), pytest.raises(AblationError, match=message):
        parse_heads(model, heads)


def test_out_of_range_is_an_index_error_too(model):
    with pytest.raises(IndexError):
        head_ablation_hooks(model, [(0, 9)])
    with pytest.raises(HeadIndexError):
        ablated_output(model, seeded_images(1, 32), [(7, 0)])


def test_empty_reference_sets_are_rejected(model):
    with pytest.raises(EmptyReferenceError, match="non-empty"):
        MeanAblation.from_reference(model, torch.zeros(0, 3, 32, 32))
    with pytest.raises(EmptyReferenceError, match="non-empty"):
        ResampleAblation(torch.zeros(0, 3, 32, 32))
    with pytest.raises(EmptyReferenceError, match="at least 2"):
        head_ablation_hooks(model, [(0, 0)], ResampleAblation(), seeded_images(1, 32))


def test_ablations_by_name(model, images):
    with pytest.raises(AblationError, match="MeanAblation.from_reference"):
        head_ablation_hooks(model, [(0, 0)], "mean")
    with pytest.raises(AblationError, match="unknown ablation"):
        head_ablation_hooks(model, [(0, 0)], "silence")
    with pytest.raises(AblationError, match="pass images"):
        head_ablation_hooks(model, [(0, 0)], "resample")
    assert len(head_ablation_hooks(model, [(0, 0), (0, 1), (2, 2)], "uniform")) == 2


def test_mean_ablation_must_fit_the_model(model):
    other = tiny_model(seed=0, n_heads=2, d_head=16)
    mean = MeanAblation.from_reference(other, seeded_images(2, 32))
    with pytest.raises(AblationError, match="do not fit"):
        head_ablation_hooks(model, [(0, 0)], mean)
