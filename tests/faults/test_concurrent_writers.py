"""Two writers at once on every kind of folder vitmech writes: the first is paused in the middle of its
write (right after its first file), the second runs start to end on the same folder, then the first
finishes. The second gets a vitmech error naming the folder's lock (a sweep store: its own shard), and the
folder holds one writer's complete files, never a mix.

The first writer runs in a thread (locks are per file, so a thread meets the lock as a second process
would; report folders are also tested with two processes in test_report_faults.py).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import safetensors.torch

import vitmech.loading.native as native
import vitmech.train.loop as loop
from tests.faults.children import model, train_setup, write_child_dataset
from tests.helpers.models import seeded_images
from vitmech import HookedViT
from vitmech.analysis.ablation import head_sweep
from vitmech.analysis.ablation.store import JsonlStore
from vitmech.data import make_gz2_fixture
from vitmech.data._io import DATASET_INFO
from vitmech.fingerprint import module_fingerprint
from vitmech.io import LockHeldError
from vitmech.train import fit
from vitmech.train.checkpoint import checkpoint_dirs, latest_checkpoint


class FirstWriter:
    """`write()` in a thread that stops right after its first call of any of `points`, until `finish()`."""

    def __init__(self, monkeypatch, points: list[tuple[Any, str]], write: Callable[[], Any]) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(write,), daemon=True)
        for owner, name in points:
            if hasattr(owner, name):
                monkeypatch.setattr(owner, name, self._pausing(getattr(owner, name)))

    def _pausing(self, real: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            if threading.current_thread() is self.thread and not self.reached.is_set():
                self.reached.set()
                self.go.wait(300)
            return out

        return wrapper

    def _run(self, write: Callable[[], Any]) -> None:
        try:
            self.result = write()
        except BaseException as err:  # noqa: BLE001 - handed to the test in finish()
            self.error = err
        finally:
            self.reached.set()

    def finish(self) -> Any:
        self.go.set()
        self.thread.join(300)
        if self.error is not None:
            raise self.error
        return self.result


@contextmanager
def paused_first_writer(monkeypatch, points, write) -> Iterator[FirstWriter]:
    first = FirstWriter(monkeypatch, points, write)
    first.thread.start()
    assert first.reached.wait(300), "the first writer never reached its pause point"
    assert first.thread.is_alive(), f"the first writer ended before its pause point: {first.error!r}"
    try:
        yield first
    finally:
        first.go.set()


def same_weights(a: HookedViT, b: HookedViT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(bool((sa[k] == sb[k]).all()) for k in sa)


def test_model_folder(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    first_model, second_model = model(1), model(2)
    points = [(native, "save_file"), (safetensors.torch, "save_file")]  # paused right after the weights
    with paused_first_writer(monkeypatch, points, lambda: first_model.save_pretrained(folder, card={"seed": 1})) as w:
        with pytest.raises(LockHeldError, match=f"model folder {folder}.*{folder / '.vitmech.lock'}"):
            second_model.save_pretrained(folder, card={"seed": 2})
        w.finish()
    loaded = HookedViT.from_pretrained(str(folder))
    assert loaded.card == {"seed": 1} and same_weights(loaded, first_model)


def test_training_run_folder(tmp_path, monkeypatch):
    m, groups, data, config = train_setup()
    fit(m, groups, data, config, progress=False)
    straight = module_fingerprint(m)

    def run():
        m, groups, data, config = train_setup()
        result = fit(m, groups, data, config, checkpoint_dir=tmp_path, progress=False)
        return module_fingerprint(m), result.history

    with paused_first_writer(monkeypatch, [(loop, "save_checkpoint")], run) as w:  # after its first checkpoint
        with pytest.raises(LockHeldError, match=f"training run folder {tmp_path}.*{tmp_path / '.vitmech.lock'}"):
            run()
        weights, _ = w.finish()
    assert weights == straight
    dirs = checkpoint_dirs(tmp_path)
    assert dirs and latest_checkpoint(tmp_path) == dirs[-1]  # every kept checkpoint intact (manifest checks)


def test_dataset_folder(tmp_path, monkeypatch):
    reference = write_child_dataset(tmp_path / "reference")
    folder = tmp_path / "d"
    with paused_first_writer(monkeypatch, [(pq, "write_table")], lambda: write_child_dataset(folder)) as w:
        with pytest.raises(LockHeldError, match=f"dataset folder {folder}.*{folder / '.vitmech.lock'}"):
            make_gz2_fixture(folder, train_summaries=["spiral"] * 8, image_size=16, shard_size=4, seed=9)
        w.finish()
    files = json.loads((folder / DATASET_INFO).read_text())["files"]
    assert files == json.loads((reference / DATASET_INFO).read_text())["files"]  # the first writer's, byte for byte


def test_sweep_store(tmp_path, monkeypatch):
    tiny, images = model(4), seeded_images(8, 32, seed=6)
    kw = dict(batch_size=4, progress=False, layers=[1])
    reference = head_sweep(tiny, images, "mse_to_clean", **kw).to_frame()
    copies = [copy.deepcopy(tiny) for _ in range(2)]  # hooks are per model, as they are per process

    def sweep(i):
        return head_sweep(copies[i], images, "mse_to_clean", store=tmp_path, **kw).to_frame()

    with paused_first_writer(monkeypatch, [(JsonlStore, "write")], lambda: sweep(0)) as w:
        second = sweep(1)  # not refused: a store gives the second writer its own shard
        first = w.finish()
    for frame in (first, second):
        pd.testing.assert_frame_equal(frame, reference, check_exact=True)
    files = sorted(tmp_path.glob("sweep-*.jsonl"))
    assert len(files) == 2 and any(".w" in p.name for p in files)
    for path in files:  # each file: one header, then whole records
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["type"] for r in records].count("header") == 1 and records[0]["type"] == "header"
