"""Procedural pretraining scenes: seeded, batch-independent, balanced, shapes and boxes where they should be."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitmech.data.procedural import (
    FILLS,
    PROCEDURAL_CLASSES,
    SHAPES,
    generate_procedural,
    render_scenes,
    sample_scene,
    sample_scenes,
    shape_field,
)


def test_images_do_not_depend_on_the_batch_they_are_rendered_in():
    whole = generate_procedural(10, seed=4, size=48)
    part = generate_procedural(3, seed=4, start=5, size=48)
    assert np.array_equal(whole.images[5:8], part.images) and np.array_equal(whole.labels[5:8], part.labels)
    assert not np.array_equal(generate_procedural(3, seed=5, start=5, size=48).images, part.images)


def test_classes_are_balanced_and_named():
    batch = generate_procedural(64, seed=0, size=32)
    assert batch.images.shape == (64, 32, 32, 3) and batch.images.dtype == np.uint8
    assert np.bincount(batch.labels, minlength=32).tolist() == [2] * 32
    assert (
        len(PROCEDURAL_CLASSES) == len(SHAPES) * len(FILLS) == 32 and PROCEDURAL_CLASSES[5] == f"{SHAPES[1]}/{FILLS[1]}"
    )


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_shape_fields_are_inside_at_the_centre_and_outside_far_away(shape):
    u = torch.tensor([0.0, 3.0, -3.0, 0.0, 0.0])
    v = torch.tensor([0.1, 0.0, 0.0, 3.0, -3.0])
    f = shape_field(shape, u, v)
    if SHAPES[shape] in ("ring", "crescent"):  # hollow / offset: test a point on the body instead of the centre
        f0 = shape_field(shape, torch.tensor([-0.85]), torch.tensor([0.0]))
        assert f0.item() < 0
    else:
        assert f[0] < 0
    assert (f[1:] > 0).all()


def test_disc_field_is_the_signed_distance():
    r = torch.linspace(0, 2, 9)
    assert torch.allclose(shape_field(SHAPES.index("disc"), r, torch.zeros_like(r)), r - 1)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_object_box_sits_around_the_object_centre(index):
    params = sample_scenes(1, seed=1, start=index)[0]
    batch = render_scenes([params], size=64)
    x0, y0, x1, y1 = batch.boxes[0]
    cx, cy = params.cx * 64, params.cy * 64
    assert x1 > x0 and y1 > y0
    # the box is within the object's reach of its centre: scale * the farthest point of any shape
    # (the square's corner, 0.85 * sqrt(2) units), plus the one-pixel anti-aliasing ramp
    reach = params.scale * 64 * 0.85 * math.sqrt(2) + 1
    assert x0 >= cx - reach and x1 <= cx + reach and y0 >= cy - reach and y1 <= cy + reach


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="label"):
        sample_scene(32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive"):
        generate_procedural(0)
    with pytest.raises(ValueError, match="at least 16"):
        generate_procedural(1, size=8)
    assert math.isclose(len(SHAPES) * len(FILLS), 32)
