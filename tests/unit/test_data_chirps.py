"""Chirp spectrograms: the generator's track vs its targets, the figure vs matplotlib, boxes, dataset."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import PIL.Image
import pytest
import torch

from vitmech.data import DataError, SchemaError, default_preprocess
from vitmech.data._figure import FigureStyle, viridis_lut
from vitmech.data._io import DATASET_INFO
from vitmech.data.chirps import (
    BOXES,
    TARGETS,
    ChirpParams,
    TargetScaler,
    chirp_rng,
    chirp_spectrogram,
    chirp_track,
    default_title,
    figure_renderer,
    generate_chirp,
    generate_chirps,
    load_chirps,
    sample_chirp_params,
    write_chirp_dataset,
)


def expected_bins(start_time, duration, start_freq, end_freq, kind):
    """Independent restatement of the public generator's track: columns and fractional bins."""
    t0 = int(start_time * 128 / 60)
    t1 = t0 + int(duration * 128 / 60)
    b0, b1 = int(start_freq * 128 / 100), int(end_freq * 128 / 100)
    cols = list(range(t0, t1))
    out = []
    for t in cols:
        x = (t - t0) / (t1 - t0)
        if kind == "linear":
            fb = b0 + (b1 - b0) * x
        else:
            b0e = b0 if b0 != 0 else 1
            fb = b0e * (b1 / b0e) ** x
        out.append(min(max(fb, 0), 127))
    return np.array(cols), np.array(out)


# ----------------------------------------------------------------------------------- parameters


def test_parameters_follow_the_generator_distributions():
    params = [sample_chirp_params(chirp_rng(0, i)) for i in range(300)]
    assert params[7] == generate_chirp(7, seed=0, size=64).params  # the same stream generate_chirp uses
    st = np.array([p.start_time for p in params])
    du = np.array([p.duration for p in params])
    f0 = np.array([p.start_freq for p in params])
    f1 = np.array([p.end_freq for p in params])
    assert st.min() >= 0 and st.max() < 45 and du.min() >= 1 and du.max() < 15
    assert f0.min() >= 0 and f0.max() < 100 and f1.min() >= 0 and f1.max() <= 100
    assert np.all(np.abs(f1 - f0) <= 30 + 1e-9)
    assert np.all(f1 == np.clip(f1, 0, 100))
    kinds = [p.kind for p in params]
    assert 100 < kinds.count("linear") < 200
    noise = np.array([p.noise_level for p in params])
    assert noise.min() >= 0.09 and noise.max() < 0.3
    assert st.mean() == pytest.approx(22.5, abs=2.5) and du.mean() == pytest.approx(8.0, abs=0.8)


def test_same_seed_same_chirp_and_index_independence():
    a, b, c = generate_chirp(5, seed=2), generate_chirp(5, seed=2), generate_chirp(5, seed=3)
    assert a.params == b.params and np.array_equal(a.image, b.image) and np.array_equal(a.spectrogram, b.spectrogram)
    assert a.boxes == b.boxes
    assert a.params != c.params
    batch = generate_chirps(3, seed=2, start=4)
    assert batch[1].params == a.params and np.array_equal(batch[1].image, a.image)


# ----------------------------------------------------------------------------------- the drawn track


