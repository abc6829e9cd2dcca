"""Hypothesis properties of the exact engine: any head set, any ablation, any batching equals the
naive hooked forward; zero ablation is additive in the weights it silences."""

from __future__ import annotations

import copy

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation import MeanAblation, ResampleAblation, ablated_output, ablation_sweep

MODEL = tiny_model(seed=11)
IMAGES = seeded_images(6, 32, seed=12)
ABLATIONS = {
    "zero": "zero",
    "mean": MeanAblation.from_reference(MODEL, seeded_images(4, 32, seed=13)),
    "resample": ResampleAblation(seed=4),
    "uniform_attention": "uniform_attention",
}

head_sets = st.sets(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=6).map(sorted)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    heads=head_sets,
    ablation=st.sampled_from(sorted(ABLATIONS)),
    output=st.sampled_from(["logits", "features", "tokens"]),
    batch=st.integers(2, 6),
)
def test_exact_output_equals_naive_for_any_head_set(heads, ablation, output, batch):
    images = IMAGES[:batch]
    exact = ablated_output(MODEL, images, heads, ABLATIONS[ablation], output=output)
    naive = ablated_output(MODEL, images, heads, ABLATIONS[ablation], output=output, engine="naive")
    torch.testing.assert_close(exact, naive, atol=1e-4, rtol=0)


@settings(max_examples=15, deadline=None)
@given(
    cells=st.lists(head_sets, min_size=1, max_size=5, unique_by=tuple),
    batch_size=st.integers(1, 6),
    max_batch=st.integers(1, 30),
)
def test_sweep_tables_do_not_depend_on_batching(cells, batch_size, max_batch):
    labels = torch.arange(6) % 5
    reference = ablation_sweep(
        MODEL, IMAGES, cells, "cross_entropy", targets=labels, batch_size=6, progress=False, engine="naive"
    )
    table = ablation_sweep(
        MODEL,
        IMAGES,
        cells,
        "cross_entropy",
        targets=labels,
        batch_size=batch_size,
        max_batch=max_batch,
        progress=False,
    )
    np.testing.assert_allclose(table.ablated, reference.ablated, atol=1e-4, rtol=0)
    assert table.clean == reference.clean or abs(table.clean - reference.clean) < 1e-6


@settings(max_examples=20, deadline=None)
@given(heads=head_sets)
def test_zero_ablation_equals_silencing_the_value_weights(heads):
    edited = copy.deepcopy(MODEL)
    with torch.no_grad():
        for layer, head in heads:
            edited.blocks[layer].attn.W_V[head] = 0
            edited.blocks[layer].attn.b_V[head] = 0
        torch.testing.assert_close(ablated_output(MODEL, IMAGES, heads), edited(IMAGES), atol=1e-4, rtol=0)
