"""Every Python block in README.md and docs/*.md runs as written (offline, on the shipped models), in the
default test run: pages use quick sizes (a few images, small data sets) so that they can.

The blocks of one page run in order in one namespace, so a page can build on its earlier blocks. No block is
skipped: a recipe that needs a model hub shows a local stand-in that runs (e.g. a hub-layout copy of a data
set) and names the hub call in its text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*doc-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->")


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of each ```python block."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            before = lines[i - 1] if i else ""
            marker = SKIP.search(before)
            blocks.append((start + 1, "\n".join(lines[start:end]), marker.group("reason") if marker else None))
            i = end
        i += 1
    return blocks


def test_no_block_is_skipped_and_every_page_runs_by_default():
    all_blocks = [b for page in PAGES for b in python_blocks(page)]
    assert len(all_blocks) >= 15
    assert not [b for b in all_blocks if b[2] is not None], "a docs block is marked not to run"
    assert not any("doc-test" in page.read_text() for page in PAGES)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_page_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    namespace: dict[str, object] = {"__name__": f"doc_{page.stem}"}
    for line, code, _ in python_blocks(page):
        tree = ast.parse(code, filename=f"{page.name}:{line}")
        exec(compile(tree, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102
