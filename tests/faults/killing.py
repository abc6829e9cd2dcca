"""Run a child task and SIGKILL it at a seeded random moment after it reported "ready"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_child(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python -m tests.faults.children <args>` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "tests.faults.children", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_child(*args: str, timeout: float = 300) -> subprocess.Popen:
    """Start `python -m tests.faults.children <args>` and wait until it reports "ready"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.children", *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.wait(timeout)
        raise RuntimeError(f"child {args} did not start: {line}{proc.stderr.read()}")
    return proc


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 900) -> None:
    """Poll `condition` until it holds; RuntimeError if `proc` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(
                f"child ended (rc {proc.returncode}) before the awaited state: {proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the child")
        time.sleep(0.01)


def kill_at(delay: float, *args: str, when: Callable[[], bool] | None = None, timeout: float = 900) -> bool:
    """Start the child, wait for "ready" (and for `when()` to hold, if given: progress, not wall time, on a
    loaded machine), sleep `delay` seconds, SIGKILL it. True if it was killed before it finished (False: it
    completed first; a child that fails on its own raises)."""
    proc = start_child(*args, timeout=timeout)
    deadline = time.monotonic() + timeout
    while when is not None and not when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout)
    if not killed and proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child {args} failed on its own (rc {proc.returncode}): {proc.stderr.read()[-3000:]}")
    return killed or proc.returncode == -signal.SIGKILL
