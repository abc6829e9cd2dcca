"""`concat_results`: the one way batched results (attention metrics, rollouts, register analyses) are joined.

Reference: a result computed on all images at once equals the join of the results of any split of the images
into batches (and of single layers, for the attention metrics); results of different settings refuse to join.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.models import geometry_config
from vitmech.analysis.attention import AttentionMetrics, AttentionSettings, attention_metrics
from vitmech.analysis.registers import RegisterAnalysis, analyse_tokens
from vitmech.analysis.rollout import Rollout, rollout
from vitmech.batching import concat_results
from vitmech.errors import InputError
from vitmech.tokens import TokenLayout

N_IMAGES = 5


def _patterns(batch: int = N_IMAGES, layers: int = 2, seed: int = 0) -> torch.Tensor:
    """Attention patterns [batch, layer, 3 heads, 10 tokens, 10 tokens] (class token + 3 x 3 patches)."""
    return torch.softmax(torch.randn(batch, layers, 3, 10, 10, generator=torch.Generator().manual_seed(seed)), -1)


def _batches(cuts: list[int], n: int = N_IMAGES) -> list[slice]:
    bounds = [0, *sorted(cuts), n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


cut_points = st.lists(st.integers(1, N_IMAGES - 1), unique=True, max_size=N_IMAGES - 1)


def _assert_same(joined: object, whole: object) -> None:
    for name, value in vars(whole).items():
        other = getattr(joined, name)
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(other, value, rtol=0, atol=0, equal_nan=True)  # empty key groups: NaN
        else:
            assert other == value, name


@settings(max_examples=15, deadline=None)
@given(cuts=cut_points)
def test_joined_batches_equal_the_whole_run(cuts):
    patterns, cfg = _patterns(), geometry_config(3, 4)
    whole = attention_metrics(patterns, cfg, AttentionSettings(k=2), [0, 1], keep_cls_attention=True)
    parts = [attention_metrics(patterns[s], cfg, AttentionSettings(k=2), [0, 1], True) for s in _batches(cuts)]
    _assert_same(AttentionMetrics.concat(parts), whole)

    whole_rollout = rollout(patterns, tokens=["readout", 3])
    _assert_same(Rollout.concat([rollout(patterns[s], tokens=["readout", 3]) for s in _batches(cuts)]), whole_rollout)

    stages = torch.randn(N_IMAGES, 3, 10, 8, generator=torch.Generator().manual_seed(1))
    layout = TokenLayout.standard(10)
    whole_tokens = analyse_tokens(stages, patterns, layout)
    joined_tokens = RegisterAnalysis.concat([analyse_tokens(stages[s], patterns[s], layout) for s in _batches(cuts)])
    _assert_same(joined_tokens, whole_tokens)


def test_single_layers_stack_into_the_all_layer_result():
    patterns, cfg = _patterns(layers=3), geometry_config(3, 4)
    whole = attention_metrics(patterns, cfg, AttentionSettings(k=3), [4, 5, 6], keep_cls_attention=True)
    parts = [
        attention_metrics(patterns[:, [i]], cfg, AttentionSettings(k=3), [layer], keep_cls_attention=True)
        for i, layer in enumerate([4, 5, 6])
    ]
    stacked = AttentionMetrics.stack_layers(parts)
    assert stacked.layers == (4, 5, 6)
    _assert_same(stacked, whole)


def test_optional_field_is_dropped_when_a_part_lacks_it_and_settings_must_agree():
    patterns, cfg = _patterns(), geometry_config(3, 4)
    kept = attention_metrics(patterns[:2], cfg, AttentionSettings(k=2), [0, 1], keep_cls_attention=True)
    dropped = attention_metrics(patterns[2:], cfg, AttentionSettings(k=2), [0, 1], keep_cls_attention=False)
    assert AttentionMetrics.concat([kept, dropped]).cls_attention is None
    other_k = attention_metrics(patterns[2:], cfg, AttentionSettings(k=3), [0, 1])
    with pytest.raises(InputError, match="same settings"):
        AttentionMetrics.concat([kept, other_k])
    with pytest.raises(InputError, match="same layers"):
        AttentionMetrics.concat([kept, attention_metrics(patterns[2:], cfg, AttentionSettings(k=2), [0, 2])])
    with pytest.raises(InputError, match="nothing to concatenate"):
        concat_results([])
