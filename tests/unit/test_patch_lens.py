"""Per-patch logit lens: the class token's last stage is the model's logits; every patch row is the final LN and
head applied by hand to that token; grids follow the token layout."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.patch_lens import patch_logit_lens
from vitmech.errors import PatchingError
from vitmech.tokens import token_layout


def test_patch_lens_matches_the_model_and_a_manual_readout():
    model = tiny_model(seed=4)
    images = seeded_images(3, 32, seed=2)
    lens = patch_logit_lens(model, images, batch_size=2)
    L, P, C = model.cfg.n_layers, model.cfg.n_tokens, model.cfg.n_classes
    assert lens.logits.shape == (3, L + 1, P, C) and lens.labels == ["embed", "L0", "L1", "L2"]
    cls = token_layout(model).require_class_token("test")
    torch.testing.assert_close(lens.logits[:, -1, cls], model(images), atol=1e-5, rtol=0)
    _, cache = model.run_with_cache(images)
    resid = cache["blocks.1.hook_resid_post"]  # stage 2
    manual = model.ln_final(resid) @ model.W_H + model.b_H
    torch.testing.assert_close(lens.logits[:, 2], manual, atol=1e-5, rtol=0)
    grid = lens.class_grid(3)
    assert grid.shape == (3, L + 1, 4, 4)
    patch = token_layout(model).n_prefix + 1 * 4 + 2  # row 1, column 2
    assert grid[0, 2, 1, 2] == pytest.approx(manual[0, patch, 3].item(), abs=1e-5)
    probabilities = lens.probability_grid(3)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    agreement = lens.agreement(model(images).argmax(-1))
    assert agreement.shape == (L + 1,) and ((agreement >= 0) & (agreement <= 1)).all()
    with pytest.raises(PatchingError):
        lens.class_grid(9)
