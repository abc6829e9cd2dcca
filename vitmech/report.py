"""Report folders: a Markdown report with its tables, every number as CSV/JSON, and the figures as PNG.

    report = Report("reports/before_after", title="Before vs after fine-tuning")
    report.add_text("Models: ...")
    report.add_table("summary", rows, caption="Before vs after")     # summary.csv + a Markdown table
    report.add_json("settings", {"renormalise": True})                # settings.json
    report.add_figure("entropy_by_layer", fig, caption="...")         # entropy_by_layer.png
    report.write()                                                    # report.md + index.json

Every file is written as soon as it is added, so an interrupted run keeps what it produced.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
        raise TypeError("add_table takes rows (a list of dicts) or a DataFrame; use add_json for a mapping")
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


class Report:
    """A folder holding report.md, one CSV per table, JSON files and PNG figures."""

    def __init__(self, directory: str | Path, title: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.title = title
        self._sections: list[str] = []
        self._artifacts: list[str] = []

    def path(self, name: str) -> Path:
        return self.directory / name

    def _record(self, filename: str) -> Path:
        if filename not in self._artifacts:
            self._artifacts.append(filename)
        return self.directory / filename

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
        with path.open("w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(columns or rows[0].keys()), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        if show:
            heading = f"**{caption}** ([{name}.csv]({name}.csv))" if caption else f"[{name}.csv]({name}.csv)"
            self._sections.append(heading + "\n\n" + markdown_table(rows, float_format, columns))
        return path

    def add_json(self, name: str, data: Any) -> Path:
        path = self._record(f"{name}.json")
        path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
        return path

    def add_figure(self, name: str, figure: Any, caption: str = "", dpi: int = 110) -> Path:
        """Save a matplotlib figure as `name.png` (and close it) and show it in report.md."""
        import matplotlib.pyplot as plt

        path = self._record(f"{name}.png")
        figure.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(figure)
        self._sections.append(f"![{caption or name}]({name}.png)" + (f"\n\n_{caption}_" if caption else ""))
        return path

    def write(self) -> Path:
        """Write report.md and index.json (the list of files); returns report.md's path."""
        body = "\n\n".join([f"# {self.title}", *self._sections]) + "\n"
        md = self.directory / "report.md"
        md.write_text(body)
        (self.directory / "index.json").write_text(
            json.dumps({"title": self.title, "files": self._artifacts}, indent=2) + "\n"
        )
        logger.info("report written to %s", md)
        return md
