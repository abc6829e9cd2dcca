"""The product speaks to its readers: no planning-document references or remarks about the build machines.

Citations are papers (authors year, arXiv id) or docs sections (`docs/x.md#anchor`); a reader has no access
to the notes the project was planned with.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLACES = ["vitmech", "docs", "experiments", "benchmarks", "README.md"]
SUFFIXES = {".py", ".md", ".json", ".txt", ".toml", ".cfg", ".yaml", ".yml"}
FORBIDDEN = {
    "planning document": re.compile(r"REFERENCE(\.md|\s*§|\s+section\b|'s formula|\s+says)", re.IGNORECASE),
    "source-document number": re.compile(r"\bseeds? 00\d\b", re.IGNORECASE),
    "issue number": re.compile(r"\bissue #?\d+\b", re.IGNORECASE),
    "build-machine remark": re.compile(
        r"\bour (busy |shared |quiet )*([\w-]+ )?(machines?|CPUs?|hardware|EPYC)\b|\bbuild machines?\b"
        r"|\b(busy|shared) (2|two)-core\b|\bother engineers\b",
        re.IGNORECASE,
    ),
}


def _product_files() -> list[Path]:
    files = []
    for place in PLACES:
        path = ROOT / place
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return files


def test_the_scan_reads_the_product():
    names = {p.relative_to(ROOT).as_posix() for p in _product_files()}
    assert {"README.md", "vitmech/analysis/attention.py", "docs/attention.md"} <= names


@pytest.mark.parametrize("kind", sorted(FORBIDDEN))
def test_no_planning_vocabulary(kind):
    pattern = FORBIDDEN[kind]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in _product_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, f"{kind} in the product (cite a paper or a docs anchor instead):\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "text",
    ["as REFERENCE §2 defines", "see REFERENCE.md", "seed 000's table", "(issue 6)", "our busy 2-core machine"],
)
def test_the_patterns_catch_the_phrases_they_are_for(text):
    assert any(p.search(text) for p in FORBIDDEN.values())
