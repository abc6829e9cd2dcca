"""Bad input named clearly: hook names with close matches, 16-bit and float images scaled, elongated images
warned about, corrupt files named, labels checked against the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.models import seeded_images, tiny_model
from vitmech.errors import InputError
from vitmech.hook_names import HookNameError


def test_a_hook_name_typo_suggests_the_right_name(tiny_vit):
    model = tiny_vit
    images = seeded_images(1, 32)
    with pytest.raises(HookNameError, match=r"no hook 'blocks.1.attn.hook_zz'.*Closest: blocks.1.attn.hook_z"):
        model.run_with_hooks(images, fwd_hooks=[("blocks.1.attn.hook_zz", lambda z, hook: z)])
    with pytest.raises(KeyError):  # still a KeyError for code that caught transformer_lens' error
        model.run_with_cache(images, names_filter=["blocks.0.hook_resid_pree"])


def test_a_layer_out_of_range_names_the_range(tiny_vit):
    model = tiny_vit  # 3 layers
    with pytest.raises(
        HookNameError, match=r"layer 3 is out of range \(this model has 3 layers, 0 to 2\).*blocks.2.attn.hook_z"
    ):
        model.run_with_hooks(seeded_images(1, 32), fwd_hooks=[("blocks.3.attn.hook_z", lambda z, hook: z)])


def test_valid_names_and_filters_still_run(tiny_vit):
    model = tiny_vit
    images = seeded_images(2, 32)
    seen = []
    model.run_with_hooks(images, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: seen.append(z.shape))])
    model.run_with_hooks(images, fwd_hooks=[(lambda n: n.endswith("hook_z"), lambda z, hook: seen.append(z.shape))])
    assert len(seen) == 1 + 3
    _, cache = model.run_with_cache(images, names_filter="blocks.0.hook_resid_pre")
    assert list(cache.keys()) == ["blocks.0.hook_resid_pre"]


def test_16_bit_and_float_images_are_scaled_not_saturated(tiny_vit, tmp_path):
    from vitmech.data.sources import read_image

    model = tiny_vit
    ramp = np.tile(np.linspace(0, 65535, 40, dtype=np.uint16), (40, 1))  # dark to bright across the image
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(read_image(tmp_path / "deep.png"))
    assert rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0
    assert (rgb[:, :, 0] == 255).mean() < 0.05, "a 16-bit image must not saturate"
    np.testing.assert_allclose(rgb[0, :, 0], np.round(np.linspace(0, 255, 40)), atol=1)
    from_path = model.preprocess(str(tmp_path / "deep.png"))
    from_uint8 = model.preprocess(rgb)
    torch.testing.assert_close(from_path, from_uint8)
    as_float = model.preprocess(ramp.astype(np.float32)[..., None].repeat(3, -1) / 65535)
    torch.testing.assert_close(as_float, from_uint8, atol=0.02, rtol=0)


def test_elongated_images_follow_the_model_transform_with_a_warning():
    from vitmech.preprocessing import Preprocessing, preprocess

    tall = np.zeros((501, 37, 3), dtype=np.uint8)
    tall[:, :, 0] = np.linspace(0, 255, 501, dtype=np.uint8)[:, None]  # red rises top to bottom
    crop = Preprocessing(image_size=32, crop_pct=1.0, resize_mode="shortest_edge_crop", mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.warns(UserWarning, match="aspect ratio beyond 3:1.*central"):
        out = preprocess(tall, crop)
    red = out[0, 0]
    # resize shorter side + centre crop keeps the middle: the red ramp spans only ~7% of its range
    assert float(red.max() - red.min()) < 0.15
    squash = Preprocessing(image_size=32, crop_pct=1.0, resize_mode="squash", mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.warns(UserWarning, match="squashes it 13.5:1"):
        preprocess(tall, squash)


def test_a_truncated_jpeg_is_named(tiny_vit, tmp_path):
    from vitmech.data.sources import UnreadableImageError, read_image
    from vitmech.errors import ImageInputError

    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.jpg", quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    model = tiny_vit
    lazy = Image.open(tmp_path / "cut.jpg")  # PIL opens it; decoding fails later, inside preprocess
    with pytest.raises(ImageInputError, match="cut.jpg"):
        model.preprocess(lazy)
    lazy.close()


def test_labels_out_of_range_for_the_head_are_refused(tiny_vit):
    from vitmech.analysis.ablation import head_sweep
    from vitmech.analysis.ablation.errors import AblationError
    from vitmech.train.errors import HeadMismatchError
    from vitmech.train.heads import check_labels

    model = tiny_vit  # 5 classes
    with pytest.raises(HeadMismatchError, match="label 9 is out of range for the model's head with 5 classes"):
        check_labels(model, torch.tensor([0, 9]))
    with pytest.raises(
        (AblationError, ValueError), match=r"(label 9 is out of range|outside the model's 5 classes.*\[9\])"
    ):
        head_sweep(model, seeded_images(2, 32), "cross_entropy", targets=torch.tensor([0, 9]), progress=False)


def test_attention_metrics_read_the_geometry_from_the_model(tiny_vit):
    from vitmech.analysis.attention import attention_metrics, collect_patterns, mean_attention_distance
    from vitmech.tokens import token_layout

    model = tiny_vit  # patch 8 on a 4 x 4 grid
    patterns = collect_patterns(model, seeded_images(2, 32), progress=False)
    from_model = attention_metrics(patterns, model)
    # the distances are the formula's with the model's own 8 px and layout
    by_hand = mean_attention_distance(patterns, 8, layout=token_layout(model))
    torch.testing.assert_close(from_model.mean_distance, by_hand)
    torch.testing.assert_close(from_model.mean_distance, attention_metrics(patterns, model.cfg).mean_distance)
    with torch.no_grad():
        _, cache = model.run_with_cache(seeded_images(2, 32))
    torch.testing.assert_close(from_model.mean_distance, attention_metrics(patterns, cache).mean_distance)
    # a wrong patch size can no longer silently double the distances: a bare number is refused, and one
    # given beside the model must agree with it
    for wrong in (16, 16.0, "16"):
        with pytest.raises(InputError, match="reads the patch size and token layout from the model"):
            attention_metrics(patterns, wrong)
    with pytest.raises(InputError, match="reads the patch size and token layout from the model"):
        attention_metrics(patterns, patch_size=16)
    with pytest.raises(InputError, match="patch_size=16 contradicts the model's patch size of 8 px"):
        attention_metrics(patterns, model, patch_size=16)
    torch.testing.assert_close(attention_metrics(patterns, model, patch_size=8).mean_distance, by_hand)
    with pytest.raises(InputError, match="contradicts the model's own token layout"):
        attention_metrics(patterns, model, layout=token_layout(tiny_model(n_register_tokens=2)))