@pytest.mark.parametrize("kind", ["linear", "exponential"])
def test_clean_track_argmax_is_the_target_track(kind):
    """Noise and blur off: each track column's brightest bin is the integer nearest the track, computed
    from the targets alone; columns off the track are empty."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = ChirpParams(rng.uniform(0, 45), rng.uniform(1, 15), rng.uniform(0, 100), 0.0, kind, 0.1)
        p = dataclasses.replace(p, end_freq=float(np.clip(p.start_freq + rng.uniform(-30, 30), 0, 100)))
        spec = chirp_spectrogram(p, noise=False, blur=False)
        cols, fb = expected_bins(p.start_time, p.duration, p.start_freq, p.end_freq, kind)
        assert np.array_equal(np.flatnonzero(spec.any(axis=0)), cols)
        nearest = np.floor(fb + 0.5)
        argmax = spec[:, cols].argmax(axis=0)
        assert np.all(np.abs(argmax - fb) <= 0.5 + 1e-6), (p, argmax, fb)
        assert np.all(argmax == nearest) or np.all(np.abs(argmax - nearest) <= 1)
        peak = spec[argmax, cols]
        assert np.allclose(peak, np.exp(-((argmax - fb) ** 2)), atol=1e-6)  # exp(-(f - f_b)^2 / (2 * 0.5))


def test_noisy_blurred_track_still_peaks_on_the_targets():
    deviations = []
    for i in range(40):
        sample = generate_chirp(i, seed=9, size=64)
        p = sample.params
        cols, fb = expected_bins(p.start_time, p.duration, p.start_freq, p.end_freq, p.kind)
        deviations.append(np.abs(sample.spectrogram[:, cols].argmax(axis=0) - fb))
    deviations = np.concatenate(deviations)
    assert np.median(deviations) <= 1.0
    assert np.mean(deviations <= 2.0) > 0.85


def test_chirp_track_helper_agrees_with_the_independent_formula():
    for i in range(30):
        p = generate_chirp(i, seed=4, size=64).params
        cols, fb = chirp_track(p)
        ref_cols, ref_fb = expected_bins(p.start_time, p.duration, p.start_freq, p.end_freq, p.kind)
        assert np.array_equal(cols, ref_cols) and np.allclose(fb, ref_fb)


# ----------------------------------------------------------------------------------- the figure


def test_chirp_box_holds_the_drawn_chirp():
    for i in range(12):
        sample = generate_chirp(i, seed=1, noise=False)
        x0, y0, x1, y1 = sample.boxes["chirp"]
        ax0, ay0, ax1, ay1 = sample.boxes["axes"]
        assert ax0 <= x0 < x1 <= ax1 and ay0 <= y0 < y1 <= ay1
        # the yellowest pixel of the image area lies in the chirp box
        region = sample.image[ay0 + 1 : ay1 - 1, ax0 + 1 : ax1 - 1].astype(int)
        score = region[..., 0] + region[..., 1] - region[..., 2]
        yy, xx = np.unravel_index(score.argmax(), score.shape)
        assert x0 <= xx + ax0 + 1 < x1 and y0 <= yy + ay0 + 1 < y1
        # and the track's middle, mapped by hand from data units to output pixels, too
        p = sample.params
        t_mid = p.start_time + p.duration / 2
        cols, fb = expected_bins(p.start_time, p.duration, p.start_freq, p.end_freq, p.kind)
        f_mid = (fb[len(fb) // 2] + 0.5) * 100 / 128
        ax_left, ax_right = 80 * 224 / 640, (80 + 396.8) * 224 / 640
        ax_top, ax_bottom = 57.6 * 224 / 480, 427.2 * 224 / 480
        px = ax_left + t_mid / 60 * (ax_right - ax_left)
        py = ax_bottom - f_mid / 100 * (ax_bottom - ax_top)
        assert x0 - 1 <= px <= x1 + 1 and y0 - 1 <= py <= y1 + 1


@pytest.mark.parametrize("element", ["title", "xlabel", "ylabel"])
def test_text_boxes_hold_exactly_what_the_text_changes(element):
    """Switch one text off: the pixels that change are inside its box (1 px slack for resampling),
    and they span most of it."""
    spec = generate_chirp(3, seed=0).spectrogram
    figure = figure_renderer(224)
    on, boxes = figure.render(spec, "Synthetic Spectrogram 3 (linear chirp)", FigureStyle())
    off, off_boxes = figure.render(spec, "Synthetic Spectrogram 3 (linear chirp)", FigureStyle(**{element: False}))
    assert off_boxes[element] is None
    changed = np.abs(on.astype(int) - off.astype(int)).sum(axis=2) > 0
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = boxes[element]
    assert xs.min() >= x0 - 1 and xs.max() < x1 + 1 and ys.min() >= y0 - 1 and ys.max() < y1 + 1
    cx0, cy0, cx1, cy1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    inter = max(0, min(x1, cx1) - max(x0, cx0)) * max(0, min(y1, cy1) - max(y0, cy0))
    union = (x1 - x0) * (y1 - y0) + (cx1 - cx0) * (cy1 - cy0) - inter
    assert inter / union > 0.6


def test_colorbar_switch_moves_the_axes_and_shows_viridis():
    spec = generate_chirp(2, seed=0).spectrogram
    figure = figure_renderer(224)
    with_bar, boxes = figure.render(spec, "t", FigureStyle())
    without, boxes_off = figure.render(spec, "t", FigureStyle(colorbar=False))
    assert boxes_off["colorbar"] is None and boxes_off["colorbar_label"] is None
    assert boxes_off["axes"][2] > boxes["axes"][2] + 25  # the image takes the colour bar's room
    x0, y0, x1, y1 = boxes["colorbar"]
    column = with_bar[y0 + 2 : y1 - 2, (x0 + x1) // 2].astype(float)
    lut = viridis_lut().astype(float)
    # every colour-bar pixel is (close to) a viridis colour, running from the top colour down to the bottom one
    nearest = np.array([np.abs(lut - c).sum(axis=1).argmin() for c in column])
    distance = np.array([np.abs(lut - c).sum(axis=1).min() for c in column])
    assert distance.max() < 30
    assert nearest[0] > 240 and nearest[-1] < 15 and np.all(np.diff(nearest) <= 2)
    # right of the colour bar on the image without it: plain background (no bar, ticks or label)
    assert np.all(without[60:160, 210:] == 255)


def test_figure_matches_matplotlib():
    """The public generator's matplotlib figure, resized to 224 like ours, against our renderer:
    nearly the same pixels, and the boxes where matplotlib puts its artists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = generate_chirp(4, seed=0)
    fig = plt.figure()
    plt.imshow(sample.spectrogram, aspect="auto", origin="lower", cmap="viridis", extent=[0, 60, 0, 100])
    plt.xlabel("Time (s)")
    plt.ylabel("Frequency (Hz)")
    plt.title(default_title(4, sample.params))
    colorbar = plt.colorbar(label="Intensity")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    ax = fig.axes[0]
    height = fig.canvas.get_width_height()[1]

    def box(artist):
        e = artist.get_window_extent()
        return (e.x0 * 224 / 640, (height - e.y1) * 224 / 480, e.x1 * 224 / 640, (height - e.y0) * 224 / 480)

    reference = {
        "title": box(ax.title),
        "xlabel": box(ax.xaxis.label),
        "ylabel": box(ax.yaxis.label),
        "axes": box(ax),
        "colorbar": box(colorbar.ax),
        "colorbar_label": box(colorbar.ax.yaxis.label),
    }
    plt.close(fig)
    ours = np.asarray(PIL.Image.fromarray(rgba).resize((224, 224), PIL.Image.BILINEAR)).astype(int)
    assert np.abs(ours - sample.image.astype(int)).mean() < 6.0
    for name, (rx0, ry0, rx1, ry1) in reference.items():
        x0, y0, x1, y1 = sample.boxes[name]
        assert abs((x0 + x1) / 2 - (rx0 + rx1) / 2) < 2.0, name
        assert abs((y0 + y1) / 2 - (ry0 + ry1) / 2) < 2.0, name
        assert abs((x1 - x0) - (rx1 - rx0)) < 3.0 and abs((y1 - y0) - (ry1 - ry0)) < 3.0, name


