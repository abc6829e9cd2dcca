"""Register tokens and high-norm artifact tokens, against plain loops over tokens and planted artifacts."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.registers import (
    KEY_GROUPS,
    QUERY_GROUPS,
    RegisterAnalysis,
    analyse_tokens,
    attention_shares,
    outlier_patches,
    register_analysis,
    summary,
    token_norms,
)
from vitmech.tokens import TokenLayout, token_layout
from vitmech.viz.registers import plot_register_analysis

matplotlib.use("Agg")

REGISTERS = TokenLayout(n_prefix=5, grid=(3, 3), class_index=0, n_registers=4)
DISTILLED = TokenLayout(n_prefix=3, grid=(3, 3), class_index=0, distill_index=1, n_registers=1)
POOLED = TokenLayout(n_prefix=0, grid=(3, 3), class_index=None)


def random_patterns(layout: TokenLayout, shape=(2, 3, 2), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, layout.n_tokens, layout.n_tokens, generator=g, dtype=torch.float64)).softmax(-1)


def naive_groups(layout: TokenLayout, outliers: list[bool]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Key and query groups by position, written out."""
    n0 = layout.n_prefix
    patches = list(range(n0, layout.n_tokens))
    registers = list(range(n0 - layout.n_registers, n0))
    keys = {
        "class": [] if layout.class_index is None else [layout.class_index],
        "distillation": [] if layout.distill_index is None else [layout.distill_index],
        "registers": registers,
        "outlier patches": [t for t in patches if outliers[t]],
        "other patches": [t for t in patches if not outliers[t]],
    }
    queries = {"class": keys["class"], "registers": registers, "patches": patches}
    return keys, queries


def test_token_norms_against_a_loop():
    resid = torch.randn(2, 5, 7)
    norms = token_norms(resid)
    for b in range(2):
        for t in range(5):
            assert norms[b, t].item() == pytest.approx(math.sqrt(sum(v * v for v in resid[b, t].tolist())), rel=1e-6)


