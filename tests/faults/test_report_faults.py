"""Report folders under faults: two runs at once, a run killed while writing, damaged files."""

from __future__ import annotations

import csv
import json
import os
import socket

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.faults.killing import kill_at, run_child, start_child, wait_for  # noqa: E402
from vitmech.io import CorruptFileError, IncompleteWriteError, LockHeldError, StorageError  # noqa: E402
from vitmech.report import Report, verify_report  # noqa: E402


def runs_in(folder):
    """The run tag of every CSV and of report.md: one run's files only, or the folder is mixed."""
    tags = set()
    for path in folder.glob("t*.csv"):
        with path.open() as f:
            tags |= {row["run"] for row in csv.DictReader(f)}
    tags.add((folder / "report.md").read_text().split("written by run ")[1].strip())
    return tags


def test_a_second_report_on_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    first = Report(tmp_path / "r", "first")
    with pytest.raises(LockHeldError, match="report folder"):
        Report(tmp_path / "r", "second")
    first.add_table("t", [{"a": 1}])
    first.write()
    second = Report(tmp_path / "r", "second")  # free again
    second.write()
    assert verify_report(tmp_path / "r")["title"] == "second"


def test_a_lock_held_by_another_process_names_it(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "t0"}
    (folder / ".report.lock").write_text(json.dumps(holder))
    with pytest.raises(LockHeldError, match=f"pid {os.getppid()}"):
        Report(folder, "x")


def test_two_runs_at_once_never_mix_their_files(tmp_path):
    """Run 1 pauses mid-write (one of its three tables written); run 2 runs start to end on the same folder;
    then run 1 finishes. Run 2 is refused naming the lock, and the folder holds run 1's files only."""
    folder, sync = tmp_path / "r", tmp_path / "sync"
    sync.mkdir()
    first = start_child("report", str(folder), "1", "3", str(sync))
    wait_for(lambda: (sync / "paused-1").exists(), first)
    second = run_child("report", str(folder), "2", "2")  # while run 1 is mid-write
    (sync / "go").touch()
    assert first.wait(300) == 0, first.stderr.read()[-2000:]
    assert second.returncode != 0, "the second writer was let in while the first was writing"
    assert "LockHeldError" in second.stderr and str(folder / ".report.lock") in second.stderr, second.stderr[-2000:]
    assert runs_in(folder) == {"1"}
    assert json.loads((folder / "index.json").read_text())["title"] == "run 1"
    verify_report(folder)


def test_a_run_with_fewer_files_leaves_none_of_the_previous_runs_files(tmp_path):
    folder = tmp_path / "r"
    for tag, n in (("1", 3), ("2", 1)):
        report = Report(folder, f"run {tag}")
        for i in range(n):
            report.add_table(f"t{i}", [{"run": tag, "i": i}])
        report.add_text(f"written by run {tag}")
        report.write()
    assert runs_in(folder) == {"2"}
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "index.json",
        "report.md",
        "t0.csv",
    ]
    verify_report(folder)


@pytest.mark.slow
def test_a_run_killed_while_writing_leaves_the_previous_report_whole(tmp_path):
    folder = tmp_path / "r"
    done = run_child("report", str(folder), "1", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    kill_at(0.0, "report", str(folder), "2", "40", when=lambda: any(folder.glob(".report.tmp-*/*.png")))
    try:
        verify_report(folder)
    except StorageError as err:
        assert str(folder) in str(err)
    else:
        assert runs_in(folder) == {"1"}
    done = run_child("report", str(folder), "3", "2")  # the next run takes over the dead run's lock
    assert done.returncode == 0, done.stderr[-2000:]
    assert verify_report(folder)["title"] == "run 3"
    assert not list(folder.glob(".report.tmp-*"))  # the killed run's staging folder was cleaned up


@pytest.mark.slow
def test_runs_killed_at_random_moments_never_leave_a_mixed_folder(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "r"
    for round_ in range(6):
        kill_at(float(rng.uniform(0.0, 2.0)), "report", str(folder), str(round_), "6")
        try:
            index = verify_report(folder)
        except StorageError as err:
            assert str(folder) in str(err)
        else:
            assert index["title"] == f"run {runs_in(folder).pop()}" and len(runs_in(folder)) == 1


def test_damaged_or_missing_report_files_are_named(tmp_path):
    report = Report(tmp_path / "r", "x")
    report.add_table("t", [{"a": 1}])
    report.write()
    (tmp_path / "r" / "t.csv").write_text("a\n2\n")
    with pytest.raises(CorruptFileError, match="t.csv"):
        verify_report(tmp_path / "r")
    (tmp_path / "r" / "t.csv").unlink()
    with pytest.raises(IncompleteWriteError, match="t.csv"):
        verify_report(tmp_path / "r")
    (tmp_path / "r" / "index.json").write_text('{"title": ')
    with pytest.raises(CorruptFileError, match=r"index\.json is not valid JSON at line 1"):
        verify_report(tmp_path / "r")
