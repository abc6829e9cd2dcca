"""Hooks made inside batch loops bind their batch's state when made (never by closing over loop variables),
and the batched public functions give the same numbers whatever the batch size."""

from __future__ import annotations

import torch

from vitmech.analysis.ablation.estimates import _keeping_hook, _probe_hook, estimate_head_effects
from vitmech.analysis.attention import _pattern_writer, collect_patterns
from vitmech.analysis.rollout import RolloutSettings, _fusing_hook, attention_gradients, rollout_maps
from vitmech.tokens import TokenLayout


class _Hook:
    """The part of a HookPoint the hooks read."""

    def __init__(self, name: str) -> None:
        self.name = name

    def layer(self) -> int:
        return int(self.name.split(".")[1])


def test_pattern_writers_made_in_a_loop_write_their_own_slice():
    out = torch.zeros(4, 2, 1, 3, 3)
    writers = [_pattern_writer(out, slice(2 * b, 2 * b + 2), b, readout=None) for b in range(2)]
    # call them after the loop, last first: a closure over the loop variables would write batch 1's slot twice
    for b in (1, 0):
        writers[b](torch.full((2, 1, 3, 3), float(b + 1)), _Hook("blocks.0.attn.hook_pattern"))
    assert (out[0:2, 0] == 1).all() and (out[2:4, 1] == 2).all()
    assert (out[0:2, 1] == 0).all() and (out[2:4, 0] == 0).all()


def test_cls_row_writer_keeps_only_query_zero():
    out = torch.zeros(1, 1, 2, 3)
    pattern = torch.arange(18.0).view(1, 2, 3, 3)
    layout = TokenLayout(n_prefix=1, grid=(1, 2))  # a class token and two patches
    _pattern_writer(out, slice(0, 1), 0, readout=layout)(pattern, _Hook("blocks.0.attn.hook_pattern"))
    assert torch.equal(out[0, 0], pattern[0, :, 0])


def test_per_batch_state_hooks_fill_their_own_dicts():
    first: tuple[dict, dict] = ({}, {})
    second: tuple[dict, dict] = ({}, {})
    hooks = [_probe_hook(*first), _probe_hook(*second)]
    z = torch.ones(1, 2, 1, 1)
    hooks[1](2 * z, _Hook("blocks.1.attn.hook_z"))
    hooks[0](z, _Hook("blocks.1.attn.hook_z"))
    assert torch.equal(first[0][1], z) and torch.equal(second[0][1], 2 * z)
    seen_a: dict = {}
    seen_b: dict = {}
    keep_a, keep_b = _keeping_hook(seen_a), _keeping_hook(seen_b)
    keep_b(z, _Hook("blocks.0.attn.hook_v"))
    keep_a(3 * z, _Hook("blocks.0.attn.hook_v"))
    assert torch.equal(seen_a[0], 3 * z) and torch.equal(seen_b[0], z)
    fused_a: dict = {"mean": [None]}
    fused_b: dict = {"mean": [None]}
    pattern = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    _fusing_hook(fused_b)(pattern, _Hook("blocks.0.attn.hook_pattern"))
    assert fused_a["mean"][0] is None and torch.allclose(fused_b["mean"][0], pattern.mean(1))


def test_collect_patterns_is_batch_size_invariant(tiny_vit, tiny_images):
    for rows in ("all", "cls"):
        whole = collect_patterns(tiny_vit, tiny_images, batch_size=5, rows=rows, progress=False)
        pieces = collect_patterns(tiny_vit, tiny_images, batch_size=2, rows=rows, progress=False)
        torch.testing.assert_close(pieces, whole)
    single = torch.cat([collect_patterns(tiny_vit, tiny_images[i : i + 1], progress=False) for i in range(5)])
    torch.testing.assert_close(collect_patterns(tiny_vit, tiny_images, batch_size=2, progress=False), single)


def test_rollout_and_gradients_are_batch_size_invariant(tiny_vit, tiny_images):
    variants = {"mean": RolloutSettings(), "max": RolloutSettings(head_fusion="max")}
    whole = rollout_maps(tiny_vit, tiny_images, variants, batch_size=5, progress=False)
    pieces = rollout_maps(tiny_vit, tiny_images, variants, batch_size=2, progress=False)
    for name in variants:
        torch.testing.assert_close(pieces[name].rows, whole[name].rows)
    g_whole = attention_gradients(tiny_vit, tiny_images, batch_size=5, progress=False)
    g_pieces = attention_gradients(tiny_vit, tiny_images, batch_size=2, progress=False)
    torch.testing.assert_close(g_pieces.gradients, g_whole.gradients)
    torch.testing.assert_close(g_pieces.patterns, g_whole.patterns)


def test_head_estimates_are_batch_size_invariant(tiny_vit, tiny_images):
    for ablation in ("zero", "uniform"):
        whole = estimate_head_effects(tiny_vit, tiny_images, "kl_to_clean", ablation, batch_size=5)
        pieces = estimate_head_effects(tiny_vit, tiny_images, "kl_to_clean", ablation, batch_size=2)
        assert abs(whole.attribution).max() > 0
        torch.testing.assert_close(torch.as_tensor(pieces.attribution), torch.as_tensor(whole.attribution))
        torch.testing.assert_close(torch.as_tensor(pieces.michel), torch.as_tensor(whole.michel))
