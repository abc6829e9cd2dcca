"""One error root: every error vitmech defines is a VitmechError, exported, and keeps its built-in base."""

from __future__ import annotations

import inspect

import pytest
import torch

import vitmech
from vitmech import errors
from vitmech.analysis import attention, circuits, rollout
from vitmech.analysis.ablation import errors as ablation_errors
from vitmech.data import _errors as data_errors
from vitmech.train import errors as train_errors


def _error_classes(module) -> list[type]:
    return [v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, BaseException)]


def test_every_error_is_a_vitmech_input_error_and_listed():
    classes = _error_classes(errors)
    assert len(classes) >= 20
    for cls in classes:
        assert issubclass(cls, errors.VitmechError), cls
        assert cls.__module__ == "vitmech.errors", cls
        assert cls.__name__ in errors.__all__
        if cls is not errors.VitmechError:
            assert issubclass(cls, ValueError), cls  # what callers caught before the root existed
    assert issubclass(errors.HeadIndexError, IndexError) and issubclass(errors.IndexOutOfRangeError, IndexError)
    assert issubclass(errors.UnknownNameError, KeyError) and issubclass(errors.InputTypeError, TypeError)
    assert vitmech.VitmechError is errors.VitmechError and vitmech.InputError is errors.InputError
    assert vitmech.UnknownNameError is errors.UnknownNameError and vitmech.InputTypeError is errors.InputTypeError


@pytest.mark.parametrize("module", [data_errors, train_errors, ablation_errors])
def test_area_modules_re_export_the_same_classes(module):
    for cls in _error_classes(module):
        assert issubclass(cls, errors.VitmechError), cls
        if cls.__name__ in errors.__all__:
            assert getattr(errors, cls.__name__) is cls


def test_attention_rollout_and_circuits_raise_vitmech_errors(unchecked_types):
    patterns = torch.softmax(torch.randn(1, 1, 2, 5, 5), -1)
    with pytest.raises(errors.InputError, match=r"must be \[batch, layer, head, query, key\]"):
        attention.check_patterns(patterns[0], ndim=5)
    with pytest.raises(errors.IndexOutOfRangeError, match="token 9 out of range for 5 tokens") as info:
        attention.token_attention(patterns[0, 0], token=9)
    assert isinstance(info.value, IndexError)
    with pytest.raises(ValueError, match="alpha must be in"):
        rollout.RolloutSettings(alpha=0.0)
    with pytest.raises(errors.InputError, match="mode must be 'ln1' or 'raw'"):
        circuits.positional_inputs(None, 0, "nope")  # type: ignore[arg-type]
