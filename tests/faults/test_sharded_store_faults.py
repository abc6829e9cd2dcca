"""The sharded sweep store of streamed / torchrun sweeps under faults: cut, garbled and bit-flipped shard
files, a rank killed mid-shard, two writers claiming one rank's shard. Each case resumes to the table of an
uninterrupted one-process sweep (exactly) or fails with a vitmech error naming the file and the problem.

A rank is simulated in one process by answering `current()` with that rank (the collectives are then
no-ops: every rank would agree on the settings key); tests/integration/test_distributed.py runs real ranks.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from tests.faults.killing import kill_at
from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis import streaming
from vitmech.analysis.ablation.errors import StoreCorruptError
from vitmech.distributed import Ranks
from vitmech.io import CorruptFileError, LockHeldError

SWEEP = dict(batch_size=3, max_batch=3, progress=False)
N_BATCHES, N_CELLS = 4, 8  # 12 images in batches of 3; 2 layers x 4 heads


class Interrupted(Exception):
    """Stands in for a crash after a given number of store writes."""


@pytest.fixture(scope="module")
def setup():
    return tiny_model(seed=4, n_layers=2), seeded_images(12, 32, seed=6)


@pytest.fixture(scope="module")
def reference(setup):
    model, images = setup
    return table(streaming.stream_head_sweep(model, images, "kl_to_clean", **SWEEP))


def table(result) -> dict:
    return {"ablated": result.ablated.tolist(), "se": result.delta_se.tolist(), "clean": result.clean}


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(streaming, "current", lambda: Ranks(rank, world))
    monkeypatch.setattr(streaming, "gather_objects", lambda obj: [obj] * world)
    monkeypatch.setattr(streaming, "barrier", lambda: None)


def interrupt_after(monkeypatch, n_writes: int) -> list:
    """Make the store raise Interrupted after its n-th write; returns the list of (batch, cell) written."""
    real = streaming.ShardedStore.write
    written: list = []

    def write(self, records):
        if len(written) >= n_writes:
            raise Interrupted
        real(self, records)
        written.extend((r["batch"], r.get("cell")) for r in records)

    monkeypatch.setattr(streaming.ShardedStore, "write", write)
    return written


def spy_writes(monkeypatch) -> list:
    """Record the (batch, cell) of every store write (None for a clean record's cell)."""
    return interrupt_after(monkeypatch, 10**9)


def sweep(setup, store):
    model, images = setup
    return streaming.stream_head_sweep(model, images, "kl_to_clean", store=store, **SWEEP)


def partial_rank_shard(setup, store, monkeypatch, rank=1, world=2, n_writes=6) -> Path:
    """Rank `rank` of `world` stopped after `n_writes` writes: its shard holds part of its work."""
    with monkeypatch.context() as m:
        as_rank(m, rank, world)
        interrupt_after(m, n_writes)
        with pytest.raises(Interrupted):
            sweep(setup, store)
    (shard,) = store.glob(f"sweep-*.rank{rank}.jsonl")
    return shard


def finished_cells(path: Path) -> set:
    lines = path.read_bytes().split(b"\n")[1:-1]
    return {(r["batch"], r.get("cell")) for r in map(json.loads, lines)}


def test_an_interrupted_rank_resumes_in_the_same_process_without_redoing_cells(setup, tmp_path, monkeypatch, reference):
    store = tmp_path / "s"
    shard = partial_rank_shard(setup, store, monkeypatch)
    done = finished_cells(shard)
    assert 0 < len(done) < N_BATCHES * (N_CELLS + 1) // 2
    with monkeypatch.context() as m:  # the same rank again in the same process: its shard was let go
        as_rank(m, 1, 2)
        written = interrupt_after(m, 2)
        with pytest.raises(Interrupted):
            sweep(setup, store)
    assert len(written) == 2 and not done & set(written), "finished cells were computed again"
    result = sweep(setup, store)  # a relaunch on one process finishes every rank's remaining work
    assert table(result) == reference
    assert [p.name for p in store.glob("sweep-*.jsonl")] == [Path(result.store_path).name]  # merged


def flip_last_digit(line: bytes, field: bytes) -> bytes:
    """`line` with the last digit of the number after `"<field>":` that changes its value flipped (still valid
    JSON). A 17th significant digit can lie below float64's precision (0.39126609079539776 and ...777 parse to
    the same float): flipping it changes no value, so the digit before it is flipped instead."""
    start = line.index(b'"' + field + b'":') + len(field) + 3
    end = min(i for i in (line.find(b",", start), line.find(b"}", start)) if i != -1)
    value = json.loads(line)[field.decode()]
    for at in range(end - 1, start - 1, -1):
        if not line[at : at + 1].isdigit():
            continue
        changed = line[:at] + bytes([line[at] ^ 0x01]) + line[at + 1 :]
        if json.loads(changed)[field.decode()] != value:
            return changed
    raise AssertionError(f"no digit of {field!r} changes its value in {line!r}")


@pytest.mark.parametrize("where", ["last line", "header"])
def test_a_shard_cut_mid_line_resumes_to_the_identical_table(setup, tmp_path, monkeypatch, reference, where):
    store = tmp_path / "s"
    shard = partial_rank_shard(setup, store, monkeypatch)
    raw = shard.read_bytes()
    cut = raw.rstrip(b"\n").rfind(b"\n") + 20 if where == "last line" else raw.find(b"\n") // 2
    shard.write_bytes(raw[:cut])  # what a kill in the middle of a write leaves
    kept = finished_cells(shard) if where == "last line" else set()
    written = spy_writes(monkeypatch)
    assert table(sweep(setup, store)) == reference
    assert not kept & set(written)


@pytest.mark.parametrize("damage", ["garbled", "flipped digit", "flipped key", "swapped lines"])
def test_a_damaged_shard_line_is_named_by_file_and_line(setup, tmp_path, monkeypatch, reference, damage):
    store = tmp_path / "s"
    shard = partial_rank_shard(setup, store, monkeypatch)
    lines = shard.read_bytes().split(b"\n")
    line = lines[3]
    if damage == "garbled":
        lines[3] = line[: len(line) // 2] + b"#" + line[len(line) // 2 + 1 :]
    elif damage == "flipped digit":  # still valid JSON, a different number: only the checksum can tell
        lines[3] = flip_last_digit(line, b"sum")
    elif damage == "flipped key":
        lines[3] = line.replace(b'"batch"', b'"batcH"')
    else:  # a moved line still checks out, and records are order-free: the same table
        lines[2], lines[3] = lines[3], lines[2]
    shard.write_bytes(b"\n".join(lines))
    if damage == "swapped lines":
        assert table(sweep(setup, store)) == reference
        return
    with pytest.raises(StoreCorruptError, match=r"line 4") as info:
        sweep(setup, store)
    assert info.value.path == shard and info.value.line == 4 and str(shard) in str(info.value)
    assert isinstance(info.value, CorruptFileError)


def test_a_damaged_merged_file_is_named(setup, tmp_path):
    store = tmp_path / "s"
    merged = Path(sweep(setup, store).store_path)
    lines = merged.read_bytes().split(b"\n")
    lines[5] = flip_last_digit(lines[5], b"sum")  # a bit flip inside a number
    merged.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreCorruptError, match=r"line 6: checksum mismatch") as info:
        sweep(setup, store)
    assert info.value.path == merged


def test_two_writers_claiming_one_ranks_shard_the_second_is_refused_naming_the_lock(tmp_path):
    store = tmp_path / "s"
    settings = {"x": 1}
    first = streaming.ShardedStore(store, "k", settings, Ranks(1, 2))
    try:
        with pytest.raises(LockHeldError, match=r"\.sweep-k\.rank1\.jsonl\.lock"):
            streaming.ShardedStore(store, "k", settings, Ranks(1, 2))
        other = streaming.ShardedStore(store, "k", settings, Ranks(0, 2))  # another rank's shard: fine
        other.close()
    finally:
        first.close()
    gc.collect()
    streaming.ShardedStore(store, "k", settings, Ranks(1, 2)).close()  # free again once the first let go


def test_a_merge_keeps_the_shard_of_a_live_writer_of_another_job(setup, tmp_path, reference):
    store = tmp_path / "s"
    result = sweep(setup, store)
    key = Path(result.store_path).name[len("sweep-") : -len(".jsonl")]
    settings = json.loads(Path(result.store_path).read_text().splitlines()[0])["settings"]
    live = streaming.ShardedStore(store, key, settings, Ranks(5, 8))  # another job's rank 5, still running
    try:
        assert table(sweep(setup, store)) == reference  # this job merges...
        assert live._own.path.exists()  # ...but leaves the live writer's shard alone
    finally:
        live.close()


@pytest.mark.slow
def test_ranks_killed_mid_shard_at_random_moments_resume_without_redoing_cells(setup, tmp_path, monkeypatch, reference):
    """A real SIGKILL of a child process sweeping as rank 1 of 2, several seeded rounds (each a fresh child
    resuming the shard); then one process finishes the sweep: the identical table, and no cell the killed
    shard had finished is computed again."""
    rng = np.random.default_rng(31)
    store = tmp_path / "s"
    kills = 0

    def n_finished() -> int:
        found = list(store.glob("sweep-*.rank1.jsonl"))
        return found[0].read_bytes().count(b"\n") - 1 if found else 0

    for _ in range(4):  # rank 1 owns 16 cells and 2 clean batches: stop short of its last record
        k = min(n_finished() + int(rng.integers(1, 5)), 15)
        kills += kill_at(
            float(rng.uniform(0.0, 0.05)),
            "stream_rank",
            str(store),
            "1",
            "2",
            "0.05",
            when=lambda k=k: n_finished() >= k,
        )
    assert kills >= 3
    (shard,) = store.glob("sweep-*.rank1.jsonl")
    done = finished_cells(shard)
    assert done
    written = spy_writes(monkeypatch)
    assert table(sweep(setup, store)) == reference
    assert not done & set(written), "finished cells were computed again"
