"""Every error vitmech raises on purpose is a VitmechError: no bare built-in ValueError, IndexError, KeyError,
TypeError, RuntimeError, FileNotFoundError, OSError or FloatingPointError is raised anywhere in the package (the kinds in `vitmech.errors` keep those built-ins
as bases, so `except ValueError` / `except KeyError` callers still catch them)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
import torch

import vitmech
from vitmech import errors

PACKAGE = Path(vitmech.__file__).parent
BARE = frozenset(
    {
        "ValueError",
        "IndexError",
        "KeyError",
        "TypeError",
        "RuntimeError",
        "FileNotFoundError",
        "OSError",
        "FloatingPointError",
    }
)

# Raises of a bare built-in that must stay exactly that built-in: {(path under vitmech/, enclosing function's
# qualified name, exception name): why}. Empty today: every such raise has a vitmech kind that keeps the
# built-in as a base. The protocol exceptions Python itself requires (AttributeError in a module or class
# `__getattr__`, NotImplementedError, StopIteration, SystemExit from the command line) are not in BARE.
ALLOWED: dict[tuple[str, str, str], str] = {}


# Exception classes vitmech defines on a built-in base alone (not under VitmechError): {(path, class): why}.
CLASSES_ALLOWED: dict[tuple[str, str], str] = {
    ("errors.py", "VitmechError"): "the root itself",
    # An internal signal: both callers (fingerprint._function_text, ablation.metrics.metric) catch it.
    ("fingerprint.py", "Unfingerprintable"): "caught inside vitmech; never reaches a caller of the public API",
}


def _builtin_only_exception_classes(path: Path) -> list[str]:
    """Classes in `path` whose bases are all built-in exceptions (so they are not VitmechErrors)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ClassDef) and node.bases:
            bases = [getattr(builtins, b.id, None) if isinstance(b, ast.Name) else None for b in node.bases]
            if all(isinstance(b, type) and issubclass(b, BaseException) for b in bases):
                names.append(node.name)
    return names


def _bare_raises(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function's qualified name, exception name, line) of each `raise <BARE>` / `raise <BARE>(...)`."""
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scope, child.name))
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                if isinstance(exc, ast.Name) and exc.id in BARE:
                    found.append((".".join(scope) or "<module>", exc.id, child.lineno))
            visit(child, scope)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), ())
    return found


def _scan() -> list[tuple[str, str, str, int]]:
    return [
        (path.relative_to(PACKAGE).as_posix(), scope, name, line)
        for path in sorted(PACKAGE.rglob("*.py"))
        for scope, name, line in _bare_raises(path)
    ]


def test_the_scan_finds_bare_raises(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "class A:\n"
        "    def f(self, x):\n"
        "        if x:\n"
        "            raise ValueError('x')\n"
        "        raise KeyError\n"
        "def g():\n"
        "    raise vitmech.InputError('fine')\n"
        "raise TypeError('at import')\n"
    )
    assert _bare_raises(source) == [("A.f", "ValueError", 4), ("A.f", "KeyError", 5), ("<module>", "TypeError", 8)]
    classes = tmp_path / "classes.py"
    classes.write_text("class E(KeyError): ...\nclass F(InputError, KeyError): ...\nclass G(object): ...\n")
    assert _builtin_only_exception_classes(classes) == ["E"]


def test_no_bare_builtin_raises_outside_the_allow_list():
    found = _scan()
    offending = [
        f"{path}:{line} {name} in {scope}" for path, scope, name, line in found if (path, scope, name) not in ALLOWED
    ]
    assert not offending, (
        f"{len(offending)} raises of a bare built-in exception; raise a vitmech.errors kind instead "
        "(InputError, IndexOutOfRangeError, UnknownNameError, InputTypeError or an area kind):\n  "
        + "\n  ".join(offending)
    )
    stale = set(ALLOWED) - {(path, scope, name) for path, scope, name, _ in found}
    assert not stale, f"allow-list entries that no longer match a raise: {sorted(stale)}"


@pytest.mark.parametrize(
    ("kind", "builtin"), [("UnknownNameError", KeyError), ("InputTypeError", TypeError)], ids=["key", "type"]
)
def test_new_kinds_are_vitmech_errors_and_their_builtin(kind, builtin):
    cls = getattr(errors, kind)
    assert getattr(vitmech, kind) is cls and kind in errors.__all__ and kind in vitmech.__all__
    for base in (errors.VitmechError, errors.InputError, ValueError, builtin):
        assert issubclass(cls, base), (cls, base)
    with pytest.raises(builtin, match="no such thing"):
        raise cls("no such thing")


def test_unknown_name_error_reads_as_its_message():
    # A plain KeyError shows repr(message) (quotes, escaped newlines); the vitmech kind shows the message itself.
    message = "no region 'x'; regions: ['core']\nsee the docs"
    assert str(errors.UnknownNameError(message)) == message
    assert str(errors.UnknownNameError()) == ""


def test_former_key_and_type_errors_raise_the_new_kinds(unchecked_types):
    from vitmech.loading.families import by_name
    from vitmech.tokens import TokenLayout, token_layout

    with pytest.raises(errors.InputTypeError, match="expected a HookedViT, ViTConfig or TokenLayout") as info:
        token_layout(object())  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and isinstance(info.value, vitmech.VitmechError)
    with pytest.raises(errors.IndexOutOfRangeError, match=r"outside the 2x2 grid"):
        TokenLayout.standard(grid_size=2).patch_position(2, 0)
    with pytest.raises(errors.UnknownNameError, match="no family 'no-such-family'") as key_info:
        by_name("no-such-family")
    assert isinstance(key_info.value, KeyError) and isinstance(key_info.value, ValueError)


def test_every_exception_class_is_under_the_root():
    found = {
        (path.relative_to(PACKAGE).as_posix(), name)
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in _builtin_only_exception_classes(path)
    }
    assert not found - set(CLASSES_ALLOWED), (
        f"exception classes outside VitmechError: {sorted(found - set(CLASSES_ALLOWED))}"
    )
    assert not set(CLASSES_ALLOWED) - found, f"stale entries: {sorted(set(CLASSES_ALLOWED) - found)}"


def test_a_diverged_loss_is_a_nonfinite_loss_error_naming_the_cause():
    from vitmech.train.loop import TrainConfig, optimizer_step

    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD([{"params": list(layer.parameters()), "base_lr": 0.1}], lr=0.1)
    params = list(layer.parameters())
    loss = layer(torch.ones(1, 2)).sum() * float("inf")
    with pytest.raises(errors.NonFiniteLossError, match="loss became .* at step 3; lower the learning rate") as info:
        optimizer_step(optimizer, loss, params, TrainConfig(steps=5), 3, layer)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, errors.VitmechError)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(errors.NonFiniteLossError, match=r"already hold NaN/inf before this update: \['weight'\]"):
        optimizer_step(optimizer, layer(torch.ones(1, 2)).sum(), params, TrainConfig(steps=5), 0, layer)


def test_a_missing_path_is_a_path_not_found_error(tmp_path):
    from vitmech.data.sources import image_files

    with pytest.raises(errors.PathNotFoundError, match="no image file or folder at") as info:
        image_files(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError) and vitmech.PathNotFoundError is errors.PathNotFoundError
