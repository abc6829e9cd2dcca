"""Single-writer locks: a lock file naming its holder (pid, host, start time), with stale-lock detection.

    with WriterLock(folder / ".vitmech.lock", what="report folder reports/x"):
        ...  # only one process writes here

The lock file is created atomically with its content (written to a temporary name, then hard-linked
to the lock name, which fails if it exists). A second writer gets `LockHeldError` naming the holder.
A lock whose holder is dead (same host, no such pid) is stale: it is taken over with a warning.
A lock from another host cannot be checked; the error says which file to delete once that run is gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from vitmech.io.atomic import temporary_name
from vitmech.io.errors import LockHeldError
from vitmech.io.process import pid_alive

logger = logging.getLogger(__name__)

LOCK_NAME = ".vitmech.lock"
_held: set[str] = set()  # lock files held by this process (so a leaked file with our pid is known stale)
_held_guard = threading.Lock()


def read_holder(lock_file: str | Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file ({"pid", "host", "started", "what"}), None if absent or unreadable."""
    try:
        data = json.loads(Path(lock_file).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown writer (unreadable lock file)"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')}"


def is_stale(lock_file: str | Path, holder: dict[str, Any] | None) -> bool:
    """True when the holder is certainly gone: same host and its pid is dead (or is us, without holding it)."""
    if holder is None or holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        with _held_guard:
            return str(Path(lock_file).resolve()) not in _held
    return not pid_alive(pid)


class WriterLock:
    """An exclusive, non-blocking lock on `lock_file` (a context manager; `acquire`/`release` also work)."""

    def __init__(self, lock_file: str | Path, what: str = "", keep_on_error: bool = False) -> None:
        """keep_on_error: a lock dropped without `release` (the writer raised) stays on disk as the mark of
        an unfinished write (readers refuse the folder; the next writer takes it over as stale)."""
        self.lock_file = Path(lock_file)
        self.what = what or str(self.lock_file.parent)
        self.keep_on_error = keep_on_error
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "what": self.what,
        }

    def acquire(self) -> WriterLock:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(self.lock_file)
        tmp.write_text(json.dumps(self._record()) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.lock_file)
                except FileExistsError:
                    holder = read_holder(self.lock_file)
                    if is_stale(self.lock_file, holder):
                        logger.warning(
                            "taking over the stale lock %s of %s (that process is gone)",
                            self.lock_file,
                            describe_holder(holder),
                        )
                        with contextlib.suppress(FileNotFoundError):
                            self.lock_file.unlink()
                        continue
                    raise LockHeldError(
                        f"{self.what} is being written by another process ({describe_holder(holder)}; lock file "
                        f"{self.lock_file}). Wait for it to finish or use another folder; if that process is "
                        "gone (e.g. it ran on another host), delete the lock file",
                        path=self.lock_file,
                    ) from None
                else:
                    break
            else:
                raise LockHeldError(f"could not take the lock {self.lock_file} (it keeps changing hands)")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        with _held_guard:
            _held.add(str(self.lock_file.resolve()))
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        holder = read_holder(self.lock_file)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                self.lock_file.unlink()
        with _held_guard:
            _held.discard(str(self.lock_file.resolve()))
        self.held = False

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and self.keep_on_error:
            self._abandon()
        else:
            self.release()

    def _abandon(self) -> None:
        """Forget the lock without deleting its file (it then reads as stale: this process no longer holds it)."""
        if self.held:
            with _held_guard:
                _held.discard(str(self.lock_file.resolve()))
            self.held = False

    def __del__(self) -> None:  # a lock dropped without release (an exception) must not block this process
        with contextlib.suppress(Exception):
            if self.keep_on_error:
                self._abandon()
            else:
                self.release()


def check_not_being_written(lock_file: str | Path, what: str) -> None:
    """For readers: IncompleteWriteError if a writer holds (or died holding) `lock_file`."""
    from vitmech.io.errors import IncompleteWriteError

    lock_file = Path(lock_file)
    if not lock_file.exists():
        return
    holder = read_holder(lock_file)
    state = "died before finishing" if is_stale(lock_file, holder) else "is still writing it"
    raise IncompleteWriteError(
        f"{what} is incomplete: its writer ({describe_holder(holder)}) {state} (lock file {lock_file}). "
        "Wait for the writer, or write it again",
        path=lock_file,
    )


__all__ = [
    "LOCK_NAME",
    "WriterLock",
    "check_not_being_written",
    "describe_holder",
    "is_stale",
    "pid_alive",
    "read_holder",
]
