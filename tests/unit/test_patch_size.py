"""Patch-size comparison (vitmech.analysis.patch_size, `vitmech patch-size`) on tiny ViTs of patch 8 and 16
at 32 px: maps on one grid against a hand computation, each model's side against the single-model
functions, the paired table against scipy / statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from einops import rearrange

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.alignment import RegionMasks, alignment_scores
from vitmech.analysis.attention import AttentionSettings, attention_metrics, collect_patterns
from vitmech.analysis.explain import explain
from vitmech.analysis.patch_size import (
    common_grid,
    equal_area_k,
    layer_attention,
    map_agreement,
    paired_table,
)
from vitmech.errors import InputError
from vitmech.tokens import token_layout


@pytest.fixture(scope="module")
def pair():
    """Two tiny ViTs on 32 px images: patch 8 (4 x 4 grid) and patch 16 (2 x 2 grid)."""
    return tiny_model(seed=0, patch_size=8), tiny_model(seed=1, patch_size=16)


def naive_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """align_corners=False bilinear upsampling, one output pixel at a time: pixel i reads the input at
    max(0, (i + 0.5) * h / H - 0.5), between its two neighbours (the last one repeated at the edge)."""
    h, w = grid.shape
    out = np.zeros((height, width))
    for i in range(height):
        y = max(0.0, (i + 0.5) * h / height - 0.5)
        y0 = min(int(math.floor(y)), h - 1)
        y1, wy = min(y0 + 1, h - 1), y - y0
        for j in range(width):
            x = max(0.0, (j + 0.5) * w / width - 0.5)
            x0 = min(int(math.floor(x)), w - 1)
            x1, wx = min(x0 + 1, w - 1), x - x0
            top = (1 - wx) * grid[y0, x0] + wx * grid[y0, x1]
            bottom = (1 - wx) * grid[y1, x0] + wx * grid[y1, x1]
            out[i, j] = (1 - wy) * top + wy * bottom
    return out


def hand_cls_attention_grid(model, images: torch.Tensor) -> np.ndarray:
    """Last layer's class-token row over the patch keys, renormalised per head, mean over heads, on the
    model's patch grid [B, g, g] (token positions through the model's layout)."""
    layout = token_layout(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=lambda name: name.endswith("hook_pattern"))
    pattern = cache[f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"]  # [B, H, P, P]
    row = layout.class_token(pattern, dim=-2)  # [B, H, P]
    patches = layout.patches(row, dim=-1)
    patches = patches / patches.sum(-1, keepdim=True)
    g = layout.grid[0]
    return rearrange(patches.mean(1), "b (gy gx) -> b gy gx", gy=g, gx=g).double().numpy()


def test_common_grid_is_hand_bilinear_upsampling():
    maps = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(0))
    got = common_grid(maps, (10, 7)).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], naive_bilinear(maps[b].double().numpy(), 10, 7), atol=1e-6)
    same = torch.rand(1, 5, 5)
    assert torch.equal(common_grid(same, (5, 5)), same)  # a map already on the grid is left as it is
    with runtime_checks_off(), pytest.raises(InputError, match=r"\[batch, height, width\]"):
        common_grid(torch.rand(5, 5), (5, 5))


def test_two_patch_sizes_put_their_maps_on_one_grid_as_by_hand(pair):
    images = seeded_images(3, 32, seed=4)
    on_grid = {}
    for model in pair:
        ex = explain(model, images, ["cls_attention"])
        grid = hand_cls_attention_grid(model, images)
        assert grid.shape[-1] == 32 // model.cfg.patch_size
        want = np.stack([naive_bilinear(g, 32, 32) for g in grid])
        got = common_grid(ex.maps["cls_attention"], (32, 32))
        assert got.shape == (3, 32, 32)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
        on_grid[model.cfg.patch_size] = got
    # both maps are now on the same 32 x 32 grid: their agreement is one Pearson r per image
    r = map_agreement(on_grid[8], on_grid[16])
    want_r = [np.corrcoef(on_grid[8][b].flatten(), on_grid[16][b].flatten())[0, 1] for b in range(3)]
    np.testing.assert_allclose(r, want_r, atol=1e-9)


def test_equal_area_top_k_counts_the_same_pixels():
    assert equal_area_k([8, 16], 1) == [4, 1]
    assert equal_area_k([32, 16], 8) == [8, 32]
    for p, k in zip([8, 16], equal_area_k([8, 16], 3)):
        assert k * p * p == 3 * 16 * 16
    with pytest.raises(InputError, match="does not divide"):
        equal_area_k([12, 16], 1)
    with pytest.raises(InputError, match="at least 1"):
        equal_area_k([8, 16], 0)


def test_each_side_of_the_attention_table_is_the_single_model_functions(pair):
    images = seeded_images(4, 32, seed=2)
    for model, k in zip(pair, equal_area_k([8, 16], 1)):
        frame = layer_attention(model, images, k, batch_size=3)  # two batches: 3 + 1 images
        metrics = attention_metrics(collect_patterns(model, images, progress=False), model, AttentionSettings(k=k))
        n_patches = token_layout(model).n_patches

        want = {
            "cls_entropy": metrics.cls_entropy_head_mean.numpy(),
            "cls_entropy_relative": metrics.cls_entropy_head_mean.numpy() / math.log(n_patches),
            "cls_top_k_equal_area": metrics.cls_top_k_head_mean.numpy(),
            "mean_distance_px": metrics.mean_distance.mean(-1).numpy(),
        }
        for name, expected in want.items():
            part = frame[frame["metric"] == name].sort_values(["image", "layer"])
            got = part["value"].to_numpy().reshape(4, model.cfg.n_layers)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_mean_distance_is_in_pixels_at_both_patch_sizes(pair):
    """Hand loop for image 0, layer 0: each patch query's attention renormalised over the patch keys,
    times the distance between patch centres in pixels (grid steps x patch size), mean over queries and heads."""
    images = seeded_images(1, 32, seed=5)
    for model in pair:
        frame = layer_attention(model, images, 1)
        got = frame[(frame["metric"] == "mean_distance_px") & (frame["layer"] == 0)]["value"].item()
        layout = token_layout(model)
        with torch.no_grad():
            _, cache = model.run_with_cache(images, names_filter=lambda name: name.endswith("hook_pattern"))
        pattern = layout.patches(layout.patches(cache["blocks.0.attn.hook_pattern"][0], -1), -2)  # [H, N, N]
        g, p = layout.grid[0], model.cfg.patch_size
        total = 0.0
        for head in range(pattern.shape[0]):
            for q in range(g * g):
                weights = pattern[head, q] / pattern[head, q].sum()
                for key in range(g * g):
                    dy, dx = q // g - key // g, q % g - key % g
                    total += float(weights[key]) * p * math.hypot(dy, dx)
        assert got == pytest.approx(total / (pattern.shape[0] * g * g), rel=1e-5)


def test_paired_table_is_scipy_and_holm_and_words_need_significance():
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    n = 20
    base = rng.normal(size=(2, n))
    shift = base[0] + 1.0 + 0.1 * rng.normal(size=n)  # clearly higher
    same = base[1] + 0.5 * rng.normal(size=n)  # no real difference
    rows = []
    for metric, a, b in (("shifted", base[0], shift), ("same", base[1], same)):
        for model, values in (("p16", a), ("p32", b)):
            rows += [{"model": model, "image": i, "metric": metric, "value": v} for i, v in enumerate(values)]
    frame = pd.DataFrame(rows)
    frame.loc[(frame["metric"] == "same") & (frame["image"] == 0) & (frame["model"] == "p32"), "value"] = np.nan
    table = paired_table(frame, ["metric"], ("p16", "p32"), n_resamples=500).set_index("metric")
    p_shift = stats.ttest_rel(shift, base[0]).pvalue
    p_same = stats.ttest_rel(same[1:], base[1][1:]).pvalue  # image 0 has no p32 value: dropped from the pair
    assert table.loc["shifted", "p"] == pytest.approx(p_shift)
    assert table.loc["same", "p"] == pytest.approx(p_same)
    assert table.loc["same", "n_images"] == n - 1
    assert list(table["p_holm"]) == pytest.approx(list(multipletests([p_shift, p_same], method="holm")[1]))
    assert table.loc["shifted", "difference"] == pytest.approx(float(np.mean(shift - base[0])))
    assert table.loc["shifted", "ci_low"] < table.loc["shifted", "difference"] < table.loc["shifted", "ci_high"]
    assert table.loc["shifted", "direction"] == "higher in p32"
    assert table.loc["same", "p_holm"] >= 0.05 and table.loc["same", "direction"] == "no significant difference"


def test_maps_figure_puts_each_methods_models_side_by_side(pair):
    from vitmech.viz.explain import plot_explanations

    images = seeded_images(2, 32, seed=1)
    explanations = {f"p{m.cfg.patch_size}": explain(m, images, ["cls_attention", "rollout"]) for m in pair}
    rgb = [np.full((32, 32, 3), 0.5)] * 2
    fig = plot_explanations(rgb, explanations, columns="method")
    titles = [ax.get_title() for ax in fig.axes[:10] if ax.get_title() and ax.get_title() != "image"]
    assert titles == ["p8\ncls_attention", "p16\ncls_attention", "p8\nrollout", "p16\nrollout"]
    with runtime_checks_off(), pytest.raises(ValueError, match="columns"):
        plot_explanations(rgb, explanations, columns="image")  # type: ignore[arg-type]


def test_study_alignment_and_attention_sides_are_the_single_model_functions(pair, tmp_path):
    """`vitmech patch-size` on 3 synthetic galaxies: each model's alignment means are alignment_scores of
    its explain maps resampled to the 224 px mask grid, and its attention means are attention_metrics'."""
    from vitmech.cli import run_command
    from vitmech.data.galaxies import generate_galaxies
    from vitmech.preprocessing import preprocess

    for model, name in zip(pair, ("fine", "coarse")):
        model.save_pretrained(tmp_path / name)
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "fine"), "--model", str(tmp_path / "coarse"), "--methods", "rollout,saliency"]
    assert run_command("patch-size", [*argv, "--quick", "--no-progress", "--out", str(out)]) == 0
    comparison = pd.read_csv(out / "alignment_comparison.csv")
    attention = pd.read_csv(out / "attention_comparison.csv").set_index("metric")
    batch = generate_galaxies(3, seed=12345, size=224)
    regions = RegionMasks.from_galaxies(batch).with_union()
    for model, label in zip(pair, ("p8", "p16")):
        x = preprocess(list(batch.images), model.preprocessing)
        ex = explain(model, x, ["rollout", "saliency"], ig_steps=4)
        for method in ("rollout", "saliency"):
            scores = alignment_scores(common_grid(ex.maps[method], (224, 224)), regions).to_frame()
            union = scores[scores["region"] == "union"]
            for score in ("iou", "energy", "pointing"):
                row = comparison[(comparison["method"] == method) & (comparison["score"] == score)]
                assert row[f"mean_{label}"].item() == pytest.approx(union[score].mean(), abs=1e-9)
        k = 4 if label == "p8" else 1
        metrics = attention_metrics(collect_patterns(model, x, progress=False), model, AttentionSettings(k=k))
        assert attention.loc["mean_distance_px", f"mean_{label}"] == pytest.approx(
            metrics.mean_distance.mean().item(), rel=1e-5
        )
        assert attention.loc["cls_top_k_equal_area", f"mean_{label}"] == pytest.approx(
            metrics.cls_top_k_head_mean.mean().item(), rel=1e-5
        )
    assert (out / "maps.png").is_file() and (out / "attention_by_layer.png").is_file()
    assert "RANDOM WEIGHTS" not in (out / "report.md").read_text()


def test_study_refuses_pairs_it_cannot_compare(tmp_path, capsys):
    """One model, or patch sizes with no whole-patch equal area (12 and 16 px), exit with a clear message."""
    from vitmech.cli import run_command

    tiny_model(seed=0, patch_size=12, image_size=48).save_pretrained(tmp_path / "p12")
    tiny_model(seed=1, patch_size=16, image_size=48).save_pretrained(tmp_path / "p16")
    with pytest.raises(SystemExit, match="patch size 12 does not divide 16"):
        run_command(
            "patch-size",
            [
                "--model",
                str(tmp_path / "p12"),
                "--model",
                str(tmp_path / "p16"),
                "--quick",
                "--out",
                str(tmp_path / "a"),
            ],
        )
    with pytest.raises(SystemExit) as exc:
        run_command("patch-size", ["--model", str(tmp_path / "p12"), "--quick", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "compares two models" in capsys.readouterr().err
