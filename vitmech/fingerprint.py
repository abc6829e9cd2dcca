"""Content fingerprints (hashes) of tensors, models and settings, used to key resumable sweeps."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn


def _update(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)


def tensor_fingerprint(*tensors: torch.Tensor | None) -> str:
    """A 16-hex-digit hash of the tensors' dtypes, shapes and bytes (None counts as absent)."""
    digest = hashlib.blake2b(digest_size=8)
    for t in tensors:
        if t is None:
            digest.update(b"none")
        else:
            _update(digest, t)
    return digest.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, bytes): any weight edit changes it."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """Hash of a JSON-able settings dict (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class Unfingerprintable(TypeError):
    """A value whose content cannot be hashed stably (an arbitrary object, a callable instance)."""


def _value_text(value: Any, seen: set[int]) -> str:
    import functools
    import types

    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, torch.Tensor):
        return f"tensor:{tensor_fingerprint(value)}"
    if type(value).__module__ == "numpy" and hasattr(value, "tobytes"):
        return f"ndarray:{value.dtype}{getattr(value, 'shape', ())}:{hashlib.blake2b(value.tobytes(), digest_size=8).hexdigest()}"
    if isinstance(value, (tuple, list, set, frozenset)):
        items = (
            sorted(_value_text(v, seen) for v in value)
            if isinstance(value, (set, frozenset))
            else [_value_text(v, seen) for v in value]
        )
        return f"{type(value).__name__}[{','.join(items)}]"
    if isinstance(value, dict):
        return (
            "dict{" + ",".join(sorted(f"{_value_text(k, seen)}:{_value_text(v, seen)}" for k, v in value.items())) + "}"
        )
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, functools.partial):
        return f"partial({_value_text(value.func, seen)},{_value_text(value.args, seen)},{_value_text(value.keywords, seen)})"
    if isinstance(value, types.FunctionType):
        if id(value) in seen:
            return f"recursive:{value.__qualname__}"
        return "function:" + _function_text(value, seen | {id(value)})
    if isinstance(value, (types.BuiltinFunctionType, type)):
        return f"{type(value).__name__}:{getattr(value, '__module__', '')}.{value.__qualname__}"
    if isinstance(value, types.MethodType):
        return f"method:{_value_text(value.__func__, seen)}@{_value_text(value.__self__, seen)}"
    raise Unfingerprintable(f"cannot fingerprint a {type(value).__name__}")


def _code_text(code: Any, seen: set[int]) -> str:
    consts = [_code_text(c, seen) if hasattr(c, "co_code") else _value_text(c, seen) for c in code.co_consts]
    return f"code({code.co_code.hex()};{consts};{code.co_names};{code.co_varnames};{code.co_freevars})"


def _function_text(fn: Any, seen: set[int]) -> str:
    parts = [f"{fn.__module__}.{fn.__qualname__}", _code_text(fn.__code__, seen)]
    parts.append(_value_text(fn.__defaults__, seen))
    parts.append(_value_text(fn.__kwdefaults__, seen))
    for cell in fn.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned after the function was made)
            contents = None
        parts.append(_value_text(contents, seen))
    # the globals it reads (constants, other functions): a changed value changes the key
    for name in fn.__code__.co_names:
        if name in fn.__globals__:
            try:
                parts.append(f"{name}={_value_text(fn.__globals__[name], seen)}")
            except Unfingerprintable:
                parts.append(f"{name}=<{type(fn.__globals__[name]).__name__}>")
    return ";".join(parts)


def function_fingerprint(fn: Any) -> str:
    """A 16-hex-digit hash of a function's code, defaults, closure values and the globals it reads.

    Two lambdas with different bodies or closed-over values get different fingerprints; the same
    source run again gets the same one. Raises `Unfingerprintable` for callables without inspectable
    code (callable objects, C functions with state) or closures holding arbitrary objects.
    """
    text = _value_text(fn, set())
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
