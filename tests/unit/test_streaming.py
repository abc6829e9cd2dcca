"""Streamed analyses equal the one-batch analyses over all images (float64 models: to 1e-9, asserted at 1e-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis import streaming
from vitmech.analysis.ablation import ablation_sweep, estimate_head_effects, head_sweep
from vitmech.analysis.attention import attention_metrics, collect_patterns
from vitmech.analysis.attribution import direct_logit_attribution
from vitmech.analysis.compare import CKAAccumulator, compare_models
from vitmech.errors import BatchSourceError

TOL = 1e-6
N = 11  # not a multiple of the batch sizes below


@pytest.fixture(scope="module")
def model():
    return tiny_model(0, n_layers=2).double()


@pytest.fixture(scope="module")
def other():
    return tiny_model(1, n_layers=2).double()


@pytest.fixture(scope="module")
def images():
    return seeded_images(N, 32).double()


@pytest.fixture(scope="module")
def labels():
    return torch.arange(N) % 5


def assert_frames_close(a: pd.DataFrame, b: pd.DataFrame, tol: float = TOL) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    numeric = a.select_dtypes("number").columns
    np.testing.assert_allclose(b[numeric].to_numpy(float), a[numeric].to_numpy(float), rtol=0, atol=tol)
    other_columns = [c for c in a.columns if c not in numeric]
    assert a[other_columns].equals(b[other_columns])


def test_attention_metrics_stream_equals_one_batch(model, images, tmp_path):
    whole = attention_metrics(collect_patterns(model, images, progress=False), model)
    rows = tmp_path / "rows.csv"
    streamed = streaming.stream_attention_metrics(model, images, batch_size=4, rows_path=rows, progress=False)
    assert streamed.n_images == N
    assert_frames_close(whole.to_frame(), streamed.to_frame())
    assert_frames_close(whole.layer_frame(), streamed.layer_frame())
    assert_frames_close(whole.image_frame(), pd.read_csv(rows))
    assert not list(tmp_path.glob("*.part*"))


def test_every_source_kind_gives_the_same_batches(model, images, labels, tmp_path):
    from datasets import Dataset
    from PIL import Image

    expected = streaming.stream_attention_metrics(model, images, batch_size=4, progress=False).to_frame()
    loader = DataLoader(TensorDataset(images.float(), labels), batch_size=4)
    dicts = [{"pixel_values": images[i : i + 3], "label": labels[i : i + 3]} for i in range(0, N, 3)]
    hf = Dataset.from_dict({"pixel_values": images.float().numpy(), "label": labels.numpy()}).with_format("torch")
    for source in (loader, dicts, hf):
        got = streaming.stream_attention_metrics(model, source, batch_size=4, progress=False).to_frame()
        assert_frames_close(expected, got, tol=1e-5)  # the loader and the dataset hold float32 copies

    raw = (torch.rand(5, 40, 40, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
    for i, array in enumerate(raw):
        Image.fromarray(array).save(tmp_path / f"{i:02d}.png")
    whole = attention_metrics(collect_patterns(model, model.preprocess(list(raw)), progress=False), model)
    from_folder = streaming.stream_attention_metrics(model, tmp_path, batch_size=2, progress=False)
    assert_frames_close(whole.to_frame(), from_folder.to_frame())
    batches = list(streaming.iter_batches(hf, batch_size=4))
    assert [b.start for b in batches] == [0, 4, 8] and torch.equal(batches[2].targets, labels[8:])


def test_bad_sources_are_named(model, tmp_path):
    with pytest.raises(BatchSourceError, match="no image files"):
        list(streaming.iter_batches(tmp_path))
    with pytest.raises(BatchSourceError, match="image column"):
        list(streaming.iter_batches([{"pixels": torch.zeros(1)}]))
    with pytest.raises(BatchSourceError, match="cannot stream"):
        list(streaming.iter_batches(3))
    with pytest.raises(BatchSourceError, match="2 targets for 3 images"):
        list(streaming.iter_batches(torch.zeros(3, 3, 32, 32), targets=torch.zeros(2)))


def test_comparison_stream_equals_one_batch(model, other, images):
    whole = compare_models(model, other, images, batch_size=N, progress=False)
    streamed = streaming.stream_compare_models(model, other, images, batch_size=4, progress=False)
    for table in ("summary_table", "locality_table", "layer_table", "head_table"):
        assert_frames_close(getattr(whole, table)(), getattr(streamed, table)())
    torch.testing.assert_close(streamed.cka.cka, whole.cka.cka, rtol=0, atol=TOL)
    assert streamed.cka.n_rows == whole.cka.n_rows
    cka = streaming.stream_cka(model, other, images, tokens="cls", batch_size=5, progress=False)
    reference = compare_models(model, other, images, batch_size=N, cka_tokens="cls", progress=False).cka
    torch.testing.assert_close(
        cka.cka, reference.cka, rtol=0, atol=TOL, equal_nan=True
    )  # CLS rows of the embedding: constant


def test_one_model_summary_stream_equals_one_batch(model, other, images):
    whole = compare_models(model, other, images, batch_size=N, cka_tokens=None, progress=False)
    summaries = [
        streaming.stream_attention_summary(m, images, name=name, batch_size=4, progress=False)
        for m, name in ((model, "before"), (other, "after"))
    ]
    for got, want in zip(summaries, (whole.before, whole.after)):
        assert_frames_close(want.metrics.to_frame(), got.metrics.to_frame())
        assert_frames_close(want.metrics.layer_frame(), got.metrics.layer_frame())
        for key, values in want.image_scalars().items():
            torch.testing.assert_close(got.scalars[key], values, rtol=0, atol=TOL)
        torch.testing.assert_close(got.layer_distance, want.metrics.mean_distance.mean(-1), rtol=0, atol=TOL)
    pair = streaming.StreamedComparison(before=summaries[0], after=summaries[1], weights=None, cka=None)
    for table in ("summary_table", "locality_table", "layer_table"):
        assert_frames_close(getattr(whole, table)(), getattr(pair, table)())


def test_per_image_values_come_back_in_stream_order(model, images):
    batches = [images[i : i + 3] for i in range(0, N, 3)]  # a generic iterable of batches
    got = streaming.stream_per_image(
        model, batches, lambda m, x: {"logits": m(x), "first": x[:, 0, 0, 0]}, progress=False
    )
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], model(images), rtol=0, atol=TOL)
    torch.testing.assert_close(got["first"], images[:, 0, 0, 0], rtol=0, atol=0)
    with pytest.raises(BatchSourceError, match="no images"):
        streaming.stream_per_image(model, [], lambda m, x: {"x": x}, progress=False)


def test_cka_accumulators_merge_like_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 30, 6, generator=g) + 5, torch.randn(2, 30, 4, generator=g) - 3
    whole, a, b = CKAAccumulator(), CKAAccumulator(), CKAAccumulator()
    whole.update(x.double(), y.double())
    a.update(x[:, :7].double(), y[:, :7].double())
    b.update(x[:, 7:].double() * 1, y[:, 7:].double())
    torch.testing.assert_close(streaming.merge_cka(a, b).result(), whole.result(), rtol=0, atol=1e-12)


def test_sweep_stream_equals_one_batch(model, images, labels, tmp_path):
    whole = head_sweep(model, images, "cross_entropy", targets=labels, batch_size=N, max_batch=N, progress=False)
    kwargs = dict(targets=labels, batch_size=4, max_batch=8, progress=False)
    streamed = streaming.stream_head_sweep(model, images, "cross_entropy", **kwargs)
    np.testing.assert_allclose(streamed.ablated, whole.ablated, rtol=0, atol=TOL)
    np.testing.assert_allclose(streamed.delta_se, whole.delta_se, rtol=0, atol=TOL)
    assert streamed.clean == pytest.approx(whole.clean, abs=TOL) and streamed.n_examples == N
    stored = streaming.stream_head_sweep(model, images, "cross_entropy", store=tmp_path, **kwargs)
    assert [p.name for p in tmp_path.iterdir()] == [Path(stored.store_path).name]  # shards merged and removed
    assert Path(stored.store_path).name.startswith("sweep-")
    again = streaming.stream_head_sweep(model, images, "cross_entropy", store=tmp_path, **kwargs)
    np.testing.assert_array_equal(again.ablated, stored.ablated)
    cells = [[(0, 1), (1, 2)], [(1, 0)]]
    pairs = streaming.stream_ablation_sweep(model, images, cells, "kl_to_clean", batch_size=3, progress=False)
    reference = ablation_sweep(model, images, cells, "kl_to_clean", batch_size=N, progress=False)
    np.testing.assert_allclose(pairs.ablated, reference.ablated, rtol=0, atol=TOL)


def test_estimates_and_dla_streams_equal_one_batch(model, images, labels):
    whole = estimate_head_effects(model, images, "cross_entropy", targets=labels, batch_size=N)
    streamed = streaming.stream_head_estimates(
        model, images, "cross_entropy", targets=labels, batch_size=4, progress=False
    )
    np.testing.assert_allclose(streamed.attribution, whole.attribution, rtol=0, atol=TOL)
    np.testing.assert_allclose(streamed.michel, whole.michel, rtol=0, atol=TOL)
    assert streamed.clean == pytest.approx(whole.clean, abs=TOL)
    for classes in ("predicted", 2):
        dla = direct_logit_attribution(model, images, classes)
        summary = streaming.stream_direct_logit_attribution(model, images, classes, batch_size=4, progress=False)
        assert_frames_close(dla.summary_frame(), summary.summary_frame())
    by_label = streaming.stream_direct_logit_attribution(
        model, images, "targets", targets=labels, batch_size=4, progress=False
    )
    assert_frames_close(direct_logit_attribution(model, images, labels).summary_frame(), by_label.summary_frame())


def test_moments_merge_in_any_grouping():
    values = torch.randn(20, 3, generator=torch.Generator().manual_seed(1)).double() * 10 + 100
    whole = streaming.Moments()
    whole.update(values)
    parts = [streaming.Moments(), streaming.Moments()]
    for chunk in values.split(3):
        parts[len(chunk) % 2].update(chunk)
    merged = parts[0].merge(parts[1])
    torch.testing.assert_close(merged.mean, values.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.std(), values.std(0), rtol=0, atol=1e-12)
    assert merged.n == 20 and whole.n == 20
