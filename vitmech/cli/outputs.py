"""Where a study writes: `--out`, or runs/<command>-<time>/ under the current folder; an existing
non-empty folder only with --force (or --resume/--restart for resumable studies). Reports of random
weights are stamped on every page and figure."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from vitmech.report import Report
from vitmech.viz.stamp import RANDOM_WEIGHTS, stamp_random

__all__ = ["RANDOM_WEIGHTS", "StudyReport", "output_dir", "stamp_random", "study_report"]


def output_dir(args: argparse.Namespace, resumable_parts: tuple[str, ...] = ()) -> Path:
    """The run folder for `args` (created). A non-empty existing folder is refused unless --force, or
    --resume / --restart (which first deletes `resumable_parts`, the checkpoints or stores)."""
    if args.out:
        out = Path(args.out).expanduser()
    else:
        out = Path("runs") / f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file, not a folder")
    busy = out.is_dir() and any(out.iterdir())
    resume, restart = getattr(args, "resume", False), getattr(args, "restart", False)
    if busy and not (args.force or resume or restart):
        hint = " --resume to continue its run, --restart to start over," if resumable_parts else ""
        raise SystemExit(
            f"error: the output folder {out} exists and is not empty; pass a new --out,{hint} or --force to write into it"
        )
    if restart:
        for part in resumable_parts:
            target = out / part
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    return out


class StudyReport(Report):
    """A Report of a study: for random weights it says so first in report.md and across every figure
    (`Report(random_weights=...)`, `vitmech.viz.stamp`)."""

    def __init__(self, directory: str | Path, title: str, random_weights: list[str] | None = None) -> None:
        super().__init__(directory, title, random_weights=random_weights)


def study_report(out: Path, title: str, loaded: list[Any]) -> StudyReport:
    return StudyReport(out, title, [m.name for m in loaded if getattr(m, "random", False)])
