"""Atomic writes: a file appears complete under its final name or not at all.

Each write goes to a unique temporary name in the same folder (so two writers never share one),
is flushed and fsynced, then renamed over the final name with `os.replace` (atomic on POSIX), and the
folder is fsynced so the rename survives a power cut. A killed writer leaves at most a hidden
`.<name>.tmp-<pid>-<random>` file, which readers ignore and `remove_stale_temporaries` cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from vitmech.io.process import pid_alive

TMP_MARK = ".tmp-"


def temporary_name(path: str | Path) -> Path:
    """A unique hidden sibling of `path`: `.<name>.tmp-<pid>-<8 hex>` (same folder, same file system)."""
    path = Path(path)
    return path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(directory: str | Path) -> None:
    """Make renames and creations inside `directory` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)` (any writer taking a path: safetensors, parquet, savefig), then commit.

    Returns the final path. On any exception the temporary file is removed and the final name untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def staging_dir(final: str | Path) -> Iterator[Path]:
    """A fresh hidden sibling folder of `final` to fill; removed if the block raises (see `commit_dir`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_dir(staged: str | Path, final: str | Path) -> Path:
    """Rename the filled folder `staged` to `final`, replacing an older `final` (moved aside, then deleted).

    Between the two renames `final` is briefly absent; the older copy then sits at `.<name>.old-...`
    (named by `previous_versions`), never half-overwritten.
    """
    staged, final = Path(staged), Path(final)
    for path in staged.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(staged)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(final, old)
        except FileNotFoundError:  # another writer moved it first
            old = None
    try:
        os.rename(staged, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        # another writer committed its complete copy in between: keep that one, drop ours
        shutil.rmtree(staged, ignore_errors=True)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def previous_versions(final: str | Path) -> list[Path]:
    """Older copies of `final` set aside by an interrupted `commit_dir`."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    return sorted(final.parent.glob(f".{final.name}.old-*"))


def is_temporary(path: str | Path) -> bool:
    """True for names made by `temporary_name` / `commit_dir` (readers skip them)."""
    name = Path(path).name
    return name.startswith(".") and (TMP_MARK in name or ".old-" in name)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete temporaries in `directory` left by writers that are no longer running on this host."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if not (path.name.startswith(".") and TMP_MARK in path.name):
            continue
        try:
            pid = int(path.name.rsplit(TMP_MARK, 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit_dir",
    "fsync_dir",
    "is_temporary",
    "previous_versions",
    "remove_stale_temporaries",
    "staging_dir",
    "temporary_name",
]
