"""Hook names are spelled by transformer_lens' `get_act_name`, not by hand.

`get_act_name("pattern", 3)` gives `blocks.3.attn.hook_pattern`; a hand-built f-string (`f"blocks.{l}.attn.
hook_pattern"`) or concatenation (`prefix + "attn.hook_z"`) breaks silently when a name moves. This test reads
the library's source (ast: docstrings and comments do not count) and flags string pieces that spell a
per-layer hook name. The model (`vitmech/model/`) registers the names, and `vitmech/hook_names.py` parses them:
both are exempt. State-dict keys (`blocks.3.attn.W_Q`) are not hook names and are not flagged.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from transformer_lens.utilities import get_act_name

ROOT = Path(__file__).resolve().parents[2]
EXEMPT = ("vitmech/model/", "vitmech/hook_names.py")
HOOK_PIECE = re.compile(r"(^|\.)(attn\.|mlp\.|ln\d?\.)?hook_[a-z_]+")
LAYER_PREFIX = re.compile(r"blocks\.(\{[^}]*\}|\d+)\.")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _spelled(node: ast.AST) -> str | None:
    """The text of a string literal or f-string (`{}` for each placeholder); None for other nodes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def hand_spelled_hook_names(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string that builds a per-layer hook name by hand."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    skip |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    glued = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:  # docstrings, and the pieces of an f-string (the f-string is read whole)
            continue
        text = _spelled(node)
        if text is None or " " in text.strip():  # messages and prose, not names
            continue
        prefix = LAYER_PREFIX.search(text)
        spells_whole_name = bool(prefix and HOOK_PIECE.search(text[prefix.end() - 1 :]))
        glued_onto_prefix = id(node) in glued and bool(HOOK_PIECE.match(text))  # `prefix + "attn.hook_z"`
        if spells_whole_name or glued_onto_prefix:
            found.append((node.lineno, text))
    return found


def _library_files() -> list[Path]:
    files = sorted((ROOT / "vitmech").rglob("*.py"))
    return [p for p in files if not str(p.relative_to(ROOT)).startswith(EXEMPT)]


def test_the_library_spells_no_hook_name_by_hand() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}: use transformer_lens.utilities.get_act_name"
        for path in _library_files()
        for line, text in hand_spelled_hook_names(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def test_the_scan_catches_each_hand_spelling() -> None:
    """Each way of spelling a hook name by hand is caught; get_act_name, state-dict keys and prose are not."""
    caught = [
        'name = f"blocks.{layer}.attn.hook_pattern"',
        'name = "blocks.0.hook_resid_pre"',
        'name = f"blocks.{i}.mlp.hook_post"',
        'c = f"blocks.{layer}."\nx = cache[c + "attn.hook_z"]',
        'c = "blocks.3."\nx = cache[c + "hook_resid_mid"]',
    ]
    for source in caught:
        assert hand_spelled_hook_names(source), source
    passed = [
        'name = get_act_name("pattern", layer)',
        'key = f"blocks.{layer}.attn.W_Q"',
        'raise ValueError(f"cannot recompute blocks.{layer} hook_z here")',
        'def f():\n    """Reads blocks.{l}.attn.hook_pattern."""',
        'names = [n for n in names if n.endswith("attn.hook_pattern")]',
    ]
    for source in passed:
        assert not hand_spelled_hook_names(source), source


def test_get_act_name_spells_the_names_the_model_registers(tiny_vit) -> None:
    """The helper and the model agree, so replacing hand spellings by it changes no name."""
    for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "post", "z", "pattern", "q", "k", "v"):
        assert get_act_name(name, 0) in tiny_vit.hook_dict, name
