"""Thread policy: torch's intra-op thread count belongs to the caller.

No vitmech function changes `torch.set_num_threads` on its own. Where a caller wants a block of work
on a given number of threads (for example one thread per process on a shared CPU, or one per
rank under `torchrun`), it asks explicitly:

    with torch_threads(1):
        metrics = attention_metrics(patterns, model)

`torch_threads(None)` (the neutral default of every `num_threads=` option) leaves the setting alone.
See docs/performance.md#scale for measured effects of the thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vitmech.errors import RuntimeSettingError


def check_threads(n: int | None, name: str = "num_threads") -> int | None:
    """`n` if it is None or a positive int, else a clear error naming the option."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RuntimeSettingError(f"{name} must be a positive int or None (keep torch's setting), got {n!r}")
    return n


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block on `n` torch intra-op threads and restore the previous count after; None: no change."""
    n = check_threads(n)
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def apply_threads(n: int | None) -> None:
    """Set the process's intra-op thread count to `n` for good (a command line's `--threads`); None: no change.

    For scripts and command-line entry points acting on an explicit user choice; library functions use
    `torch_threads` (scoped) and only when the caller passes a thread count."""
    n = check_threads(n)
    if n is not None:
        torch.set_num_threads(n)


__all__ = ["apply_threads", "check_threads", "torch_threads"]
