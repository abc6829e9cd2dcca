"""Every Python block in README.md and docs/*.md runs as written (offline, on the shipped models).

The blocks of one page run in order in one namespace, so a page can build on its earlier blocks. A block
that cannot run here (it needs a model hub, or writes thousands of files) is marked on the line before its
fence with `<!-- doc-test: skip: REASON -->`; it must still parse, and the reason must be given."""

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


def test_skip_markers_are_few_and_explained():
    all_blocks = [b for page in PAGES for b in python_blocks(page)]
    skipped = [b for b in all_blocks if b[2] is not None]
    assert all(len(reason) > 10 for _, _, reason in skipped)
    assert len(skipped) <= len(all_blocks) // 2, "mark blocks as not runnable sparingly"


SLOW_PAGES = {"ablation.md"}  # full 144-head sweeps of the shipped model: `make test-all`


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p for p in PAGES if python_blocks(p)],
    ids=lambda p: p.name,
)
def test_page_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    namespace: dict[str, object] = {"__name__": f"doc_{page.stem}"}
    for line, code, reason in python_blocks(page):
        tree = ast.parse(code, filename=f"{page.name}:{line}")  # every block parses, skipped or not
        if reason is not None:
            continue
        exec(compile(tree, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102
