"""Property tests of the data layer's small invariants (hash splits, boxes, target scaling)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vitmech.data import mask_to_box
from vitmech.data._splits import hash_rank
from vitmech.data.chirps import TargetScaler
from vitmech.data.galaxies import FEATURES, pack_masks, unpack_masks

ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids, st.integers(0, 2**31), st.integers(0, 60))
def test_hash_rank_is_a_permutation_that_ignores_row_order(values, seed, k):
    order = hash_rank(values, seed, "pool")
    assert sorted(order.tolist()) == list(range(len(values)))
    head = {values[i] for i in order[:k]}
    reversed_values = values[::-1]
    head_reversed = {reversed_values[i] for i in hash_rank(reversed_values, seed, "pool")[:k]}
    assert head == head_reversed  # the first k rows depend on the ids, not on their order


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.data())
def test_mask_to_box_is_the_tight_box(h, w, data):
    cells = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    mask = np.array(cells, dtype=bool).reshape(h, w)
    box = mask_to_box(mask)
    if not mask.any():
        assert box is None
        return
    x0, y0, x1, y1 = box
    assert mask[y0:y1, x0:x1].sum() == mask.sum()
    assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31))
def test_pack_unpack_masks(seed):
    rng = np.random.default_rng(seed)
    masks = {name: rng.random((9, 7)) < 0.3 for name in FEATURES}
    back = unpack_masks(pack_masks(masks))
    assert all(np.array_equal(back[name], masks[name]) for name in FEATURES)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(3, 50))
def test_target_scaler_inverse(seed, n):
    raw = np.random.default_rng(seed).normal([20, 50, 50], [10, 30, 30], size=(n, 3))
    scaler = TargetScaler.fit(raw)
    assert np.allclose(scaler.inverse(scaler.transform(raw)), raw)
