"""The static import graph of vitmech/: no cycles, and loading/ never reaches model/hooked_vit.py.

Read with ast, not by importing: an edge A -> B is an explicit `import B` / `from B import x` in A (relative
imports resolved; `from pkg import mod` points at the module), at any depth of A's code, including imports
inside functions, which still tie the two modules together. Imports under `if TYPE_CHECKING:` are left out:
they never run. Implicit imports of parent packages are left out too (every module would otherwise reach
vitmech/__init__.py); an explicit `from vitmech.model import X` counts as importing vitmech/model/__init__.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "vitmech"
HOOKED_VIT = "vitmech.model.hooked_vit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if _type_checking_block(node):
            yield from (n for child in node.orelse for n in _imports_of(child))  # type: ignore[attr-defined]
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The vitmech modules `name` (at `path`) imports explicitly, outside TYPE_CHECKING blocks."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Modules reachable from `start`, each with the module it was first reached from."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        v = frontier.pop()
        for w in sorted(graph.get(v, ())):
            if w not in parent and w != start:
                parent[w] = v
                frontier.append(w)
    return parent


def _path(parent: dict[str, str], start: str, end: str) -> list[str]:
    chain = [end]
    while chain[-1] != start:
        chain.append(parent[chain[-1]])
    return chain[::-1]


# ------------------------------------------------------------------------------------------- the checker


def test_the_reader_resolves_imports_and_finds_cycles(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    parent = reachable(graph, "d")
    assert _path(parent, "d", "c") == ["d", "a", "b", "c"]
    known = modules()
    # relative and absolute imports, `from pkg import module`, and TYPE_CHECKING left out
    source = (
        "from typing import TYPE_CHECKING\n"
        "from vitmech.config import ViTConfig\n"
        "from . import attention\n"
        "from ..tokens import token_layout\n"
        "if TYPE_CHECKING:\n    from vitmech.model.hooked_vit import HookedViT\n"
        "def f():\n    import vitmech.errors\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    deps = imported_modules("vitmech.analysis._probe", probe, known)
    assert deps == {"vitmech.config", "vitmech.analysis.attention", "vitmech.tokens", "vitmech.errors"}


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert HOOKED_VIT in graph and "vitmech.loading.timm" in graph
    assert "vitmech.config" in graph[HOOKED_VIT]  # a known edge


# ------------------------------------------------------------------------------------------- the rules


def test_loading_does_not_import_the_hooked_model():
    graph = import_graph()
    offenders = []
    for name in sorted(graph):
        if name == "vitmech.loading" or name.startswith("vitmech.loading."):
            parent = reachable(graph, name)
            if HOOKED_VIT in parent:
                offenders.append(" -> ".join(_path(parent, name, HOOKED_VIT)))
    assert not offenders, "loading/ reaches model/hooked_vit.py:\n" + "\n".join(offenders)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in vitmech/:\n" + "\n".join(" <-> ".join(c) for c in found)
