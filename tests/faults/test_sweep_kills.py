"""Head sweeps SIGKILLed at seeded random moments: a rerun with the same store keeps every finished cell
(none computed twice, no finished line rewritten) and returns the table of an uninterrupted sweep, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.faults.children import sweep_setup, sweep_table
from tests.faults.killing import kill_at, run_child
from vitmech.analysis.ablation import head_sweep

N_BATCHES, N_CELLS = 4, 8  # sweep_setup: 12 images in batches of 3, 2 layers x 4 heads
THROTTLE = "0.05"  # seconds the child sleeps after each store write, so a kill lands mid-sweep


@pytest.fixture(scope="module")
def reference():
    model, images = sweep_setup()
    result = head_sweep(model, images, "kl_to_clean", batch_size=3, max_batch=3, progress=False)
    return sweep_table(result)


def complete_lines(store: Path) -> dict[str, list[bytes]]:
    """The finished (newline-terminated) lines of every store file; a half-written last line is left out."""
    lines = {}
    for path in sorted(store.glob("sweep-*.jsonl")):
        raw = path.read_bytes()
        lines[path.name] = raw[: raw.rfind(b"\n") + 1].split(b"\n")[:-1]
    return lines


def n_records(store: Path) -> int:
    return sum(max(len(v) - 1, 0) for v in complete_lines(store).values())


def check_nothing_finished_was_lost_or_redone(before: dict[str, list[bytes]], store: Path) -> None:
    after = complete_lines(store)
    for name, lines in before.items():
        assert after.get(name, [])[: len(lines)] == lines, f"{name}: a finished line was lost or rewritten"
    records = [json.loads(line) for lines in after.values() for line in lines[1:]]
    cells = [(r["batch"], r["cell"]) for r in records if r["type"] == "cell"]
    cleans = [r["batch"] for r in records if r["type"] == "clean"]
    assert len(cells) == len(set(cells)), "a finished cell was computed again"
    assert len(cleans) == len(set(cleans)), "a finished clean batch was computed again"


def kill_sweep(store: Path, out: Path, after_records: int, delay: float) -> bool:
    """SIGKILL a sweep child `delay` s after its store holds `after_records` finished records."""
    return kill_at(delay, "sweep", str(store), str(out), THROTTLE, when=lambda: n_records(store) >= after_records)


def finish(store: Path, out: Path, reference) -> None:
    before = complete_lines(store)
    done = run_child("sweep", str(store), str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    check_nothing_finished_was_lost_or_redone(before, store)
    assert json.loads(out.read_text()) == reference
    assert n_records(store) == N_BATCHES * (N_CELLS + 1)  # every cell and clean batch exactly once


def test_a_sweep_killed_mid_way_resumes_without_redoing_a_head(tmp_path, reference):
    rng = np.random.default_rng(12)
    store, out = tmp_path / "store", tmp_path / "out.json"
    assert kill_sweep(store, out, int(rng.integers(5, 25)), float(rng.uniform(0.0, 0.05)))
    assert 0 < n_records(store) < N_BATCHES * (N_CELLS + 1)  # killed with some, not all, cells finished
    assert not out.exists()
    finish(store, out, reference)


@pytest.mark.slow
def test_sweeps_killed_at_random_moments_over_several_rounds_give_the_uninterrupted_table(tmp_path, reference):
    rng = np.random.default_rng(2025)
    store, out = tmp_path / "store", tmp_path / "out.json"
    target = 0
    for _ in range(5):  # each round: a fresh child resumes, then dies a seeded number of records later
        before = complete_lines(store)
        target = min(n_records(store) + int(rng.integers(1, 8)), N_BATCHES * (N_CELLS + 1) - 1)
        kill_sweep(store, out, target, float(rng.uniform(0.0, 0.08)))
        check_nothing_finished_was_lost_or_redone(before, store)
    assert not out.exists() or json.loads(out.read_text()) == reference
    finish(store, out, reference)
