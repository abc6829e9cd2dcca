"""Analyses on small HookedViTs with register tokens and without a class token, against the model's own cache
and plain loops with the positions written out (class at 0, registers 1-4, 16 patches after them)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.attribution import direct_logit_attribution, logit_lens
from vitmech.analysis.circuits import positional_qk
from vitmech.analysis.compare import compare_models, summarize_attention
from vitmech.analysis.registers import register_analysis
from vitmech.analysis.rollout import rollout
from vitmech.tokens import token_layout
from vitmech.train.heads import with_image_size


@pytest.fixture(scope="module")
def registers():
    return tiny_model(seed=5, n_register_tokens=4)


@pytest.fixture(scope="module")
def pooled():
    return tiny_model(seed=6, class_token=False, pool="avg")


@pytest.fixture(scope="module")
def images():
    return seeded_images(3, 32, seed=1)


def cached_patterns(model, images) -> torch.Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", layer] for layer in range(model.cfg.n_layers)], 1)


def naive_rollout_rows(patterns: torch.Tensor) -> torch.Tensor:
    b, n_layers, _, p, _ = patterns.shape
    out = []
    for image in range(b):
        r = torch.eye(p, dtype=patterns.dtype)
        for layer in range(n_layers):
            a = 0.5 * patterns[image, layer].mean(0) + 0.5 * torch.eye(p, dtype=patterns.dtype)
            r = (a / a.sum(-1, keepdim=True)) @ r
        out.append(r)
    return torch.stack(out)


def test_a_register_model_reads_the_class_row_past_the_registers(registers, images):
    assert token_layout(registers).n_prefix == 5 and registers.cfg.n_tokens == 21
    patterns = cached_patterns(registers, images)
    torch.testing.assert_close(collect_patterns(registers, images, rows="cls", progress=False), patterns[..., 0, :])
    summary = summarize_attention(registers, images, progress=False)
    row = patterns[:, :, :, 0, 5:]
    torch.testing.assert_close(summary.metrics.cls_attention, row / row.sum(-1, keepdim=True))
    assert summary.metrics.query == "class token"
    expected = naive_rollout_rows(patterns.double())[:, 0, 5:].float()
    torch.testing.assert_close(summary.rollout.map(renormalise=False), expected, rtol=1e-4, atol=1e-6)


def test_register_analysis_of_a_register_model(registers, images):
    result = register_analysis(registers, images, progress=False)
    assert result.register_maps.shape == (3, 3, 4, 4, 16)
    patterns = cached_patterns(registers, images)
    torch.testing.assert_close(result.register_maps, patterns[:, :, :, 1:5, 5:])
    from_registers = result.share_of("registers", "registers")
    assert torch.isfinite(from_registers).all() and (from_registers > 0).all()
    expected = patterns[:, :, :, 5:, 1:5].sum(-1).mean(-1).mean((0, 2))  # patches -> registers, by hand
    torch.testing.assert_close(result.share_of("registers", "patches"), expected)


def test_logit_attribution_and_lens_at_the_class_token_of_a_register_model(registers, images):
    dla = direct_logit_attribution(registers, images)
    torch.testing.assert_close(dla.attributions.sum(-1), dla.logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        logits = registers(images)
    torch.testing.assert_close(logit_lens(registers, images).logits[:, -1], logits, rtol=1e-4, atol=1e-5)


def test_positional_queries_and_resizing_skip_registers_without_positions(registers):
    pqk = positional_qk(registers)
    assert pqk.scores.shape[-1] == registers.W_pos.shape[0]
    assert pqk.query_grid(0, 0, "centre").shape == (4, 4)
    bigger = with_image_size(registers, 48)
    assert bigger.cfg.n_tokens == 5 + 36
    with torch.no_grad():
        assert torch.isfinite(bigger(seeded_images(1, 48))).all()


def test_a_model_without_a_class_token_reads_the_patch_mean(pooled, images):
    layout = token_layout(pooled)
    assert layout.n_prefix == 0 and layout.readout_name == "mean over patches"
    patterns = cached_patterns(pooled, images)
    summary = summarize_attention(pooled, images, progress=False)
    assert summary.metrics.query == "mean over patches"
    row = patterns.mean(-2)  # mean over the (patch) queries
    torch.testing.assert_close(summary.metrics.cls_attention, row / row.sum(-1, keepdim=True))
    full = rollout(patterns, layout=layout)
    torch.testing.assert_close(summary.rollout.row(), full.rows.mean(1), rtol=1e-4, atol=1e-6)


def test_class_token_analyses_refuse_a_model_without_one(pooled, images):
    with pytest.raises(ValueError, match="direct logit attribution reads the class token"):
        direct_logit_attribution(pooled, images)
    with pytest.raises(ValueError, match="the logit lens reads the class token"):
        logit_lens(pooled, images)
    with pytest.raises(ValueError, match="CKA on the class token"):
        compare_models(pooled, pooled, images, cka_tokens="cls", progress=False)
    comparison = compare_models(pooled, pooled, images, cka_tokens="patches", progress=False)
    torch.testing.assert_close(comparison.cka.cka, torch.ones_like(comparison.cka.cka))


def test_class_token_analyses_refuse_a_model_that_reads_the_patch_mean(images):
    model = tiny_model(seed=7, pool="avg")  # a class token the output does not read
    with pytest.raises(ValueError, match=r"output reads the patch tokens \(pool=.avg.\)"):
        direct_logit_attribution(model, images)
    with pytest.raises(ValueError, match=r"output reads the patch tokens \(pool=.avg.\)"):
        logit_lens(model, images)
