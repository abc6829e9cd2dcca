"""Report folders: a Markdown report with its tables, every number as CSV/JSON, and the figures as PNG.

    report = Report("reports/before_after", title="Before vs after fine-tuning")
    report.add_text("Models: ...")
    report.add_table("summary", rows, caption="Before vs after")     # summary.csv + a Markdown table
    report.add_json("settings", {"renormalise": True})                # settings.json
    report.add_figure("entropy_by_layer", fig, caption="...")         # entropy_by_layer.png
    report.write()                                                    # report.md + index.json

A run writes into a hidden staging folder inside the report folder (`.report.tmp-<pid>-<random>`) and
`write()` moves its files in, `index.json` last (the list of files with their sizes and SHA-256,
and who wrote them); `verify_report` checks a folder against it. A lock file (`.report.lock`, naming
pid and host) keeps a second run out of the folder while one writes, so a folder never mixes two runs'
files. Figures and tables are written atomically (temporary name, then rename).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitmech.errors import InputTypeError
from vitmech.io.atomic import atomic_write, atomic_write_text, fsync_dir, remove_stale_temporaries, temporary_name
from vitmech.io.errors import CorruptFileError, IncompleteWriteError
from vitmech.io.lock import WriterLock, check_not_being_written
from vitmech.io.manifest import created_by, file_digest
from vitmech.io.readers import read_json

logger = logging.getLogger(__name__)

Rows = Sequence[Mapping[str, Any]]


def _plain(value: Any) -> Any:
    """JSON-able scalars from numpy/torch values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _rows(table: Any) -> list[dict[str, Any]]:
    """Rows from a list of dicts, a pandas DataFrame, or an object with to_frame()."""
    if hasattr(table, "to_frame") and not hasattr(table, "to_dict"):
        table = table.to_frame()
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        return [{k: _plain(v) for k, v in row.items()} for row in table.to_dict(orient="records")]
    if isinstance(table, Mapping):
        raise InputTypeError("add_table takes rows (a list of dicts) or a DataFrame; use add_json for a mapping")
    return [{k: _plain(v) for k, v in dict(row).items()} for row in table]


def _fmt(value: Any, float_format: str) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, float_format)
    return str(value)


