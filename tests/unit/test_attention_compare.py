"""Two-model comparison: streaming equals stacked computation, weight change and CKA against dense
references, seed 000's table, paired statistics against scipy, mismatched models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.attention import AttentionSettings, attention_metrics, collect_patterns
from vitmech.analysis.compare import (
    ModelMismatchError,
    check_comparable,
    compare_models,
    linear_cka,
    summarize_attention,
    weight_change,
)
from vitmech.analysis.rollout import RolloutSettings, rollout
from vitmech.analysis.stats import holm, paired_comparison


@pytest.fixture(scope="module")
def pair():
    return tiny_model(seed=0), tiny_model(seed=1), seeded_images(5, 32, seed=9)


@pytest.fixture(scope="module")
def comparison(pair):
    before, after, images = pair
    return compare_models(
        before,
        after,
        images,
        batch_size=2,
        settings=AttentionSettings(k=3),
        rollout_settings=RolloutSettings(alpha=0.6, head_fusion="max"),
        progress=False,
    )


def test_streamed_summary_equals_metrics_of_collected_patterns(pair):
    model, _, images = pair
    settings = AttentionSettings(k=3, renormalise=False, distance_renormalise=False)
    summary = summarize_attention(
        model,
        images,
        settings=settings,
        rollout_settings=RolloutSettings(0.7, "min", 0.3),
        batch_size=2,
        progress=False,
    )
    patterns = collect_patterns(model, images, progress=False)
    stacked = attention_metrics(patterns, model, settings, keep_cls_attention=True)
    for name in (
        "cls_entropy",
        "cls_entropy_head_mean",
        "cls_top_k",
        "cls_top_k_head_mean",
        "mean_distance",
        "cls_attention",
    ):
        torch.testing.assert_close(getattr(summary.metrics, name), getattr(stacked, name))
    torch.testing.assert_close(summary.rollout.rows, rollout(patterns, 0.7, "min", 0.3, tokens=[0]).rows)
    with torch.no_grad():
        torch.testing.assert_close(summary.outputs, model(images))


def test_comparison_of_a_model_with_itself_changes_nothing(pair):
    model, _, images = pair
    same = compare_models(model, model, images, batch_size=3, progress=False)
    assert (same.summary_table()["change"] == 0).all()
    assert (same.locality_table()["change_px"] == 0).all()
    assert torch.allclose(same.cka.cka, torch.ones(4), atol=1e-5)
    assert same.weights.qk.abs().max() == 0 and same.weights.ov.abs().max() == 0


def test_seed_000_table_holds_before_after_and_change(pair, comparison):
    before, after, images = pair
    table = comparison.summary_table()
    assert table["metric"].tolist()[0] == "CLS attention entropy, last layer (head-mean map)"
    alone = summarize_attention(
        after,
        images,
        settings=AttentionSettings(k=3),
        rollout_settings=RolloutSettings(alpha=0.6, head_fusion="max"),
        progress=False,
    )
    row = table.set_index("key").loc["cls_entropy_last_head_mean_map"]
    assert row["after"] == pytest.approx(float(alone.metrics.cls_entropy_head_mean[:, -1].mean()), rel=1e-6)
    assert row["change"] == pytest.approx(row["after"] - row["before"], abs=1e-6)
    rollout_row = table.set_index("key").loc["rollout_entropy"]
    assert rollout_row["after"] == pytest.approx(float(alone.rollout.entropy(0).mean()), rel=1e-6)
    assert set(table["direction"]) <= {"more focused", "more spread", "no significant change"}
    worded = table["direction"] != "no significant change"
    assert (table.loc[worded, "p_holm"] < 0.05).all() and not (table.loc[~worded, "p_holm"] < 0.05).any()
    assert (table["p_holm"] >= table["p"]).all()


def test_locality_head_and_layer_tables(pair, comparison):
    locality = comparison.locality_table()
    assert list(locality["layer"]) == [0, 1, 2]
    b = comparison.before.metrics.mean_distance[:, 1].mean()
    assert locality["distance_before_px"].iloc[1] == pytest.approx(float(b), rel=1e-6)
    significant = locality["p_holm"] < 0.05
    assert ((significant & (locality["change_px"] < 0)) == (locality["direction"] == "more local")).all()
    assert (~significant == (locality["direction"] == "no significant change")).all()
    heads = comparison.head_table()
    assert len(heads) == 12 and {"cls_top3_before", "cls_top3_after", "cls_top3_change", "qk_relative_change"} <= set(
        heads
    )
    np.testing.assert_allclose(
        heads["mean_distance_change"], heads["mean_distance_after"] - heads["mean_distance_before"]
    )
    layers = comparison.layer_table()
    assert len(layers) == 3 and "linear_cka" in layers and "cls_entropy_head_mean_map_change" in layers
    as_dict = comparison.to_dict()
    assert as_dict["rollout_settings"] == {"alpha": 0.6, "head_fusion": "max", "discard_ratio": 0.0}


def test_weight_change_equals_dense_frobenius_norms(pair):
    before, after, _ = pair
    change = weight_change(before, after)
    torch.set_grad_enabled(False)
    for layer in range(3):
        for h in range(4):
            a, b = before.blocks[layer].attn, after.blocks[layer].attn
            qk0 = (a.W_Q[h] @ a.W_K[h].T).double()
            qk1 = (b.W_Q[h] @ b.W_K[h].T).double()
            ov0 = (a.W_V[h] @ a.W_O[h]).double()
            ov1 = (b.W_V[h] @ b.W_O[h]).double()
            assert change.qk[layer, h] == pytest.approx(float((qk1 - qk0).norm() / qk0.norm()), rel=1e-5)
            assert change.ov[layer, h] == pytest.approx(float((ov1 - ov0).norm() / ov0.norm()), rel=1e-5)
    torch.set_grad_enabled(True)
    assert len(change.to_frame()) == 12


def test_cka_equals_linear_cka_of_the_cached_residual_streams(pair, comparison):
    before, after, images = pair
    names = lambda n: n.endswith("resid_post") or n == "blocks.0.hook_resid_pre"  # noqa: E731
    with torch.no_grad():
        _, cache_b = before.run_with_cache(images, names_filter=names)
        _, cache_a = after.run_with_cache(images, names_filter=names)
    sites = comparison.cka.sites
    assert sites[0] == "blocks.0.hook_resid_pre" and len(sites) == 4
    for site, value in zip(sites, comparison.cka.cka.tolist()):
        x = cache_b[site].reshape(-1, 32)
        y = cache_a[site].reshape(-1, 32)
        assert value == pytest.approx(linear_cka(x, y), abs=1e-5)
    assert comparison.cka.n_rows == 5 * 17
    cls_only = compare_models(before, after, images, cka_tokens="cls", progress=False)
    assert cls_only.cka.cka[-1] == pytest.approx(
        linear_cka(cache_b[sites[-1]][:, 0], cache_a[sites[-1]][:, 0]), abs=1e-5
    )


def test_raw_images_are_preprocessed_by_each_model(pair):
    before, after, _ = pair
    raw = np.random.default_rng(0).integers(0, 255, size=(3, 40, 40, 3), dtype=np.uint8)
    result = compare_models(before, after, raw, cka_tokens=None, progress=False)
    summary = summarize_attention(before, before.preprocess(raw), progress=False)
    torch.testing.assert_close(result.before.metrics.cls_entropy, summary.metrics.cls_entropy)
    assert result.cka is None


def test_mismatched_models_get_a_clear_error(pair, unchecked_types):
    before, _, images = pair
    for overrides, field in [
        ({"n_layers": 2}, "n_layers"),
        ({"n_heads": 2, "d_head": 16}, "n_heads"),
        ({"image_size": 40}, "grid_size"),
    ]:
        other = tiny_model(**overrides)
        with pytest.raises(ModelMismatchError, match=field):
            check_comparable(before, other)
        with pytest.raises(ModelMismatchError, match=field):
            compare_models(before, other, images, progress=False)
    wider = tiny_model(d_model=48, d_head=12)
    with pytest.raises(ModelMismatchError, match="d_model"):
        weight_change(before, wider)
    assert compare_models(before, wider, images, progress=False).weights is None  # CKA still works
    with pytest.raises(ValueError, match="cka_tokens"):
        compare_models(before, before, images, cka_tokens="mean", progress=False)
    with pytest.raises(ValueError, match="linear_cka"):
        linear_cka(torch.randn(4, 2), torch.randn(5, 2))


# ----------------------------------------------------------------------------------- statistics


def test_paired_comparison_matches_scipy_and_cohens_dz():
    rng = np.random.default_rng(1)
    before = rng.normal(size=30)
    after = before + rng.normal(0.3, 1.0, size=30)
    test = paired_comparison(before, after, n_resamples=2000, seed=3)
    reference = stats.ttest_rel(after, before)
    assert test.t == pytest.approx(reference.statistic, rel=1e-10)
    assert test.p == pytest.approx(reference.pvalue, rel=1e-8)
    d = after - before
    assert test.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert test.ci_low < d.mean() < test.ci_high
    assert paired_comparison(before, after, n_resamples=2000, seed=3) == test  # seeded
    constant = paired_comparison([1.0, 2.0], [2.0, 3.0])
    assert constant.p == 0.0 and constant.t == np.inf
    with pytest.raises(ValueError, match="pair up"):
        paired_comparison([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([1.0], [2.0])


def _hand_written(before, after, n_resamples, confidence, seed):
    """The formulas the library implemented by hand before it called scipy: t, p and the percentile CI."""
    d = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    n, mean, sd = d.shape[0], d.mean(), d.std(ddof=1)
    t = mean / (sd / np.sqrt(n))
    p = 2 * stats.t.sf(abs(t), df=n - 1)
    means = d[np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    return t, p, *np.quantile(means, [tail, 1 - tail])


@pytest.mark.parametrize("n", [2, 7, 40])
def test_library_statistics_give_the_hand_written_numbers(n):
    rng = np.random.default_rng(n)
    before = rng.normal(size=n)
    after = before + rng.normal(0.2, 1.0, size=n)
    test = paired_comparison(before, after, n_resamples=3000, confidence=0.9, seed=11)
    t, p, low, high = _hand_written(before, after, 3000, 0.9, 11)
    assert test.t == pytest.approx(t, rel=1e-12) and test.p == pytest.approx(p, rel=1e-10)
    assert test.ci_low == pytest.approx(low, abs=1e-12) and test.ci_high == pytest.approx(high, abs=1e-12)
    if n > 2:  # the seed matters (with 2 items the extreme resample means are hit by any seed)
        assert paired_comparison(before, after, n_resamples=3000, confidence=0.9, seed=12).ci_low != test.ci_low


def test_holm_matches_the_step_down_formula():
    p = np.random.default_rng(0).uniform(0, 0.2, size=12)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(np.maximum.accumulate(p[order] * (12 - np.arange(12))), 1.0)
    expected = np.empty(12)
    expected[order] = stepped
    assert holm(p.tolist()) == pytest.approx(expected.tolist(), abs=1e-15)
    assert holm([]) == []


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.04 (m = 3): 0.03, 0.04, 0.04 after the running max; back in the given order
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])
