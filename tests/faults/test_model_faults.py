"""Model folders under faults: a save killed half-way, NaN weights, cut and random files, two writers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.faults.children import model
from tests.faults.killing import kill_at, run_child
from vitmech import HookedViT
from vitmech.errors import CheckpointMismatchError, NonFiniteWeightsError
from vitmech.io import CorruptFileError, IncompleteWriteError, LockHeldError, StorageError


def load_native(folder) -> HookedViT:
    """The public path: a local vitmech folder through HookedViT.from_pretrained."""
    return HookedViT.from_pretrained(str(folder))


def same_weights(a: HookedViT, b: HookedViT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_save_killed_after_the_weights_never_loads_new_weights_with_the_old_card(tmp_path):
    folder = tmp_path / "m"
    model(1).save_pretrained(folder, card={"seed": 1})
    done = run_child("save", str(folder), "2", "1")  # dies right after writing the weights
    assert done.returncode == -9, done.stderr[-2000:]
    try:
        loaded = load_native(folder)
    except StorageError as err:  # refused: the error names the folder
        assert str(folder) in str(err)
        return
    assert loaded.card == {"seed": 1} and same_weights(loaded, model(1))  # or the old model, whole


@pytest.mark.slow
def test_saves_killed_at_random_moments_leave_a_whole_model_or_a_named_error(tmp_path, rounds=8):
    rng = np.random.default_rng(1234)
    folder = tmp_path / "m"
    model(1).save_pretrained(folder, card={"seed": 1})
    expected = {1: model(1), 2: model(2)}
    for _ in range(rounds):
        kill_at(float(rng.uniform(0.0, 0.4)), "save_loop", str(folder), "200")
        try:
            loaded = load_native(folder)
        except StorageError as err:
            assert str(folder) in str(err)
        else:
            assert same_weights(loaded, expected[loaded.card["seed"]])
    model(2).save_pretrained(folder, card={"seed": 2})  # a new save always recovers (stale lock taken over)
    assert same_weights(load_native(folder), model(2))


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    m = model(1)
    with torch.no_grad():
        m.blocks[1].attn.W_Q[0, 0, 0] = float("nan")
    m.save_pretrained(tmp_path / "m")
    with pytest.raises(NonFiniteWeightsError, match=r"blocks\.1\.attn\.W_Q") as info:
        load_native(tmp_path / "m")
    assert "model.safetensors" in str(info.value) and info.value.nonfinite == ["blocks.1.attn.W_Q"]
    with pytest.raises(NonFiniteWeightsError):
        HookedViT.from_pretrained(str(tmp_path / "m"))
    loaded = HookedViT.from_pretrained(str(tmp_path / "m"), allow_nonfinite=True)
    assert torch.isnan(loaded.blocks[1].attn.W_Q).any()


def test_nan_in_a_plain_state_dict_file_is_refused(tmp_path):
    m = model(1)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["embed.W_E"][0, 0] = float("inf")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(NonFiniteWeightsError, match=r"embed\.W_E \(0 NaN, 1 inf"):
        HookedViT.from_checkpoint(tmp_path / "w.safetensors", config=m.cfg)


@pytest.mark.parametrize("damage", ["empty", "cut", "random"])
def test_damaged_weight_files_name_the_path(tmp_path, damage):
    folder = tmp_path / "m"
    model(1).save_pretrained(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    garbage = {"empty": b"", "cut": data[: len(data) // 3], "random": np.random.default_rng(0).bytes(len(data))}
    for target in (weights, tmp_path / "lone.safetensors"):
        target.write_bytes(garbage[damage])
    (folder / "manifest.json").unlink()  # without the manifest the reader itself must name the file
    with pytest.raises(CorruptFileError) as info:
        load_native(folder)
    assert str(weights) in str(info.value)
    with pytest.raises(CorruptFileError, match="lone.safetensors"):
        HookedViT.from_checkpoint(tmp_path / "lone.safetensors")


def test_a_cut_weight_file_is_caught_by_the_manifest(tmp_path):
    folder = tmp_path / "m"
    model(1).save_pretrained(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor: safetensors itself would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="model.safetensors.*SHA-256"):
        load_native(folder)


def test_a_cut_config_names_file_and_line(tmp_path):
    folder = tmp_path / "m"
    model(1).save_pretrained(folder)
    config = folder / "config.json"
    config.write_text(config.read_text()[:100])
    (folder / "manifest.json").unlink()
    with pytest.raises(CorruptFileError, match=r"config\.json is not valid JSON at line \d+") as info:
        HookedViT.from_pretrained(str(folder))
    assert info.value.line is not None and info.value.path == config


def test_a_config_from_another_save_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    model(1).save_pretrained(a, card={"seed": 1})
    model(2).save_pretrained(b, card={"seed": 2})
    (a / "config.json").write_text((b / "config.json").read_text())
    (a / "manifest.json").unlink()
    with pytest.raises(IncompleteWriteError, match="different saves"):
        load_native(a)


def test_a_second_writer_on_a_model_folder_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "x", "what": "a save"}
    (folder / ".vitmech.lock").write_text(json.dumps(holder))
    with pytest.raises(LockHeldError, match=f"pid {os.getppid()}"):
        model(1).save_pretrained(folder)
    with pytest.raises(IncompleteWriteError, match="still writing"):
        load_native(folder) if (folder / "model.safetensors").exists() else load_native_after_save(folder)


def load_native_after_save(folder):
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    return load_native(folder)


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a finished process: its pid is free now
    dead.wait()
    pid = dead.pid
    (folder / ".vitmech.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    model(1).save_pretrained(folder)
    assert same_weights(load_native(folder), model(1)) and not (folder / ".vitmech.lock").exists()


def test_errors_are_vitmech_errors():
    assert issubclass(NonFiniteWeightsError, CheckpointMismatchError)
    assert issubclass(CorruptFileError, ValueError)