def test_boxes_are_in_the_image_and_switchable():
    sample = generate_chirp(0, seed=0, title=False, colorbar=False, xlabel=False)
    assert set(sample.boxes) == set(BOXES)
    for name in ("title", "colorbar", "colorbar_label", "colorbar_ticklabels", "xlabel"):
        assert sample.boxes[name] is None
    for name in ("ylabel", "xticklabels", "yticklabels", "axes", "chirp"):
        x0, y0, x1, y1 = sample.boxes[name]
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    with pytest.raises(DataError, match="probability"):
        generate_chirp(0, title=1.5)


def test_chirp_generation_is_fast_enough():
    """Sanity floor (shared CPU); the rate is measured in benchmarks/data.py."""
    generate_chirps(5, seed=0)
    best = 0.0
    for repeat in range(3):
        start = time.perf_counter()
        generate_chirps(30, seed=repeat)
        best = max(best, 30 / (time.perf_counter() - start))
    assert best > 50


# ----------------------------------------------------------------------------------- targets, dataset


def test_target_scaler_round_trip(tmp_path):
    raw = np.random.default_rng(0).uniform([0, 0, 0], [45, 100, 100], size=(200, 3))
    scaler = TargetScaler.fit(raw)
    z = scaler.transform(raw)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-12) and np.allclose(z.std(axis=0), 1)
    assert np.allclose(scaler.inverse(z), raw)
    zt = scaler.transform(torch.tensor(raw, dtype=torch.float32))
    assert torch.allclose(scaler.inverse(zt), torch.tensor(raw, dtype=torch.float32), atol=1e-4)
    scaler.save(tmp_path / "s.json")
    assert TargetScaler.load(tmp_path / "s.json") == scaler
    with pytest.raises(DataError, match="zero spread"):
        TargetScaler.fit(np.ones((5, 3)))


