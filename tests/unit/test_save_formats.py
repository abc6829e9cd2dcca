"""save_pretrained(format="hf") is a folder transformers' Auto classes load with the same logits;
format="timm" is timm's hub layout; both load back into HookedViT."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech import HookedViT


def test_hf_format_loads_with_transformers_auto_classes(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = tiny_model(seed=3)
    images = seeded_images(2, 32)
    model.save_pretrained(tmp_path / "hf", format="hf")
    hf = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=images).logits, model(images), atol=1e-4, rtol=1e-4)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert list(processor.image_mean) == pytest.approx(list(model.preprocessing.mean))
    back = HookedViT.from_pretrained(str(tmp_path / "hf"))
    with torch.no_grad():
        torch.testing.assert_close(back(images), model(images), atol=1e-5, rtol=1e-5)


def test_timm_format_and_unknown_formats(tmp_path):
    model = tiny_model(seed=4)
    model.save_pretrained(tmp_path / "timm", format="timm")
    assert (tmp_path / "timm" / "model.safetensors").exists() and (tmp_path / "timm" / "config.json").exists()
    with pytest.raises(ValueError, match="'vitmech', 'hf' or 'timm'"):
        model.save_pretrained(tmp_path / "x", format="onnx")
