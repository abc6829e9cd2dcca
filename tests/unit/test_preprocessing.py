"""model.preprocess against the sources' own transforms (timm eval transform, HF ViTImageProcessor)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from transformers import ViTImageProcessor

from tests.helpers.typecheck import runtime_checks_off
from vitmech.preprocessing import HALF, Preprocessing, preprocess


def photo(width: int = 300, height: int = 260, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.random((height // 20 + 1, width // 20 + 1, 3))
    big = np.kron(smooth, np.ones((20, 20, 1)))[:height, :width]
    return Image.fromarray((big * 255).astype(np.uint8))


def test_matches_timm_eval_transform():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    data_cfg = resolve_data_config({}, model=model)
    expected = create_transform(**data_cfg)(photo())
    from vitmech.loading.timm import preprocessing_from_timm

    got = preprocess(photo(), preprocessing_from_timm(model))[0]
    assert got.shape == expected.shape == (3, 224, 224)
    assert (got - expected).abs().max() < 0.05  # PIL vs torchvision resampling round-offs only


def test_matches_hf_image_processor():
    processor = ViTImageProcessor(image_mean=list(HALF), image_std=list(HALF), size={"height": 224, "width": 224})
    expected = processor(photo(), return_tensors="pt")["pixel_values"][0]
    spec = Preprocessing(
        image_size=224, mean=HALF, std=HALF, interpolation="bilinear", resize_mode="squash", crop_pct=1.0
    )
    got = preprocess(photo(), spec)[0]
    assert (got - expected).abs().max() < 0.05


def test_accepts_pil_lists_uint8_arrays_and_tensors_alike(tiny_vit):
    model = tiny_vit
    images = [photo(seed=s) for s in range(3)]
    arrays = np.stack([np.asarray(im.resize((64, 64))) for im in images])
    from_pil = model.preprocess([im.resize((64, 64)) for im in images])
    from_array = model.preprocess(arrays)
    from_tensor = model.preprocess(torch.from_numpy(arrays).permute(0, 3, 1, 2))
    assert from_pil.shape == (3, 3, 32, 32)
    torch.testing.assert_close(from_pil, from_array)
    torch.testing.assert_close(from_pil, from_tensor)
    gray = model.preprocess(np.zeros((40, 40), dtype=np.uint8))
    assert gray.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert model(from_pil).shape == (3, 5)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.full((8, 8, 3), 2.0, dtype=np.float32), TypeError, r"\[0, 1\]"),
        (torch.zeros(1, 3, 8, 8), TypeError, "already normalised"),
        ([], ValueError, "empty"),
        (b"image bytes", TypeError, "cannot preprocess"),
    ],
)
def test_bad_images_are_refused(tiny_vit, bad, error, message):
    with runtime_checks_off(), pytest.raises(error, match=message):
        tiny_vit.preprocess(bad)


def test_preprocessing_spec_validation():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="cubic-ish")
    with pytest.raises(ValueError, match="preprocessing makes 224px images"):
        from tests.helpers.models import tiny_config
        from vitmech import HookedViT

        HookedViT(tiny_config(), preprocessing=Preprocessing(image_size=224))
