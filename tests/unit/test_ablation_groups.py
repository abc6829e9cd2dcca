"""Group ablations: layers, named sets, pair interactions, the pruning curve; checked against hooked forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.ablation import (
    AblationError,
    head_ablation_hooks,
    head_set_ablation,
    head_sweep,
    layer_ablation,
    pair_interactions,
    pruning_curve,
)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=6)
    images = seeded_images(6, 32, seed=7)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return model, images, labels


def hooked_ce(model, images, labels, heads, ablation="zero"):
    with torch.no_grad():
        logits = model.run_with_hooks(images, fwd_hooks=head_ablation_hooks(model, heads, ablation, images))
    return F.cross_entropy(logits, labels).item()


def test_layer_ablation_equals_hooked_forward(setup):
    model, images, labels = setup
    table = layer_ablation(model, images, "cross_entropy", targets=labels, progress=False)
    assert [c.name for c in table.cells] == ["layer 0", "layer 1", "layer 2"]
    for layer in range(3):
        expected = hooked_ce(model, images, labels, {layer: "all"})
        assert table.ablated[layer] == pytest.approx(expected, abs=1e-5)


def test_named_head_sets(setup):
    model, images, labels = setup
    sets = {"early": [(0, 0), (0, 3)], "mixed": [(0, 1), (2, 2)], "nothing": []}
    table = head_set_ablation(model, images, sets, "cross_entropy", targets=labels, progress=False, batch_size=4)
    assert [c.name for c in table.cells] == list(sets)
    for i, heads in enumerate(sets.values()):
        assert table.ablated[i] == pytest.approx(hooked_ce(model, images, labels, heads), abs=1e-5)
    with pytest.raises(AblationError, match="at least one"):
        head_set_ablation(model, images, {}, "cross_entropy", targets=labels)


def test_pair_interaction_is_pair_effect_minus_single_effects(setup):
    model, images, labels = setup
    pairs = pair_interactions(model, images, "cross_entropy", targets=labels, layers=[1], progress=False)
    frame = pairs.to_frame()
    assert len(frame) == 6  # C(4, 2)
    clean = hooked_ce(model, images, labels, [])
    row = frame[(frame.head_a == 1) & (frame.head_b == 3)].iloc[0]
    ea = hooked_ce(model, images, labels, [(1, 1)]) - clean
    eb = hooked_ce(model, images, labels, [(1, 3)]) - clean
    eab = hooked_ce(model, images, labels, [(1, 1), (1, 3)]) - clean
    assert row.interaction == pytest.approx(eab - ea - eb, abs=1e-5)
    matrix = pairs.matrix(1)
    assert matrix[1, 3] == matrix[3, 1] == pytest.approx(row.interaction)
    assert np.isnan(np.diag(matrix)).all()
    with pytest.raises(KeyError):
        pairs.matrix(0)


def test_pruning_curve_in_a_given_order(setup):
    model, images, labels = setup
    order = [(2, 1), (0, 0), (1, 3), (1, 0)]
    curve = pruning_curve(model, images, "cross_entropy", targets=labels, order=order, progress=False)
    assert curve.n_removed.tolist() == [0, 1, 2, 3, 4]
    for k in range(5):
        assert curve.metric_values[k] == pytest.approx(hooked_ce(model, images, labels, order[:k]), abs=1e-5)
    assert curve.delta[0] == pytest.approx(0, abs=1e-6)
    assert curve.to_frame()["last_removed"].tolist() == ["", "L2H1", "L0H0", "L1H3", "L1H0"]


def test_pruning_curve_orders_by_exact_or_estimated_importance(setup):
    model, images, labels = setup
    sweep = head_sweep(model, images, "cross_entropy", targets=labels, progress=False)
    curve = pruning_curve(model, images, "cross_entropy", targets=labels, steps=[0, 6, 12], progress=False)
    expected = [sweep.heads[i] for i in np.argsort(np.abs(sweep.delta), kind="stable")]
    assert curve.order == expected
    assert np.all(np.diff(curve.importance) >= 0)
    assert curve.metric_values[-1] == pytest.approx(
        hooked_ce(model, images, labels, {0: "all", 1: "all", 2: "all"}), abs=1e-5
    )
    estimated = pruning_curve(
        model, images, "cross_entropy", targets=labels, order="estimate", steps=[3], progress=False
    )
    assert len(estimated.order) == 12 and estimated.ordered_by == "|estimate effect|"
    with pytest.raises(AblationError, match="steps"):
        pruning_curve(model, images, "cross_entropy", targets=labels, order=[(0, 0)], steps=[2])
    with pytest.raises(AblationError, match="at most once"):
        pruning_curve(model, images, "cross_entropy", targets=labels, order=[(0, 0), (0, 0)])
    with runtime_checks_off(), pytest.raises(AblationError, match="order must be"):
        pruning_curve(model, images, "cross_entropy", targets=labels, order="random")
