"""Every `x.md#anchor` link in the package, the docs and the scripts names a heading that exists.

Anchors follow GitHub's slugs: the heading's text lower-cased, punctuation other than `-` and `_` dropped,
spaces turned into `-`; a repeated heading gets `-1`, `-2`, ... Headings inside code fences do not count.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLACES = ["vitmech", "docs", "experiments", "benchmarks", "scripts", "README.md"]
SUFFIXES = {".py", ".md", ".txt", ".toml", ".json"}
LINK = re.compile(r"(?<![\w/.-])([\w./-]*\.md)#([\w-]+)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = None if in_fence else HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(re.findall(r"<a\s+(?:name|id)=\"([\w-]+)\"", markdown))
    return found


def _files() -> list[Path]:
    files = []
    for place in PLACES:
        path = ROOT / place
        if not path.exists():
            continue
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return files


def _target(source: Path, link: str) -> Path:
    """`docs/x.md` from the repository root; a bare `x.md` beside the linking file, else in docs/."""
    for base in (ROOT, source.parent, ROOT / "docs"):
        if (base / link).is_file():
            return (base / link).resolve()
    return ROOT / link


def _links() -> list[tuple[str, Path, str]]:
    return [
        (f"{path.relative_to(ROOT)}:{number}", _target(path, match.group(1)), match.group(2))
        for path in _files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for match in LINK.finditer(line)
    ]


def test_the_scan_finds_the_links():
    links = _links()
    assert len(links) >= 30
    assert any(where.startswith("vitmech/") for where, _, _ in links)
    assert any(where.startswith("docs/") for where, _, _ in links)


def test_every_docs_anchor_names_a_heading():
    cache: dict[Path, set[str]] = {}
    broken = []
    for where, target, anchor in _links():
        if not target.is_file():
            broken.append(f"{where}: {target.relative_to(ROOT)} does not exist")
            continue
        if target not in cache:
            cache[target] = anchors(target.read_text())
        if anchor not in cache[target]:
            broken.append(f"{where}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, "broken docs links:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Definitions and sources", "definitions-and-sources"),
        ("Data (`benchmarks/data.py`)", "data-benchmarksdatapy"),
        (
            "Weights: TransformerLens conventions (right-multiplying)",
            "weights-transformerlens-conventions-right-multiplying",
        ),
        (
            "Token layouts: registers, distillation and no class token",
            "token-layouts-registers-distillation-and-no-class-token",
        ),
    ],
)
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_repeated_headings_and_fenced_lines():
    text = "# Cost\n\n## Cost\n\n```\n# not a heading\n```\n"
    assert anchors(text) == {"cost", "cost-1"}
