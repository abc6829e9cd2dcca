"""The default test run checks vitmech's annotations at call time (jaxtyping shapes through beartype)."""

from __future__ import annotations

import importlib
import pkgutil

import jaxtyping
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.attention import mean_attention_distance


def test_a_wrong_shape_is_caught_at_the_call():
    patterns = torch.full((2, 5, 5), 0.2)
    mean_attention_distance(patterns, 16)  # "*batch query key": fine
    with pytest.raises(jaxtyping.TypeCheckError, match="patterns"):
        mean_attention_distance(patterns.double().int(), 16)  # not a float tensor
    with pytest.raises(jaxtyping.TypeCheckError, match="renormalise"):
        mean_attention_distance(patterns, 16, renormalise="yes")  # type: ignore[arg-type]


def test_checks_can_be_switched_off_for_validation_tests():
    with runtime_checks_off(), pytest.raises(TypeError, match="float tensor"):
        mean_attention_distance(torch.ones(2, 5, 5, dtype=torch.int64), 16)


def test_every_vitmech_module_is_loaded_through_the_checking_hook():
    """`--jaxtyping-packages=vitmech,...` instruments the whole package: each module's loader is the one
    jaxtyping's import hook substitutes (it decorates every function and dataclass). Fails if the option is
    narrowed to a list of modules again."""
    from jaxtyping._import_hook import _JaxtypingLoader  # the loader jaxtyping's import hook gives a module

    import vitmech

    modules = [info.name for info in pkgutil.walk_packages(vitmech.__path__, "vitmech.")]
    modules = ["vitmech", *(name for name in modules if name != "vitmech.__main__")]  # __main__ runs the CLI
    assert len(modules) > 100
    unchecked = [
        name for name in modules if not isinstance(importlib.import_module(name).__spec__.loader, _JaxtypingLoader)
    ]
    assert unchecked == []


def test_a_model_module_checks_its_shapes(tiny_vit, tiny_images):
    """vitmech.model was outside the checked modules before: a wrongly-shaped input now fails at the call."""
    tokens = tiny_vit.embed(tiny_images)  # [batch, patches, d_model]
    assert tiny_vit.blocks[0].attn(tokens).shape == tokens.shape
    with pytest.raises(jaxtyping.TypeCheckError, match="x"):
        tiny_vit.blocks[0].attn(tokens[0])  # one image without its batch axis
    with pytest.raises(jaxtyping.TypeCheckError, match="cls_features"):
        tiny_vit.head(tokens)  # the head takes one vector per image, not every token


def test_preprocess_takes_what_image_like_names(tiny_vit, tmp_path):
    """HookedViT.preprocess, checked, takes a PIL image, uint8 array and tensor, and a file path (str or Path)."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "image.png")
    from_array = tiny_vit.preprocess(rgb)
    for image in (Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1), tmp_path / "image.png"):
        assert torch.equal(tiny_vit.preprocess(image), from_array)
    assert torch.equal(tiny_vit.preprocess([str(tmp_path / "image.png"), rgb]), torch.cat([from_array] * 2))
