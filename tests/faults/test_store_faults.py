"""Sweep stores under faults: colliding custom metrics, garbled and cut files, two writers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation import MetricError, StoreMismatchError, head_sweep, metric_from_function
from vitmech.analysis.ablation.errors import StoreCorruptError
from vitmech.analysis.ablation.store import JsonlStore, store_files
from vitmech.io import CorruptFileError


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=5)
    images = seeded_images(8, 32, seed=6)
    return model, images


KW = dict(batch_size=4, progress=False, layers=[1])


def test_two_lambdas_in_one_store_give_their_own_tables(setup, tmp_path):
    model, images = setup
    first = head_sweep(model, images, lambda out: out[:, 0], store=tmp_path, **KW)
    second = head_sweep(model, images, lambda out: out[:, 1] * 3.0, store=tmp_path, **KW)
    reference = head_sweep(model, images, lambda out: out[:, 1] * 3.0, **KW)  # no store
    pd.testing.assert_frame_equal(second.to_frame(), reference.to_frame(), check_exact=True)
    assert first.clean != second.clean
    assert len(store_files_in(tmp_path)) == 2


def test_a_closure_value_is_part_of_the_key(setup, tmp_path):
    model, images = setup

    def logit_of(k):
        return lambda out: out[:, k]

    a = head_sweep(model, images, logit_of(0), store=tmp_path, **KW)
    b = head_sweep(model, images, logit_of(2), store=tmp_path, **KW)
    with torch.no_grad():
        logits = model(images)
    assert a.clean == pytest.approx(float(logits[:, 0].mean()), abs=1e-5)
    assert b.clean == pytest.approx(float(logits[:, 2].mean()), abs=1e-5)


def test_the_same_function_resumes_from_its_store(setup, tmp_path):
    model, images = setup

    def fn(out):
        return out[:, 3]

    head_sweep(model, images, fn, store=tmp_path, **KW)
    again = head_sweep(model, images, fn, store=tmp_path, **KW)
    assert len(store_files_in(tmp_path)) == 1 and again.store_path is not None


class CallableMetric:
    def __call__(self, out):
        return out[:, 0]


def test_an_unkeyable_callable_is_refused_by_a_store_unless_named(setup, tmp_path):
    model, images = setup
    with pytest.raises(MetricError, match="name="):
        head_sweep(model, images, CallableMetric(), store=tmp_path, **KW)
    named = metric_from_function(CallableMetric(), name="logit0")
    result = head_sweep(model, images, named, store=tmp_path, **KW)
    assert result.metric["metric"] == "logit0"
    head_sweep(model, images, CallableMetric(), **KW)  # in memory: fine


def store_files_in(folder):
    return sorted(p for p in folder.glob("sweep-*.jsonl"))


def test_a_garbled_line_names_the_file_and_line(setup, tmp_path):
    model, images = setup
    head_sweep(model, images, "mse_to_clean", store=tmp_path, **KW)
    (path,) = store_files_in(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "#garbage{{\n"
    path.write_text("".join(lines))
    with pytest.raises(StoreCorruptError, match=r"line 4") as info:
        head_sweep(model, images, "mse_to_clean", store=tmp_path, **KW)
    assert str(path) in str(info.value) and info.value.line == 4 and info.value.path == path
    assert isinstance(info.value, CorruptFileError) and isinstance(info.value, StoreMismatchError)


def test_a_cut_header_is_rewritten_not_blamed_on_the_user(setup, tmp_path):
    model, images = setup
    complete = head_sweep(model, images, "mse_to_clean", **KW).to_frame()
    store = tmp_path / "s"
    head_sweep(model, images, "mse_to_clean", store=store, **KW)
    (path,) = store_files_in(store)
    header = path.read_text().splitlines()[0]
    path.write_text(header[: len(header) // 2])  # a kill while the header was being written
    resumed = head_sweep(model, images, "mse_to_clean", store=store, **KW).to_frame()
    pd.testing.assert_frame_equal(resumed, complete, check_exact=True)
    assert json.loads(path.read_text().splitlines()[0])["type"] == "header"


def test_a_header_records_what_made_the_store(setup, tmp_path):
    model, images = setup
    head_sweep(model, images, "mse_to_clean", store=tmp_path, **KW)
    (path,) = store_files_in(tmp_path)
    header = json.loads(path.read_text().splitlines()[0])
    assert {"vitmech", "host", "pid", "time"} <= set(header["created_by"])


def test_a_second_writer_gets_its_own_shard_and_readers_merge(tmp_path):
    first = JsonlStore(tmp_path / "sweep-k.jsonl", "k", {"x": 1})
    second = JsonlStore(tmp_path / "sweep-k.jsonl", "k", {"x": 1})  # while the first still writes
    assert second.path != first.path and second.path.name.startswith("sweep-k.w")
    first.write([{"type": "cell", "batch": 0, "cell": "a", "n": 1, "sum": 1.0, "sum_delta_sq": 0.0}])
    second.write([{"type": "cell", "batch": 0, "cell": "b", "n": 1, "sum": 2.0, "sum_delta_sq": 0.0}])
    first.close()
    second.close()
    merged = JsonlStore(tmp_path / "sweep-k.jsonl", "k", {"x": 1})
    assert merged.has_cell(0, "a") and merged.has_cell(0, "b") and merged.path == first.path
    assert len(store_files(tmp_path / "sweep-k.jsonl")) == 2


def test_a_rank_shard_is_its_own_file(tmp_path):
    rank = JsonlStore(tmp_path / "sweep-k.jsonl", "k", {"x": 1}, shard="rank1")
    assert rank.path.name == "sweep-k.rank1.jsonl"
    with pytest.raises(StoreMismatchError, match="plain name"):
        JsonlStore(tmp_path / "sweep-k.jsonl", "k", {"x": 1}, shard="../x")


def test_two_processes_sweeping_one_store_both_get_the_right_table(setup, tmp_path):
    """Two writers at once (a thread stands in for the second process: each holds its own lock and, like a
    process, its own copy of the model, since hooks attached in one thread would fire in the other's forward)."""
    import copy
    import threading

    model, images = setup
    reference = head_sweep(model, images, "mse_to_clean", **KW).to_frame()
    results = {}
    copies = [copy.deepcopy(model) for _ in range(2)]

    def run(i):
        results[i] = head_sweep(copies[i], images, "mse_to_clean", store=tmp_path, **KW).to_frame()

    first = JsonlStore.for_settings(tmp_path, "unrelated", {})  # hold one lock to make sure locks are per file
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.close()
    for frame in results.values():
        pd.testing.assert_frame_equal(frame, reference, check_exact=True)
    for path in store_files_in(tmp_path):
        for line in path.read_text().splitlines():
            json.loads(line)


def test_tensor_closures_are_fingerprinted_by_content():
    w1, w2 = torch.ones(3), torch.ones(3)
    w2[0] = 2.0
    a = metric_from_function(lambda out: out[:, :3] @ w1)
    b = metric_from_function(lambda out: out[:, :3] @ w2)
    assert a.key() != b.key()
