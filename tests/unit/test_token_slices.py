"""No literal prefix-token slices outside vitmech/tokens.py.

Token positions are split by `vitmech.tokens.TokenLayout` (`patches`, `prefix`, `readout`, `class_token`,
`patch_position`), so models with registers, a distillation token or no class token work everywhere. This
test reads the source (ast, not regex, so strings and comments do not count) of the library and the
experiment scripts and flags the shapes a hand-written token slice takes:

- `1:` or `:1` / `0:1` on an axis of a multi-axis index: `pattern[..., 0, 1:]`, `x[:, 1:]`, `w[1:, 1:]`;
- `1:` / `:1` on a single axis of a token-bearing name: `w_pos[1:]`, `tokens[:1]`;
- a constant 0 after leading `:` / `...` axes on a token-bearing name or a cache entry: `resid[:, 0]`,
  `cache["hook_z"][:, 0]`, `pattern[:, :, 0]`;
- `1 + <grid expression>` and `n_tokens - 1`-style arithmetic: `1 + g * g`, `1 + row * g + col`;
- `F.pad(x, (1, 0, ...))` (a one-token prefix put back by hand).

Token-bearing names are those matching TOKEN_NAMES (patterns, residual streams, caches, position tables, the
hidden states of a block). ALLOWED lists the exceptions, each with its reason.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("vitmech", "experiments")
SKIPPED_DIRS = ("vitmech/data",)  # images and spectrograms: their arrays have no token axis
HELPER = "vitmech/tokens.py"
TOKEN_NAMES = re.compile(
    r"(pattern|resid|stream|token|scores|attn|cache|hook|embed|normali[sz]ed|w_pos|pos_embed|hidden|^x$|^z$)",
    re.IGNORECASE,
)
GRID_NAMES = {"g", "grid", "grid_size", "n_patches", "n_tokens", "gh", "gw"}

# (path, source snippet on the flagged line, reason): none needed today. Keep it short: prefer the helper.
ALLOWED: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    source: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.source.strip()}"


def _name(node: ast.AST) -> str:
    """The identifier a subscript is taken of: `x` for x, self.x, f(x).x; '' for calls and literals."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def _is_constant(node: ast.AST | None, value: int) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value == value


def _is_full(node: ast.AST) -> bool:
    """`:` or `...`."""
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return True
    return isinstance(node, ast.Slice) and node.lower is None and node.upper is None and node.step is None


def _one_token_slice(node: ast.AST) -> bool:
    """`1:`, `:1` or `0:1`."""
    if not isinstance(node, ast.Slice) or node.step is not None:
        return False
    from_one = _is_constant(node.lower, 1) and node.upper is None
    to_one = (node.lower is None or _is_constant(node.lower, 0)) and _is_constant(node.upper, 1)
    return from_one or to_one


def _mentions_grid(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id in GRID_NAMES for n in ast.walk(node)) or any(
        isinstance(n, ast.Attribute) and n.attr in GRID_NAMES for n in ast.walk(node)
    )


def _token_bearing(value: ast.AST) -> bool:
    if isinstance(value, ast.Subscript) and TOKEN_NAMES.search(_name(value.value) or ""):
        return True  # cache["..."][...] or pattern[l][...]
    return bool(TOKEN_NAMES.search(_name(value)))


