"""The exact fast sweep against the naive reference (one full hooked forward per cell)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.ablation import (
    AblationError,
    Cell,
    MeanAblation,
    ResampleAblation,
    ablation_sweep,
    head_ablation_hooks,
    head_sweep,
    metric_from_function,
    naive_head_sweep,
)
from vitmech.analysis.ablation.sweep import plan_chunks

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def data():
    images = seeded_images(10, 32, seed=4)
    labels = torch.arange(10) % 5
    return images, labels


def ablations(model, images):
    return {
        "zero": "zero",
        "mean": MeanAblation.from_reference(model, seeded_images(6, 32, seed=9)),
        "resample": ResampleAblation(seed=2),
        "resample_source": ResampleAblation(seeded_images(7, 32, seed=10), seed=5),
        "uniform_attention": "uniform_attention",
    }


@pytest.mark.parametrize("name", ["zero", "mean", "resample", "resample_source", "uniform_attention"])
@pytest.mark.parametrize("metric", ["cross_entropy", "kl_to_clean"])
def test_exact_sweep_equals_naive_loop(model, data, name, metric):
    images, labels = data
    ablation = ablations(model, images)[name]
    kwargs = dict(targets=labels, batch_size=4, progress=False)
    exact = head_sweep(model, images, metric, ablation, max_batch=8, **kwargs)
    naive = naive_head_sweep(model, images, metric, ablation, **kwargs)
    assert len(exact.cells) == 12
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)
    np.testing.assert_allclose(exact.delta_se, naive.delta_se, atol=TOL, rtol=0)
    assert exact.clean == pytest.approx(naive.clean, abs=1e-6)
    assert np.abs(exact.delta).max() > 1e-3  # heads matter in this model: the comparison is not vacuous


def test_naive_loop_is_an_independent_per_head_forward(model, data):
    """The reference itself: mean metric of a hooked forward, computed by hand for one head."""
    images, labels = data
    naive = naive_head_sweep(
        model, images, "cross_entropy", heads=[(1, 2)], targets=labels, batch_size=3, progress=False
    )
    with torch.no_grad():
        logits = model.run_with_hooks(images, fwd_hooks=head_ablation_hooks(model, [(1, 2)], "zero"))
    by_hand = torch.nn.functional.cross_entropy(logits, labels).item()
    assert naive.ablated[0] == pytest.approx(by_hand, abs=1e-6)


@pytest.mark.parametrize("output", ["features", "tokens"])
def test_metrics_on_features_and_on_all_tokens(model, data, output):
    """A tokens metric reads every position, so the last layer is computed in full (no CLS-only shortcut)."""
    images, _ = data
    if output == "features":
        metric = metric_from_function(lambda f: f[:, :3].sum(-1), name="f3", output="features")
    else:
        metric = metric_from_function(lambda t: t[:, 5:, 0].mean(-1), name="patch_mean", output="tokens")
    exact = head_sweep(model, images, metric, batch_size=5, progress=False)
    naive = naive_head_sweep(model, images, metric, batch_size=5, progress=False)
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)
    assert np.abs(exact.delta[-4:]).max() > 1e-4  # last-layer heads change the metric


def test_groups_across_layers_and_empty_cells(model, data):
    images, labels = data
    cells = [
        Cell("none", ()),
        [(0, 1), (2, 3)],
        [(1, 0), (1, 1), (1, 2)],
        {0: "all", 1: [3], 2: [0, 2]},
        [(2, 0)],
    ]
    for ablation in ("zero", "uniform_attention", ResampleAblation(seed=1)):
        exact = ablation_sweep(
            model, images, cells, "cross_entropy", ablation, targets=labels, batch_size=4, progress=False
        )
        naive = ablation_sweep(
            model,
            images,
            cells,
            "cross_entropy",
            ablation,
            targets=labels,
            batch_size=4,
            progress=False,
            engine="naive",
        )
        np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)
        assert abs(exact.delta[0]) < 1e-6  # ablating nothing changes nothing
        assert exact.cells[1].name == "L0H1+L2H3"


def test_stacking_variants_does_not_change_results(model, data):
    images, labels = data
    one_at_a_time = head_sweep(
        model, images, "cross_entropy", targets=labels, batch_size=4, max_batch=4, progress=False
    )
    stacked = head_sweep(model, images, "cross_entropy", targets=labels, batch_size=4, max_batch=64, progress=False)
    np.testing.assert_allclose(one_at_a_time.ablated, stacked.ablated, atol=1e-6, rtol=0)


def test_result_table_grid_and_layer_summary(model, data):
    images, labels = data
    result = head_sweep(model, images, "cross_entropy", targets=labels, layers=[0, 2], batch_size=10, progress=False)
    frame = result.to_frame()
    assert list(frame.columns) == ["cell", "layer", "head", "clean", "ablated", "delta", "pct_change", "delta_se"]
    assert frame["layer"].tolist() == [0] * 4 + [2] * 4
    grid = result.grid("pct_change")
    assert grid.shape == (3, 4) and np.isnan(grid[1]).all()
    for row in frame.itertuples():
        assert grid[row.layer, row.head] == pytest.approx(100 * (row.ablated - row.clean) / abs(row.clean))
    # delta_se: standard error of per-example effects, recomputed by hand for one head
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(model(images), labels, reduction="none")
        ablated = torch.nn.functional.cross_entropy(
            model.run_with_hooks(images, fwd_hooks=head_ablation_hooks(model, [(2, 1)])), labels, reduction="none"
        )
    d = (ablated - clean).double()
    assert frame.set_index("cell").loc["L2H1", "delta_se"] == pytest.approx(float(d.std() / len(d) ** 0.5), rel=1e-4)
    summary = result.layer_summary()
    assert summary["layer"].tolist() == [0, 2]
    assert summary["mean_pct_change"].iloc[1] == pytest.approx(np.nanmean(grid[2]))
    assert summary["std_pct_change"].iloc[1] == pytest.approx(np.nanstd(grid[2], ddof=1))
    d = result.to_dict()
    assert len(d["grid_pct_change"]) == 3 and len(d["rows"]) == 8


def test_plan_chunks_groups_by_start_layer_and_balances():
    cells = [Cell(f"c{i}", ((i // 5, 0),)) for i in range(10)] + [Cell("late", ((3, 1),))]
    chunks = plan_chunks(cells, 4)
    assert chunks == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9], [10]]


def test_bad_sweep_arguments(model, data):
    images, labels = data
    with pytest.raises(AblationError, match="non-empty batch"):
        head_sweep(model, images[:0], "cross_entropy", targets=labels[:0], progress=False)
    with pytest.raises(AblationError, match="heads or layers"):
        head_sweep(model, images, "kl", heads=[(0, 0)], layers=[0], progress=False)
    with pytest.raises(AblationError, match="unique"):
        ablation_sweep(model, images, [Cell("a", ()), Cell("a", ((0, 0),))], "kl", progress=False)
    with runtime_checks_off(), pytest.raises(AblationError, match="engine"):
        head_sweep(model, images, "kl", engine="fast", progress=False)
    with pytest.raises(AblationError, match="batch_size"):
        head_sweep(model, images, "kl", batch_size=0, progress=False)
    with pytest.raises(IndexError, match="layer 3 is out of range"):
        head_sweep(model, images, "kl", layers=[3], progress=False)
    with pytest.raises(ValueError, match="one row per image"):
        head_sweep(model, images, "cross_entropy", targets=labels[:3], progress=False)


def test_frames_are_plain_tables(model, data):
    images, labels = data
    table = ablation_sweep(model, images[:4], [[(0, 0)]], "kl", progress=False)
    assert isinstance(table.to_frame(), pd.DataFrame)
    assert table.effect("L0H0") == pytest.approx(table.delta[0])


def test_batch_bounds_cover_every_image_once_and_merge_a_too_small_last_batch():
    from vitmech.batching import batch_bounds

    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4, 2) == [(0, 4), (4, 9)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 8), (8, 9)]
    assert batch_bounds(1, 4, 2) == [(0, 1)]
    for n in range(1, 30):
        for size in range(2, 8):
            bounds = batch_bounds(n, size, 2)
            covered = [i for start, stop in bounds for i in range(start, stop)]
            assert covered == list(range(n))
            assert len(bounds) == 1 or all(stop - start >= 2 for start, stop in bounds)


def test_resample_within_a_ragged_batch_of_one_is_merged_not_a_crash(model):
    """5 images at batch 4 would leave a last batch of 1, which has no other example to resample from."""
    images = seeded_images(5, 32, seed=11)
    labels = torch.arange(5) % 5
    kwargs = dict(targets=labels, batch_size=4, progress=False, heads=[(0, 1), (1, 2)])
    exact = head_sweep(model, images, "cross_entropy", ResampleAblation(seed=1), **kwargs)
    naive = naive_head_sweep(model, images, "cross_entropy", ResampleAblation(seed=1), **kwargs)
    np.testing.assert_allclose(exact.ablated, naive.ablated, atol=TOL, rtol=0)


def test_resample_within_the_batch_of_a_single_image_fails_before_any_compute(model):
    from vitmech.analysis.ablation import EmptyReferenceError

    with pytest.raises(EmptyReferenceError, match="at least 2 images"):
        head_sweep(model, seeded_images(1, 32, seed=1), "kl_to_clean", ResampleAblation(), progress=False)
    with pytest.raises(EmptyReferenceError, match="batches of 1"):
        head_sweep(model, seeded_images(4, 32, seed=1), "kl_to_clean", ResampleAblation(), batch_size=1, progress=False)