@pytest.mark.parametrize("layout", [REGISTERS, POOLED], ids=["registers", "pooled"])
def test_outliers_against_a_loop(layout):
    g = torch.Generator().manual_seed(3)
    norms = torch.rand(4, layout.n_tokens, generator=g) + 1
    norms[0, layout.n_tokens - 1] = 50.0  # a planted artifact
    norms[1, 0] = 50.0  # a prefix token (or, pooled, a patch) with a large norm
    got = outlier_patches(norms, layout, factor=3.0)
    for b in range(4):
        patch_norms = sorted(norms[b, layout.n_prefix :].tolist())
        median = patch_norms[(len(patch_norms) - 1) // 2]  # torch's lower median
        for t in range(layout.n_tokens):
            expected = t >= layout.n_prefix and norms[b, t].item() > 3.0 * median
            assert bool(got[b, t]) == expected, (b, t)
    assert got[0, -1]
    assert bool(got[1, 0]) == (layout.n_prefix == 0)


@pytest.mark.parametrize("layout", [REGISTERS, DISTILLED, POOLED], ids=["registers", "distilled", "pooled"])
def test_attention_shares_against_a_loop(layout):
    patterns = random_patterns(layout)
    g = torch.Generator().manual_seed(1)
    key_outliers = torch.rand(2, 3, layout.n_tokens, generator=g) > 0.6
    shares = attention_shares(patterns, key_outliers, layout)
    assert shares.shape == (2, 3, 2, len(QUERY_GROUPS), len(KEY_GROUPS))
    for b in range(2):
        for layer in range(3):
            outliers = [bool(v) and t >= layout.n_prefix for t, v in enumerate(key_outliers[b, layer].tolist())]
            keys, queries = naive_groups(layout, outliers)
            for h in range(2):
                a = patterns[b, layer, h]
                for q, query in enumerate(QUERY_GROUPS):
                    for k, key in enumerate(KEY_GROUPS):
                        members = queries[query]
                        if not members:
                            assert math.isnan(shares[b, layer, h, q, k].item())
                            continue
                        expected = sum(a[i, j].item() for i in members for j in keys[key]) / len(members)
                        assert shares[b, layer, h, q, k].item() == pytest.approx(expected, abs=1e-12)
    finite = shares[~shares.isnan().any(-1)]
    torch.testing.assert_close(finite.sum(-1), torch.ones_like(finite.sum(-1)))  # every key in one group


def test_a_planted_attention_sink_is_found_and_measured():
    layout = REGISTERS
    b, n_layers, d = 2, 2, 6
    stages = torch.randn(b, n_layers + 1, layout.n_tokens, d, generator=torch.Generator().manual_seed(0))
    sink = layout.patch_position(1, 2)
    stages[:, 1:, sink] *= 40  # a high-norm patch from stage 1 on
    patterns = torch.zeros(b, n_layers, 1, layout.n_tokens, layout.n_tokens, dtype=stages.dtype)
    patterns[..., sink] = 0.75  # every query gives the sink 3/4 ...
    patterns[..., 1] = 0.25  # ... and the first register 1/4
    result = analyse_tokens(stages, patterns, layout, factor=3.0)
    assert result.outliers[:, 0].sum() == 0 or not result.outliers[:, 0, sink].all()
    assert result.outliers[:, 1:, sink].all() and result.outliers[:, 1:].sum() == b * n_layers
    # block 0 reads stage 0 (no outlier yet): the sink's 3/4 counts as an ordinary patch there
    torch.testing.assert_close(
        result.share_of("outlier patches", "class"), torch.tensor([0.0, 0.75], dtype=stages.dtype)
    )
    torch.testing.assert_close(result.share_of("registers", "patches"), torch.tensor([0.25, 0.25], dtype=stages.dtype))
    assert result.register_maps.shape == (b, n_layers, 1, 4, 9)
    assert torch.equal(result.register_maps[:, :, :, 0], patterns[:, :, :, 1, 5:])
    frame = result.to_frame()
    assert list(frame["stage"]) == ["embed", "L0", "L1"]
    assert frame["outlier fraction"].tolist()[1:] == pytest.approx([1 / 9, 1 / 9])
    assert frame["share class -> outlier patches"].tolist()[:2] == pytest.approx([0.0, 0.75])
    assert summary(result)["last_block_share_to_outliers"] == pytest.approx(0.75)


@pytest.fixture(scope="module")
def model_and_images():
    return tiny_model(seed=4), seeded_images(5, 32, seed=2)


def test_register_analysis_of_a_model_matches_its_cache(model_and_images):
    model, images = model_and_images
    result = register_analysis(model, images, batch_size=2, progress=False)
    assert isinstance(result, RegisterAnalysis) and result.layout == token_layout(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(images)
    n = model.cfg.n_layers
    stages = torch.stack(
        [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n)] + [cache[f"blocks.{n - 1}.hook_resid_post"]], 1
    )
    patterns = torch.stack([cache["pattern", layer] for layer in range(n)], 1)
    reference = analyse_tokens(stages, patterns, token_layout(model))
    torch.testing.assert_close(result.norms, reference.norms)
    assert torch.equal(result.outliers, reference.outliers)
    torch.testing.assert_close(result.shares, reference.shares, equal_nan=True)
    assert result.register_maps.shape[3] == 0  # no registers in this model
    assert math.isnan(result.share_of("outlier patches", "registers")[0])  # no register queries
    frame = result.to_frame()
    assert len(frame) == n + 1 and frame["n_images"].iloc[0] == 5


def test_the_figure_draws(model_and_images):
    model, images = model_and_images
    fig = plot_register_analysis(register_analysis(model, images[:2], progress=False))
    assert len(fig.axes) == 3
    assert "outliers" in fig.axes[1].get_title()


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="factor must be > 0"):
        outlier_patches(torch.ones(2, 10), TokenLayout.standard(10), factor=0)
    with pytest.raises(ValueError, match="stages for"):
        analyse_tokens(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 1, 10, 10), TokenLayout.standard(10))
    with pytest.raises(KeyError, match="key_group must be one of"):
        analyse_tokens(torch.rand(1, 2, 10, 4), torch.full((1, 1, 1, 10, 10), 0.1), TokenLayout.standard(10)).share_of(
            "sinks"
        )
