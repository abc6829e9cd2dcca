"""Cut, emptied, random and bit-flipped files of the kinds not covered by the other fault tests: optimizer
state, checkpoint and model manifests, a dataset's completion file, image files, targets files, config and
trainer state as non-text bytes, and a sweep store line whose number changed. Each is refused with a vitmech
error naming the file (and line for text), or skipped with a warning naming it when an intact copy exists.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.faults.children import model, train_setup
from tests.helpers.models import seeded_images
from vitmech import HookedViT
from vitmech.analysis.ablation import head_sweep
from vitmech.analysis.ablation.errors import StoreCorruptError
from vitmech.data import make_gz2_fixture, open_gz2
from vitmech.data._errors import CorruptDatasetError
from vitmech.data._io import DATASET_INFO
from vitmech.data.sources import load_image_source
from vitmech.data.targets import TargetsFileError, read_targets
from vitmech.errors import UnreadableImageError
from vitmech.fingerprint import module_fingerprint
from vitmech.io import CorruptFileError, StorageError
from vitmech.train import fit
from vitmech.train.checkpoint import DamagedCheckpointError, latest_checkpoint, read_trainer_state

RANDOM = np.random.default_rng(0).bytes(300)


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(RANDOM)
    else:
        raise ValueError(how)


def run(directory, stop_at_step=None):
    m, groups, data, config = train_setup()
    result = fit(m, groups, data, config, checkpoint_dir=directory, stop_at_step=stop_at_step, progress=False)
    return m, result


@pytest.fixture(scope="module")
def straight():
    m, groups, data, config = train_setup()
    result = fit(m, groups, data, config, progress=False)
    return module_fingerprint(m), result.history


@pytest.mark.parametrize("name", ["optimizer.safetensors", "manifest.json", "trainer.json"])
def test_a_damaged_file_of_the_newest_checkpoint_is_named_and_skipped(tmp_path, straight, caplog, name):
    run(tmp_path, stop_at_step=5)
    newest = latest_checkpoint(tmp_path)
    damage(newest / name, "cut")
    with caplog.at_level(logging.WARNING):
        m, result = run(tmp_path)
    assert f"skipping the damaged checkpoint {newest}" in caplog.text and name in caplog.text
    assert result.resumed_from == 4
    assert (module_fingerprint(m), result.history) == straight


@pytest.mark.parametrize("how", ["cut", "empty", "random"])
def test_a_damaged_optimizer_file_without_a_manifest_is_named(tmp_path, how):
    run(tmp_path, stop_at_step=2)
    last = latest_checkpoint(tmp_path)
    (last / "manifest.json").unlink()  # a checkpoint from before manifests: the reader itself must name it
    damage(last / "optimizer.safetensors", how)
    with pytest.raises(DamagedCheckpointError, match=r"optimizer\.safetensors") as info:
        run(tmp_path)
    assert str(last / "optimizer.safetensors") in str(info.value) and isinstance(info.value, StorageError)


@pytest.mark.parametrize("how", ["cut", "empty", "random"])
def test_a_damaged_model_manifest_is_named(tmp_path, how):
    folder = tmp_path / "m"
    model(1).save_pretrained(folder)
    damage(folder / "manifest.json", how)
    with pytest.raises(CorruptFileError, match=r"manifest\.json") as info:
        HookedViT.from_pretrained(str(folder))
    assert info.value.path == folder / "manifest.json"


@pytest.mark.parametrize("name", ["config.json", "trainer.json"])
def test_json_files_holding_random_bytes_are_named(tmp_path, name):
    if name == "config.json":
        folder = tmp_path / "m"
        model(1).save_pretrained(folder)
        (folder / "manifest.json").unlink()
        damage(folder / name, "random")
        with pytest.raises(CorruptFileError, match=r"config\.json") as info:
            HookedViT.from_pretrained(str(folder))
    else:
        run(tmp_path, stop_at_step=2)
        last = latest_checkpoint(tmp_path)
        (last / "manifest.json").unlink()
        damage(last / name, "random")
        with pytest.raises(StorageError, match=r"trainer\.json is not UTF-8") as info:
            read_trainer_state(last)
    assert info.value.path is not None and info.value.path.name == name


@pytest.mark.parametrize("how", ["cut", "empty", "random"])
def test_a_damaged_dataset_completion_file_is_named(tmp_path, how):
    path = make_gz2_fixture(tmp_path / "d", train_summaries=["spiral", "smooth_round"] * 4, image_size=16)
    damage(path / DATASET_INFO, how)
    with pytest.raises(CorruptDatasetError, match=DATASET_INFO) as info:
        open_gz2(path, cache_dir=tmp_path / "cache")
    assert info.value.path == path / DATASET_INFO


@pytest.mark.parametrize("how", ["cut", "empty", "random"])
def test_a_damaged_image_file_is_named_or_skipped_with_a_warning(tmp_path, how, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bad = folder / "2.png"
    damage(bad, how)
    with pytest.raises(UnreadableImageError, match=r"2\.png"):
        load_image_source(folder)
    with caplog.at_level(logging.WARNING):
        source = load_image_source(folder, skip_unreadable=True)
    assert len(source.images) == 3 and str(bad) in caplog.text


def test_damaged_targets_files_are_named(tmp_path):
    (tmp_path / "y.csv").write_bytes(b"0.5,1\n\xff\xfe\x00garbage\n")
    with pytest.raises(TargetsFileError, match=r"y\.csv"):
        read_targets(tmp_path / "y.csv", n_images=2)
    (tmp_path / "cut.csv").write_text("0.5,1\n1.5,2\n2.5")  # cut in the middle of the last row
    with pytest.raises(TargetsFileError, match=r"cut\.csv line 3 has 1 values"):
        read_targets(tmp_path / "cut.csv", n_images=3)
    np.save(tmp_path / "y.npy", np.arange(6.0))
    damage(tmp_path / "y.npy", "cut")
    with pytest.raises(TargetsFileError, match=r"y\.npy is not a readable \.npy file"):
        read_targets(tmp_path / "y.npy", n_images=6)


def test_a_store_line_whose_number_changed_is_named(tmp_path):
    tiny, images = model(4), seeded_images(8, 32, seed=6)
    kw = dict(batch_size=4, progress=False, layers=[1])
    reference = head_sweep(tiny, images, "mse_to_clean", **kw).to_frame()
    head_sweep(tiny, images, "mse_to_clean", store=tmp_path, **kw)
    (path,) = tmp_path.glob("sweep-*.jsonl")
    lines = path.read_bytes().split(b"\n")
    at = lines[4].index(b'"n":') + 4  # the image count of a record: 4 -> 5, still valid JSON
    lines[4] = lines[4][:at] + bytes([lines[4][at] ^ 0x01]) + lines[4][at + 1 :]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreCorruptError, match=r"line 5: checksum mismatch") as info:
        head_sweep(tiny, images, "mse_to_clean", store=tmp_path, **kw)
    assert info.value.path == path
    path.write_bytes(b"\n".join(lines[:4]) + b"\n")  # cut before the changed line, as the error advises
    resumed = head_sweep(tiny, images, "mse_to_clean", store=tmp_path, **kw).to_frame()
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)
