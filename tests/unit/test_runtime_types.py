"""The default test run checks vitmech's annotations at call time (jaxtyping shapes through beartype)."""

from __future__ import annotations

import jaxtyping
import pytest
import torch

from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.attention import mean_attention_distance


def test_a_wrong_shape_is_caught_at_the_call():
    patterns = torch.full((2, 5, 5), 0.2)
    mean_attention_distance(patterns, 16)  # "*batch query key": fine
    with pytest.raises(jaxtyping.TypeCheckError, match="patterns"):
        mean_attention_distance(patterns.double().int(), 16)  # not a float tensor
    with pytest.raises(jaxtyping.TypeCheckError, match="renormalise"):
        mean_attention_distance(patterns, 16, renormalise="yes")  # type: ignore[arg-type]


def test_checks_can_be_switched_off_for_validation_tests():
    with runtime_checks_off(), pytest.raises(TypeError, match="float tensor"):
        mean_attention_distance(torch.ones(2, 5, 5, dtype=torch.int64), 16)
