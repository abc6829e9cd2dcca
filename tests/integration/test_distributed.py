"""Two gloo processes (torch.multiprocessing.spawn) give the one-process results; a killed sweep resumes.

Tiny model, ten images: each spawn costs about two interpreter start-ups.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis import streaming

N_IMAGES = 10
# fork: the workers inherit the imported modules (a spawned interpreter spends seconds importing torch and
# transformer_lens); they run on one thread each, so no OpenMP pool is used across the fork.
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
SWEEP = dict(batch_size=3, max_batch=6, progress=False)


def _inputs():
    model = tiny_model(0, n_layers=2)
    return model, tiny_model(1, n_layers=2), seeded_images(N_IMAGES, 32), torch.arange(N_IMAGES) % 5


def _results(store: Path | None) -> dict:
    """Everything the tests compare, computed by whichever ranks take part."""
    model, other, images, labels = _inputs()
    sweep = streaming.stream_head_sweep(model, images, "cross_entropy", targets=labels, store=store, **SWEEP)
    metrics = streaming.stream_attention_metrics(model, images, batch_size=2, progress=False)
    comparison = streaming.stream_compare_models(model, other, images, batch_size=3, progress=False)
    estimates = streaming.stream_head_estimates(model, images, "kl_to_clean", batch_size=4, progress=False)
    dla = streaming.stream_direct_logit_attribution(model, images, batch_size=4, progress=False)
    return {
        "sweep": (sweep.ablated, sweep.delta_se, sweep.clean, sweep.n_examples),
        "metrics": metrics.to_frame(),
        "scalars": comparison.before.scalars,
        "cka": comparison.cka.cka,
        "head_table": comparison.head_table(),
        "estimates": (estimates.attribution, estimates.michel),
        "dla": dla.summary_frame(),
    }


def _join(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _work(rank: int, world: int, init_file: str, out: str, store: str | None) -> None:
    _join(rank, world, init_file)
    try:
        torch.save(_results(Path(store) if store else None), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _sweep_only(rank: int, world: int, init_file: str, out: str, store: str, die_after: int) -> None:
    """A store sweep that logs the cells it computes; rank 1 dies after `die_after` cell records if > 0."""
    from vitmech.analysis.ablation.store import JsonlStore

    _join(rank, world, init_file)
    written = Path(out) / f"written{rank}.jsonl"
    real_write = JsonlStore.write
    count = [0]

    def logged(self, records):
        real_write(self, records)
        cells = [(r["batch"], r["cell"]) for r in records if r["type"] == "cell"]
        with written.open("a") as f:
            f.writelines(json.dumps(c) + "\n" for c in cells)
        count[0] += len(cells)
        if die_after and rank == 1 and count[0] >= die_after:
            os._exit(3)  # a crash: no clean-up, no barrier

    JsonlStore.write = logged
    model, _, images, labels = _inputs()
    try:
        table = streaming.stream_head_sweep(model, images, "cross_entropy", targets=labels, store=store, **SWEEP)
        torch.save((table.ablated, table.delta_se, table.clean), Path(out) / f"table{rank}.pt")
    finally:
        dist.destroy_process_group()


def _cells_in(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def _cells_on_disk(store: Path) -> set[tuple[int, str]]:
    records = [json.loads(line) for p in store.glob("sweep-*.jsonl") for line in p.read_text().splitlines()]
    return {(r["batch"], r["cell"]) for r in records if r["type"] == "cell"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return _results(tmp_path_factory.mktemp("one") / "store")


def test_two_processes_equal_one(tmp_path, one_process):
    store = tmp_path / "store"
    init = tmp_path / "init"
    mp.start_processes(_work, args=(2, str(init), str(tmp_path), str(store)), nprocs=2, join=True, start_method=START)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for got in ranks:
        for a, b in zip(got["sweep"][:3], one_process["sweep"][:3]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        assert got["sweep"][3] == N_IMAGES
        for key in ("metrics", "head_table", "dla"):
            numeric = got[key].select_dtypes("number").columns
            np.testing.assert_allclose(got[key][numeric], one_process[key][numeric], rtol=0, atol=1e-6)
        for name, values in one_process["scalars"].items():
            torch.testing.assert_close(got["scalars"][name], values, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["cka"], one_process["cka"], rtol=0, atol=1e-6)
        for a, b in zip(got["estimates"], one_process["estimates"]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert [p.name for p in store.iterdir()] == [p.name for p in store.glob("sweep-*.jsonl")]
    assert not list(store.glob("*.rank*"))  # the shards were merged into one file


def test_a_killed_rank_resumes_without_redoing_cells(tmp_path, one_process):
    store = tmp_path / "store"
    with pytest.raises(mp.ProcessExitedException):
        mp.start_processes(
            _sweep_only,
            args=(2, str(tmp_path / "init-a"), str(tmp_path), str(store), 5),
            nprocs=2,
            join=True,
            start_method=START,
        )
    first = _cells_on_disk(store)  # what the killed run finished (rank 0 may be stopped between write and log)
    assert 5 <= len(first) < 4 * 8 and list(store.glob("*.rank*"))  # stopped part-way, shards kept
    for name in ("written0.jsonl", "written1.jsonl"):
        (tmp_path / name).unlink(missing_ok=True)
    mp.start_processes(
        _sweep_only,
        args=(2, str(tmp_path / "init-b"), str(tmp_path), str(store), 0),
        nprocs=2,
        join=True,
        start_method=START,
    )
    second = _cells_in(tmp_path / "written0.jsonl") + _cells_in(tmp_path / "written1.jsonl")
    n_batches, n_heads = 4, 2 * 4  # 10 images in batches of 3 (the last of 1); 2 layers x 4 heads
    assert not first & set(second), "finished cells were computed again"
    assert len(first | set(second)) == n_batches * n_heads and len(second) == len(set(second))
    for rank in range(2):
        table = torch.load(tmp_path / f"table{rank}.pt", weights_only=False)
        for a, b in zip(table, one_process["sweep"][:3]):
            np.testing.assert_array_equal(a, b)
