"""Where a study writes: `--out`, or runs/<command>-<time>/ under the current folder; an existing
non-empty folder only with --force (or --resume/--restart for resumable studies). Reports of random
weights are stamped on every page and figure."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from vitmech.cli.models import RANDOM_WEIGHTS
from vitmech.report import Report


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


def stamp_random(figure: Any) -> None:
    """Write RANDOM WEIGHTS across a matplotlib figure."""
    figure.text(
        0.5,
        0.5,
        RANDOM_WEIGHTS,
        ha="center",
        va="center",
        rotation=25,
        fontsize=36,
        color="red",
        alpha=0.35,
        weight="bold",
        zorder=1000,
    )


class StudyReport(Report):
    """A Report that, for random weights, says so first in report.md and across every figure."""

    def __init__(self, directory: str | Path, title: str, random_weights: list[str] | None = None) -> None:
        super().__init__(directory, title)
        self.random_weights = list(random_weights or [])
        if self.random_weights:
            self.title = f"{title} ({RANDOM_WEIGHTS})"
            self.add_text(
                f"> **{RANDOM_WEIGHTS}**: {', '.join(f'`{n}`' for n in self.random_weights)} "
                "had no pretrained weights available and were built with random weights (--random-init). "
                "Nothing here describes a trained model."
            )

    def add_figure(self, name: str, figure: Any, caption: str = "", dpi: int = 110) -> Path:
        if self.random_weights:
            stamp_random(figure)
            caption = f"{RANDOM_WEIGHTS}. {caption}" if caption else RANDOM_WEIGHTS
        return super().add_figure(name, figure, caption, dpi)

    def add_json(self, name: str, data: Any) -> Path:
        if self.random_weights and isinstance(data, dict):
            data = {"random_weights": self.random_weights, **data}
        return super().add_json(name, data)


def study_report(out: Path, title: str, loaded: list[Any]) -> StudyReport:
    return StudyReport(out, title, [m.name for m in loaded if getattr(m, "random", False)])
