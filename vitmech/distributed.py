"""Work split across processes with torch.distributed (launched by `torchrun` or `accelerate launch`).

    torchrun --nproc_per_node=4 experiments/07_head_ablation_heatmap.py ...   # or: accelerate launch ...

    with distributed_session() as ranks:          # gloo on CPU, nccl on GPU; one process: a no-op
        table = stream_ablation_sweep(model, dataset, cells, "kl_to_clean", store="runs/sweep")
        if ranks.is_main:
            write_report(table)                    # every rank holds the reduced result; rank 0 writes

The streamed analyses (`vitmech.analysis.streaming`) read the process group themselves: batch b (and,
for sweeps, each (batch, chunk of cells) unit) belongs to rank `unit % world_size`, each rank reduces
its own batches into mergeable accumulators, and one `all_gather_object` collective merges them in
rank order, so every rank returns the same result as one process would. See docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from vitmech.errors import RuntimeSettingError

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
WAIT_TIMEOUT = datetime.timedelta(days=7)
"""How long the other ranks wait for rank 0 doing a one-process step (fine-tuning can take hours)."""

_alone: list[bool] = []  # non-empty inside `alone()`


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank in [0, world_size)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes reports and merges stores."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    def owns(self, unit: int) -> bool:
        """Whether work unit number `unit` (a batch, a (batch, cells) pair) is this rank's."""
        return unit % self.world_size == self.rank


def current() -> Ranks:
    """The ranks of the initialised default process group (one process when there is none, or inside
    `alone()`)."""
    if not _alone and dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_backend() -> str:
    """nccl when this process has a CUDA GPU, else gloo."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_process_group(
    backend: str | None = None,
    *,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Ranks:
    """Join the default process group (reads RANK / WORLD_SIZE / MASTER_ADDR from a launcher's environment
    unless given). With nccl, the process uses GPU LOCAL_RANK. Returns this process's ranks."""
    if dist.is_initialized():
        return current()
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise RuntimeSettingError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=30)}
    if init_method is not None:
        kwargs.update(init_method=init_method, rank=rank, world_size=world_size)
    dist.init_process_group(**kwargs)
    ranks = current()
    logger.info("rank %d of %d joined the %s process group", ranks.rank, ranks.world_size, backend)
    return ranks


@contextlib.contextmanager
def distributed_session(backend: str | None = None) -> Iterator[Ranks]:
    """Join the process group when a launcher started several processes, leave it at the end; in a plain
    `python` run this yields one rank and does nothing."""
    if not launched() or dist.is_initialized():
        yield current()
        return
    ranks = init_process_group(backend)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process acts as the only one: `current()` is one rank, so the streamed analyses read
    every batch and use no collective (rank 0 doing a step the other ranks skip)."""
    _alone.append(True)
    try:
        yield
    finally:
        _alone.pop()


def exit_status(exit: SystemExit) -> int:
    """The process exit status a `SystemExit` stands for (0 for None, 1 for a message)."""
    if exit.code is None:
        return 0
    return exit.code if isinstance(exit.code, int) else 1


def run_on_main(step: Callable[[], int], what: str) -> int:
    """Run `step` (returning an exit status) on rank 0 alone while the other ranks wait for it.

    Outside a process group this is `step()`. Inside one, rank 0 runs `step` within `alone()` and logs
    that it did; the others wait (on a gloo group with a `WAIT_TIMEOUT` time-out, so long steps do not
    trip the default 30-minute one) and return rank 0's exit status. An exception on rank 0 is re-raised
    there after the others have been told (they return 1, or rank 0's `SystemExit` status).
    """
    ranks = current()
    if not ranks.active:
        return int(step() or 0)

    def on_main() -> int:
        if not ranks.is_main:
            return 0
        logger.warning(
            "%s does not split across processes: rank 0 runs it alone, the other %d rank(s) wait and exit with "
            "its status",
            what,
            ranks.world_size - 1,
        )
        with alone():
            return int(step() or 0)

    return run_together(on_main)


def run_together(step: Callable[[], int]) -> int:
    """Run `step` (returning an exit status) on every rank, then end together: every rank waits for rank 0
    to finish (on a gloo group with a `WAIT_TIMEOUT` time-out: rank 0 may write reports for a long time
    after the shared work) and returns rank 0's status where its own is 0. An exception is re-raised on
    its rank after the wait; rank 0's failure is told to the others (status 1, or its `SystemExit` status).
    Outside a process group this is `step()`."""
    if not current().active:
        return int(step() or 0)
    group = cast(dist.ProcessGroup, dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))  # every rank is in it
    status: list[Any] = [0]
    failure: BaseException | None = None
    try:
        status[0] = int(step() or 0)
    except SystemExit as exit:
        failure, status[0] = exit, exit_status(exit)
    except BaseException as error:  # told to the others, then re-raised
        failure, status[0] = error, 1
    own = status[0]
    dist.broadcast_object_list(status, src=0, group=group)
    dist.destroy_process_group(group)
    if failure is not None:
        raise failure
    return own or int(status[0])


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if current().active:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` in one process). Objects are pickled:
    keep them small (running sums, per-image scalars), with tensors on the CPU."""
    ranks = current()
    if not ranks.active:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


__all__ = [
    "BACKENDS",
    "WAIT_TIMEOUT",
    "Ranks",
    "alone",
    "barrier",
    "current",
    "default_backend",
    "distributed_session",
    "exit_status",
    "gather_objects",
    "init_process_group",
    "launched",
    "run_on_main",
    "run_together",
]