def test_written_dataset_loads_as_torch_splits(tmp_path):
    root = write_chirp_dataset(
        tmp_path / "chirps", 20, seed=5, val_fraction=0.2, test_fraction=0.2, title=0.5, progress=False
    )
    splits = load_chirps(root, preprocess=default_preprocess, cache_dir=tmp_path / "cache")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    raw_train = np.stack([np.asarray(splits.raw["train"][name], dtype=np.float64) for name in TARGETS], -1)
    assert splits.scaler == TargetScaler.load(root / "target_scaler.json")
    assert np.allclose(splits.scaler.mean, raw_train.mean(axis=0), rtol=1e-6)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=5)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (5, 3, 224, 224) and batch["targets"].shape == (5, 3)
    assert batch["targets"].dtype == torch.float32
    back = splits.scaler.inverse(batch["targets"].double()).numpy()
    assert np.allclose(back, raw_train[:5], atol=1e-3)
    # rows are the seeded stream: test = indices 0..3, validation 4..7, train 8..19
    row = splits.raw["train"][0]
    assert row["index"] == 8
    sample = generate_chirp(8, seed=5, title=0.5)
    assert np.array_equal(np.asarray(row["image"]), sample.image)
    assert np.allclose(np.asarray(row["spectrogram"], dtype=np.float32), sample.spectrogram, atol=2e-3)
    assert row["chirp_type"] == sample.params.kind and row["has_title"] == sample.style.title
    for name in BOXES:
        stored = row[f"box_{name}"]
        assert (tuple(stored) if stored is not None else None) == sample.boxes[name]
    flags = [r["has_title"] for r in splits.raw["train"]]
    assert 0 < sum(flags) < len(flags)  # title=0.5 mixes figures with and without a title
    # without preprocess: PIL images and plain targets
    plain = load_chirps(root, cache_dir=tmp_path / "cache")
    item = plain.test[0]
    assert item["image"].size == (224, 224) and len(item["targets"]) == 3


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="training rows"):
        write_chirp_dataset(tmp_path / "x", 4, val_fraction=0.4, test_fraction=0.4, progress=False)
    with pytest.raises(DataError, match=r"unknown style flags \['titel'\]"):
        write_chirp_dataset(tmp_path / "typo", 6, titel=False, progress=False)
    assert not (tmp_path / "typo").exists()  # refused before the folder is made
    root = write_chirp_dataset(tmp_path / "ok", 6, val_fraction=0.0, test_fraction=0.0, progress=False, ticks=0.5)
    info = json.loads((root / DATASET_INFO).read_text())
    assert info["style"] == {"title": True, "xlabel": True, "ylabel": True, "colorbar": True, "ticks": 0.5}
    with pytest.raises(DataError, match="not empty"):
        write_chirp_dataset(root, 6, progress=False)
    from datasets import Dataset

    broken = Dataset.from_dict({"image": [None], "start_time": [1.0]})
    with pytest.raises(SchemaError, match="start_freq"):
        load_chirps(broken)