def find_token_slices(source: str, path: str = "<string>") -> list[Finding]:
    """Every literal prefix-token slice in `source` (see the module docstring for the shapes)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found: list[Finding] = []

    def flag(node: ast.AST, rule: str) -> None:
        found.append(Finding(path, node.lineno, rule, lines[node.lineno - 1]))

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            index = node.slice
            if isinstance(index, ast.Tuple):
                if any(_one_token_slice(e) for e in index.elts) and "ax" not in _name(node.value).lower():
                    flag(node, "a one-token slice on an axis (use layout.patches / layout.prefix)")
                elif _token_bearing(node.value):
                    elts = index.elts
                    for position, element in enumerate(elts[1:], start=1):
                        if _is_constant(element, 0) and all(_is_full(e) for e in elts[:position]):
                            flag(node, "position 0 taken as the class token (use layout.class_token / readout)")
                            break
            elif _one_token_slice(index) and _token_bearing(node.value):
                flag(node, "a one-token slice of a token axis (use layout.patches / layout.prefix)")
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Add) and (
                (_is_constant(node.left, 1) and _mentions_grid(node.right))
                or (_is_constant(node.right, 1) and _mentions_grid(node.left))
            ):
                flag(node, "one prefix token added to a grid count (use layout.n_tokens / patch_position)")
            elif isinstance(node.op, ast.Sub) and _is_constant(node.right, 1) and _mentions_grid(node.left):
                flag(node, "one prefix token subtracted from a token count (use layout.n_patches)")
        elif isinstance(node, ast.Call) and _name(node.func) == "pad" and len(node.args) >= 2:
            widths = node.args[1]
            if isinstance(widths, ast.Tuple) and widths.elts and _is_constant(widths.elts[0], 1):
                flag(node, "a one-token prefix padded back by hand (use layout.pad_prefix)")
    # a BinOp inside a flagged BinOp is the same violation: keep the outermost per line and rule
    unique: dict[tuple[int, str], Finding] = {}
    for finding in found:
        unique.setdefault((finding.line, finding.rule), finding)
    return sorted(unique.values(), key=lambda f: (f.line, f.rule))


def _allowed(finding: Finding) -> bool:
    return any(finding.path == path and snippet in finding.source for path, snippet, _ in ALLOWED)


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for file in sorted((ROOT / top).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            if rel != HELPER and not rel.startswith(SKIPPED_DIRS):
                files.append(file)
    return files


def test_no_literal_token_slices_outside_the_helper():
    findings = []
    for file in scanned_files():
        rel = file.relative_to(ROOT).as_posix()
        findings += [f for f in find_token_slices(file.read_text(), rel) if not _allowed(f)]
    assert not findings, "literal prefix-token slices outside vitmech/tokens.py:\n" + "\n".join(map(str, findings))


def test_every_allowance_has_a_reason_and_a_file():
    for path, _, reason in ALLOWED:
        assert (ROOT / path).exists(), f"allowed file {path} is gone: drop its entry"
        assert len(reason) > 20, f"say why {path} may slice token positions"


@pytest.mark.parametrize(
    "planted",
    [
        "p = pattern[:, :, 0, 1:]",
        "row = patterns[..., token, 1:]",
        "d[1:, 1:] = distances",
        "cls = resid[:, 0]",
        "z = cache['blocks.0.attn.hook_z'][:, 0]",
        "first = hidden_states[:, 0:1]",
        "cls, patches = w_pos[:1], w_pos[1:]",
        "n = stream[..., 1:].mean(1)",
        "p = 1 + g * g",
        "index = 1 + row * grid_size + col",
        "g = math.isqrt(n_tokens - 1)",
        "probs = F.pad(probs, (1, 0, 1, 0))",
        "x = model.cfg.n_patches + 1",
    ],
)
def test_a_planted_violation_is_found(planted):
    assert find_token_slices(planted), f"not flagged: {planted}"


@pytest.mark.parametrize(
    "benign",
    [
        "shape = images.shape[1:]",
        "rest = loaded[1:]",
        "values = values[:, 0]",
        "logit = out.gather(1, idx[:, None])[:, 0]",
        "used = mask.nonzero()[:, 0]",
        "axes[1, 1:]",
        "p = layout.patches(pattern, -1)",
        "x = n_layers - 1",
        "s = 'pattern[:, 0, 1:]'  # strings and comments do not count",
        "first = names[0]",
        "y = F.pad(x, (0, 1))",
    ],
)
def test_benign_code_is_not_flagged(benign):
    assert not find_token_slices(benign), f"flagged: {benign}"


def test_the_scan_sees_a_violation_planted_in_a_real_file(tmp_path, monkeypatch):
    """The whole-tree test fails when a violation is added to a scanned file."""
    source = (ROOT / "vitmech/analysis/attention.py").read_text()
    planted = source + "\n\ndef _planted(pattern):\n    return pattern[:, :, 0, 1:]\n"
    findings = find_token_slices(planted, "vitmech/analysis/attention.py")
    assert [f.line for f in findings if not _allowed(f)] == [len(planted.splitlines())]
