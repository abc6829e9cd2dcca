"""Every study under a launch of 2 processes (gloo, CPU), as torchrun starts them: the same environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) in 2 forked processes calling the same entry point
(`vitmech.cli.run_command`, which `python -m vitmech` and every experiment script call).

Sharded studies must write the tables of a 1-process run (within 1e-6); studies that run on rank 0 alone
must write the same report; training refuses the launch. One real `torchrun` run of an experiment script
is marked slow.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.models import write_study_inputs
from vitmech.cli import run_command

ROOT = Path(__file__).resolve().parents[2]
# fork: the ranks inherit the imported modules (a fresh interpreter spends seconds importing torch)
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
TIMEOUT_S = 900  # a hang fails the test; the margin is for a machine shared with other jobs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    return write_study_inputs(root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, command: str, argv: list[str], log: str) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    with open(f"{log}.rank{rank}", "w") as stream:
        sys.stdout = sys.stderr = stream
        logging.getLogger().addHandler(logging.StreamHandler(stream))  # pytest's handlers do not reach the file
        faulthandler.dump_traceback_later(TIMEOUT_S - 30, file=stream)  # where a hung rank waits, in its log
        try:
            code = run_command(command, argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            if not isinstance(exit.code, int) and exit.code is not None:
                print(exit.code)
        except BaseException as error:  # reported through the exit status and the log
            print(repr(error))
            code = 1
        stream.flush()
    os._exit(code)


def launch(command: str, argv: list[str], log: Path, world: int = 2) -> list[int]:
    """Exit status of each of `world` ranks running `vitmech <command> <argv>`."""
    port, ctx = _free_port(), mp.get_context(START)
    procs = [ctx.Process(target=_rank, args=(r, world, port, command, argv, str(log))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    hung = [p for p in procs if p.exitcode is None]
    for p in hung:
        p.kill()
    logs = "\n".join(Path(f"{log}.rank{r}").read_text() for r in range(world) if Path(f"{log}.rank{r}").exists())
    assert not hung, f"{len(hung)} rank(s) hung:\n{logs}"
    return [p.exitcode for p in procs]


def one(command: str, argv: list[str]) -> int:
    assert "WORLD_SIZE" not in os.environ
    return run_command(command, argv)


def files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def assert_same_tables(got: Path, want: Path, atol: float = 1e-6) -> None:
    """Every CSV table of `want` is in `got` with the same non-numeric cells and numbers within atol."""
    tables = sorted(p.relative_to(want) for p in want.rglob("*.csv"))
    assert tables, f"no tables in {want}"
    for name in tables:
        a, b = pd.read_csv(got / name), pd.read_csv(want / name)
        assert list(a.columns) == list(b.columns) and a.shape == b.shape, name
        numeric = [c for c in b.select_dtypes("number").columns if "seconds" not in c]  # timings differ
        np.testing.assert_allclose(
            a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=0, atol=atol, err_msg=str(name)
        )
        text = [c for c in b.select_dtypes(exclude="number").columns]
        assert a[text].fillna("").equals(b[text].fillna("")), name


SHARDED = {
    "ablate": lambda t: ["--model", str(t / "binary"), "--images", str(t / "images")],
    "compare": lambda t: ["--before", str(t / "before"), "--after", str(t / "after"), "--images", str(t / "images")],
    "cls": lambda t: ["--model", str(t / "before"), "--model", str(t / "after"), "--images", str(t / "images")],
    "locality": lambda t: ["--model", str(t / "before"), "--model", str(t / "after"), "--images", str(t / "images")],
    "rollout": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
    "circuits": lambda t: ["--before", str(t / "before"), "--after", str(t / "after"), "--images", str(t / "images")],
}
ON_MAIN = {
    "attention-check": lambda t: ["--model", str(t / "before")],
    "models": lambda t: ["--pages"],
    "data": lambda t: [],
}
ON_MAIN_SLOW = {  # the same code path as above, with studies that take tens of seconds
    "patch": lambda t: [],
    "align": lambda t: ["--model", str(t / "before")],
}


# figures drawn at 10 dpi (tests/conftest.py): they are rank 0's alone and not what these tests compare (speed)
pytestmark = pytest.mark.usefixtures("small_figures")


@pytest.mark.parametrize("command", list(SHARDED))
def test_sharded_study_on_two_ranks_writes_the_one_process_tables(command, tiny, tmp_path):
    argv = [*SHARDED[command](tiny), "--quick", "--no-progress", "--device", "cpu"]
    assert one(command, [*argv, "--out", str(tmp_path / "one")]) == 0
    assert launch(command, [*argv, "--out", str(tmp_path / "two")], tmp_path / "log") == [0, 0]
    assert files(tmp_path / "two") == files(tmp_path / "one")
    assert_same_tables(tmp_path / "two", tmp_path / "one")


@pytest.mark.parametrize("command", [*ON_MAIN, *(pytest.param(c, marks=pytest.mark.slow) for c in ON_MAIN_SLOW)])
def test_one_rank_study_under_a_launch_writes_the_one_process_report(command, tiny, tmp_path):
    argv = [*{**ON_MAIN, **ON_MAIN_SLOW}[command](tiny), "--quick", "--no-progress"]
    assert one(command, [*argv, "--out", str(tmp_path / "one")]) == 0
    assert launch(command, [*argv, "--out", str(tmp_path / "two")], tmp_path / "log") == [0, 0]
    assert files(tmp_path / "two") == files(tmp_path / "one")
    if list((tmp_path / "one").rglob("*.csv")):
        assert_same_tables(tmp_path / "two", tmp_path / "one", atol=0)
    assert "rank 0 runs it alone" in (tmp_path / "log.rank0").read_text()


def test_training_refuses_a_launch_of_several_processes(tiny, tmp_path):
    argv = ["--model", str(tiny / "before"), "--quick", "--no-progress", "--out", str(tmp_path / "out")]
    assert launch("finetune-chirp", argv, tmp_path / "log") == [2, 2]
    said = (tmp_path / "log.rank0").read_text()
    assert "does not run under a launch of 2 processes" in said and "DistributedDataParallel" in said
    assert (tmp_path / "log.rank1").read_text() == ""  # one message, from rank 0
    assert not (tmp_path / "out").exists()


def test_a_refused_output_folder_stops_every_rank(tiny, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep")
    argv = [*SHARDED["ablate"](tiny), "--quick", "--no-progress", "--device", "cpu", "--out", str(busy)]
    codes = launch("ablate", argv, tmp_path / "log")
    assert codes[0] == 1 and codes[1] != 0
    assert "exists and is not empty" in (tmp_path / "log.rank0").read_text()
    assert files(busy) == {"x.txt"}


@pytest.mark.slow
def test_torchrun_runs_an_experiment_script_unchanged(tiny, tmp_path):
    """The real launcher on the numbered script, as docs/cluster.md shows it."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    out = tmp_path / "out"
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "experiments" / "07_head_ablation_heatmap.py"),
    ]
    command += [*SHARDED["ablate"](tiny), "--quick", "--no-progress", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "report.md").exists()
    assert (
        one(
            "ablate",
            [*SHARDED["ablate"](tiny), "--quick", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "one")],
        )
        == 0
    )
    assert_same_tables(out, tmp_path / "one")


def test_every_sharded_command_is_tested_under_a_launch():
    """A command that shards (LAUNCH = SHARDS) has its own code under a launch, so it must be in SHARDED;
    the others (rank 0 alone, the default of every new command; or refused) share one tested code path."""
    import importlib

    from vitmech.cli.commands import COMMANDS
    from vitmech.studies._common import LAUNCH_MODES, SHARDS
    from vitmech.studies._common import ON_MAIN as ON_MAIN_MODE

    modes = {name: getattr(importlib.import_module(c.module), "LAUNCH", ON_MAIN_MODE) for name, c in COMMANDS.items()}
    assert set(modes.values()) <= set(LAUNCH_MODES)
    assert {name for name, mode in modes.items() if mode == SHARDS} == set(SHARDED)
    assert set(ON_MAIN) | set(ON_MAIN_SLOW) <= {name for name, mode in modes.items() if mode == ON_MAIN_MODE}
