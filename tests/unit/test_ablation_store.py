"""Resumable sweeps: interrupt, resume, identical table; robust to half-written files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation import Metric, StoreMismatchError, cross_entropy, head_sweep, pair_interactions
from vitmech.analysis.ablation.store import JsonlStore


class Interrupted(RuntimeError):
    pass


def failing_after(metric: Metric, calls: int) -> Metric:
    """The same metric (same key, so the same store file) that raises on its (calls+1)-th call."""
    count = {"n": 0}

    def fn(out, clean, targets):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupted(f"simulated interruption after {calls} metric calls")
        return metric.fn(out, clean, targets)

    return Metric(metric.name, fn, metric.output, metric.needs_targets, metric.needs_clean, metric.params)


def counting(metric: Metric) -> tuple[Metric, dict[str, int]]:
    """The same metric, counting its calls."""
    count = {"n": 0}

    def fn(out, clean, targets):
        count["n"] += 1
        return metric.fn(out, clean, targets)

    return Metric(metric.name, fn, metric.output, metric.needs_targets, metric.needs_clean, metric.params), count


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=5)
    images = seeded_images(9, 32, seed=6)
    labels = torch.arange(9) % 5
    return model, images, labels


def store_lines(folder):
    (path,) = folder.glob("sweep-*.jsonl")
    return path.read_text().splitlines()


@pytest.mark.parametrize("interrupt_after", [1, 6, 13, 30])
def test_interrupt_and_resume_gives_the_identical_table(setup, tmp_path, interrupt_after):
    model, images, labels = setup
    kwargs = dict(targets=labels, batch_size=4, max_batch=8, progress=False)
    uninterrupted = head_sweep(model, images, cross_entropy(), **kwargs).to_frame()

    with pytest.raises(Interrupted):
        head_sweep(model, images, failing_after(cross_entropy(), interrupt_after), store=tmp_path, **kwargs)
    written = [json.loads(line) for line in store_lines(tmp_path)]
    n_cells_written = sum(r["type"] == "cell" for r in written)
    assert 0 <= n_cells_written < 36  # 3 batches x 12 heads: some, not all, were saved

    counted, calls = counting(cross_entropy())
    resumed = head_sweep(model, images, counted, store=tmp_path, **kwargs).to_frame()
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)
    # only missing cells were computed (plus one clean evaluation per unfinished batch)
    assert calls["n"] <= 36 - n_cells_written + 3

    again = head_sweep(model, images, failing_after(cross_entropy(), 0), store=tmp_path, **kwargs)  # nothing left to do
    pd.testing.assert_frame_equal(again.to_frame(), uninterrupted, check_exact=True)
    assert again.store_path is not None and again.store_path.endswith(".jsonl")


def test_half_written_last_line_is_dropped_and_recomputed(setup, tmp_path):
    model, images, labels = setup
    kwargs = dict(targets=labels, batch_size=5, progress=False, layers=[1])
    complete = head_sweep(model, images, "cross_entropy", store=tmp_path, **kwargs).to_frame()
    (path,) = tmp_path.glob("sweep-*.jsonl")
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # cut the last record in half
    resumed = head_sweep(model, images, "cross_entropy", store=tmp_path, **kwargs).to_frame()
    pd.testing.assert_frame_equal(resumed, complete, check_exact=True)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_different_settings_use_different_files(setup, tmp_path):
    model, images, labels = setup
    kwargs = dict(targets=labels, batch_size=5, progress=False, layers=[2], store=tmp_path)
    head_sweep(model, images, "cross_entropy", **kwargs)
    head_sweep(model, images, "accuracy", **kwargs)
    head_sweep(model, images[:6], "cross_entropy", **{**kwargs, "targets": labels[:6]})
    edited = tiny_model(seed=5)
    with torch.no_grad():
        edited.blocks[0].attn.W_O[0, 0, 0] += 1.0
    head_sweep(edited, images, "cross_entropy", **kwargs)
    assert len(list(tmp_path.glob("sweep-*.jsonl"))) == 4


def test_a_store_file_with_other_settings_is_refused(tmp_path):
    JsonlStore(tmp_path / "s.jsonl", "aaaa", {"x": 1})
    with pytest.raises(StoreMismatchError, match="settings key"):
        JsonlStore(tmp_path / "s.jsonl", "bbbb", {"x": 2})


def test_group_sweeps_resume_too(setup, tmp_path):
    model, images, labels = setup
    kwargs = dict(targets=labels, batch_size=9, progress=False, layers=[0])
    first = pair_interactions(model, images, "cross_entropy", store=tmp_path, **kwargs)
    second = pair_interactions(model, images, failing_after(cross_entropy(), 0), store=tmp_path, **kwargs)
    pd.testing.assert_frame_equal(first.to_frame(), second.to_frame(), check_exact=True)
