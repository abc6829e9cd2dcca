"""Dataset folders under faults: a writer killed between shards, cut and corrupted shards, two writers."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.faults.children import write_child_dataset
from tests.faults.killing import kill_at
from vitmech.data import DataError, load_gz2, make_gz2_fixture, open_gz2
from vitmech.data._errors import CorruptDatasetError, IncompleteDatasetError
from vitmech.data._io import DATASET_INFO
from vitmech.io import LockHeldError, StorageError

SUMMARIES = ["smooth_round", "spiral", "edge_on_disk", "barred_spiral", "smooth_cigar", "unbarred_spiral"] * 5


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "hf_cache"


def write(path, shard_size=4):
    return make_gz2_fixture(
        path, train_summaries=SUMMARIES, test_summaries=SUMMARIES[:8], image_size=16, shard_size=shard_size
    )


def train_rows(path, cache_dir):
    return len(open_gz2(path, cache_dir=cache_dir)["train"])


def test_a_complete_dataset_records_what_made_it_and_loads(tmp_path, cache_dir):
    path = write(tmp_path / "d")
    info = json.loads((path / DATASET_INFO).read_text())
    assert info["kind"] == "gz2_fixture" and {"vitmech", "host", "pid", "time"} <= set(info["created_by"])
    assert len(info["files"]) == 8 + 2  # 30 train rows in 8 shards of 4, 8 test rows in 2
    assert train_rows(path, cache_dir) == 30


def test_a_writer_killed_between_shards_leaves_a_folder_that_is_refused(tmp_path, cache_dir, monkeypatch):
    """The old layout of the failure: some `-of-N` shards written, no completion file."""
    path = write(tmp_path / "d")
    shard = sorted((path / "data").glob("train-*.parquet"))[5]
    shard.unlink()
    (path / DATASET_INFO).unlink()
    with pytest.raises(IncompleteDatasetError, match=shard.name) as info:
        load_gz2(path, n_train=10, n_test=2, cache_dir=cache_dir, progress=False)
    assert "partial" in str(info.value) and isinstance(info.value, DataError)


def test_a_writer_that_stopped_half_way_is_named(tmp_path, cache_dir, monkeypatch):
    import vitmech.data._io as io_module

    calls = {"n": 0}
    real = io_module.pq.write_table

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(io_module.pq, "write_table", failing)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "d")
    monkeypatch.undo()
    with pytest.raises(IncompleteDatasetError, match="died before finishing"):
        open_gz2(tmp_path / "d", cache_dir=cache_dir)
    write(tmp_path / "d")  # writing it again recovers
    assert train_rows(tmp_path / "d", cache_dir) == 30


def test_a_writer_killed_after_some_shards_is_refused(tmp_path, cache_dir):
    path = tmp_path / "d"
    killed = kill_at(0.0, "dataset", str(path), when=lambda: len(list((path / "data").glob("*.parquet"))) >= 3)
    assert killed
    with pytest.raises(IncompleteDatasetError, match="died before finishing") as info:
        open_gz2(path, cache_dir=cache_dir)
    assert "missing: [" in str(info.value) and DATASET_INFO in str(info.value)  # what is missing is named


def shard_digests(path):
    """Size and SHA-256 of every file of a finished dataset (what its completion file lists)."""
    return json.loads((path / DATASET_INFO).read_text())["files"]


@pytest.mark.slow
def test_dataset_writes_killed_at_random_moments_are_refused_or_rerun_to_identical_files(tmp_path, cache_dir):
    reference = write_child_dataset(tmp_path / "reference")
    reference_rows = open_gz2(reference, cache_dir=cache_dir)["train"].to_pandas()
    rng = np.random.default_rng(99)
    path = tmp_path / "d"
    refused = 0
    for _ in range(6):  # each kill: a seeded number of shards written, then a seeded delay
        k = int(rng.integers(1, 13))
        kill_at(
            float(rng.uniform(0.0, 0.3)),
            "dataset",
            str(path),
            when=lambda k=k: len(list((path / "data").glob("*.parquet"))) >= k,
        )
        try:
            rows = open_gz2(path, cache_dir=cache_dir)["train"].to_pandas()
        except StorageError as err:  # refused, naming the folder and what is missing
            assert str(path) in str(err)
            refused += 1
        else:  # the write finished before the kill: the complete dataset
            assert rows.equals(reference_rows)
    assert refused >= 3
    write_child_dataset(path)  # a rerun completes it: byte-identical shards
    assert shard_digests(path) == shard_digests(reference)
    assert open_gz2(path, cache_dir=cache_dir)["train"].to_pandas().equals(reference_rows)


@pytest.mark.parametrize("damage", ["cut", "flipped", "empty"])
def test_a_damaged_shard_is_named(tmp_path, cache_dir, damage):
    path = write(tmp_path / "d")
    shard = sorted((path / "data").glob("train-*.parquet"))[2]
    data = bytearray(shard.read_bytes())
    if damage == "cut":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match=shard.name):
        open_gz2(path, cache_dir=cache_dir)
    if damage != "flipped":  # without the completion file the parquet reader itself must name it
        (path / DATASET_INFO).unlink()
        with pytest.raises(CorruptDatasetError, match=shard.name):
            open_gz2(path, cache_dir=cache_dir)


def test_a_cut_parquet_file_given_directly_is_named(tmp_path, cache_dir):
    path = write(tmp_path / "d")
    shard = sorted((path / "data").glob("train-*.parquet"))[0]
    single = tmp_path / "one.parquet"
    single.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptDatasetError, match="one.parquet"):
        open_gz2(single, cache_dir=cache_dir)


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "d"
    path.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "t0"}
    (path / ".vitmech.lock").write_text(json.dumps(holder))
    with pytest.raises(LockHeldError, match=f"dataset folder {path}.*pid {os.getppid()}"):
        write(path)


def test_shards_are_written_atomically(tmp_path):
    path = write(tmp_path / "d")
    assert not [p for p in path.rglob(".*") if p.is_file()]  # no temporaries or lock left behind
    for shard in (path / "data").glob("*.parquet"):
        pq.read_metadata(shard)