def markdown_table(rows: Rows, float_format: str = ".4g", columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of the rows."""
    if not rows:
        return "_(empty table)_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, ""), float_format) for c in columns) + " |")
    return "\n".join(lines)


REPORT_LOCK = ".report.lock"
INDEX = "index.json"


class Report:
    """A folder holding report.md, one CSV per table, JSON files and PNG figures (see the module docstring)."""

    def __init__(self, directory: str | Path, title: str, random_weights: Sequence[str] | None = None) -> None:
        """random_weights: names of randomly initialised models the report is computed from; when any,
        report.md opens with a warning, every figure is stamped (`vitmech.viz.stamp`) and JSON carries them."""
        self.random_weights = list(random_weights or [])
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.directory / REPORT_LOCK, what=f"report folder {self.directory}").acquire()
        remove_stale_temporaries(self.directory)  # staging folders of killed runs
        self._staging = temporary_name(self.directory / "report")
        self._staging.mkdir()
        self.title = title
        self._sections: list[str] = []
        self._artifacts: list[str] = []
        if self.random_weights:
            from vitmech.viz.stamp import RANDOM_WEIGHTS

            self.title = f"{title} ({RANDOM_WEIGHTS})"
            self.add_text(
                f"> **{RANDOM_WEIGHTS}**: {', '.join(f'`{n}`' for n in self.random_weights)} "
                "had no pretrained weights available and were built with random weights (--random-init). "
                "Nothing here describes a trained model."
            )

    def path(self, name: str) -> Path:
        """Where to write an extra artifact `name` before `write()` (the staging folder)."""
        return self._staging / name

    def _record(self, filename: str) -> Path:
        if filename not in self._artifacts:
            self._artifacts.append(filename)
        return self._staging / filename

    def add_text(self, markdown: str) -> None:
        self._sections.append(markdown.strip())

    def add_table(
        self,
        name: str,
        table: Any,
        caption: str | None = None,
        float_format: str = ".4g",
        columns: Sequence[str] | None = None,
        show: bool = True,
    ) -> Path:
        """Write `name.csv`; with show=True also put the table in report.md."""
        rows = _rows(table)
        path = self._record(f"{name}.csv")

        def write_csv(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                if rows:
                    writer = csv.DictWriter(f, fieldnames=list(columns or rows[0].keys()), extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(rows)

        atomic_write(path, write_csv)
        if show:
            heading = f"**{caption}** ([{name}.csv]({name}.csv))" if caption else f"[{name}.csv]({name}.csv)"
            self._sections.append(heading + "\n\n" + markdown_table(rows, float_format, columns))
        return path

    def add_json(self, name: str, data: Any) -> Path:
        if self.random_weights and isinstance(data, Mapping):
            data = {"random_weights": self.random_weights, **data}
        path = self._record(f"{name}.json")
        atomic_write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")
        return path

    def add_figure(self, name: str, figure: Any, caption: str = "", dpi: int = 110) -> Path:
        """Save a matplotlib figure as `name.png` (and close it) and show it in report.md; stamped RANDOM
        WEIGHTS (on the figure, its caption and its PNG metadata) when the report has random weights."""
        import matplotlib.pyplot as plt

        from vitmech.viz.stamp import RANDOM_WEIGHTS, png_metadata, stamp_random

        if self.random_weights:
            stamp_random(figure, self.random_weights)
            caption = f"{RANDOM_WEIGHTS}. {caption}" if caption else RANDOM_WEIGHTS
        metadata = png_metadata(figure)
        path = self._record(f"{name}.png")
        atomic_write(
            path, lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png", metadata=metadata)
        )
        plt.close(figure)
        self._sections.append(f"![{caption or name}]({name}.png)" + (f"\n\n_{caption}_" if caption else ""))
        return path

    def write(self) -> Path:
        """Move the run's files in, then write index.json (files, sizes, hashes); returns report.md's path."""
        body = "\n\n".join([f"# {self.title}", *self._sections]) + "\n"
        atomic_write_text(self._staging / "report.md", body)
        files = [*self._artifacts, "report.md"]
        index = self.directory / INDEX
        previous = self._previous_files()
        index.unlink(missing_ok=True)  # the folder is in flux until the new index is written
        fsync_dir(self.directory)
        for name in sorted(previous - set(files)):  # the previous run's files this run does not replace
            (self.directory / name).unlink(missing_ok=True)
        for name in files:
            os.replace(self._staging / name, self.directory / name)
        fsync_dir(self.directory)
        payload = {
            "title": self.title,
            "files": self._artifacts,
            "manifest": {name: file_digest(self.directory / name) for name in files},
            "created_by": created_by(),
        }
        atomic_write_text(index, json.dumps(payload, indent=2) + "\n")
        shutil.rmtree(self._staging, ignore_errors=True)
        self._lock.release()
        md = self.directory / "report.md"
        logger.info("report written to %s", md)
        return md

    def _previous_files(self) -> set[str]:
        """The files the folder's current index.json lists (none if it has no readable index)."""
        try:
            payload = json.loads((self.directory / INDEX).read_text())
        except (OSError, ValueError):
            return set()
        if not isinstance(payload, dict):
            return set()
        names = {*payload.get("files", []), *payload.get("manifest", {}), "report.md"}
        return {n for n in names if isinstance(n, str) and n == Path(n).name and not n.startswith(".")}


def verify_report(directory: str | Path) -> dict[str, Any]:
    """index.json of a report folder after checking every listed file's size and SHA-256.

    Raises IncompleteWriteError (a run is writing it, died, or files are missing) or CorruptFileError
    (a file differs from the index), naming the file.
    """
    directory = Path(directory)
    check_not_being_written(directory / REPORT_LOCK, f"report folder {directory}")
    index_file = directory / INDEX
    if not index_file.is_file():
        raise IncompleteWriteError(
            f"report folder {directory} has no {INDEX}: no run finished writing it", path=index_file
        )
    index = read_json(index_file, what="report index")
    for name, expected in index.get("manifest", {}).items():
        path = directory / name
        if not path.is_file():
            raise IncompleteWriteError(f"report folder {directory} lacks {name} (listed in {INDEX})", path=path)
        if file_digest(path) != expected:
            raise CorruptFileError(f"{path} differs from the copy recorded in {index_file}", path=path)
    return index
