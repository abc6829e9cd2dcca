"""Report folders under faults: two runs at once, a run killed while writing, damaged files."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.faults.killing import ROOT, child_env, kill_at, run_child  # noqa: E402
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
    folder = tmp_path / "r"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.faults.children", "report", str(folder), tag, "3"],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("1", "2")
    ]
    outcomes = [(p.wait(300), p.stderr.read()) for p in procs]
    finished = [rc == 0 for rc, _ in outcomes]
    assert any(finished)
    for rc, err in outcomes:
        assert rc == 0 or "LockHeldError" in err, err[-2000:]
    index = verify_report(folder)
    assert len(runs_in(folder)) == 1 and index["title"] == f"run {runs_in(folder).pop()}"


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
