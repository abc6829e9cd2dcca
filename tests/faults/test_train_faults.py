"""Training runs under faults: kills, damaged checkpoints, incomplete optimizer state, NaN, two writers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.faults.children import TIMING_CARD_KEYS, train_setup
from tests.faults.killing import kill_at, run_child
from vitmech.errors import NonFiniteWeightsError
from vitmech.fingerprint import module_fingerprint
from vitmech.io import LockHeldError
from vitmech.io.manifest import write_manifest
from vitmech.train import TierConfig, fine_tune, fit
from vitmech.train.checkpoint import (
    FILES,
    DamagedCheckpointError,
    checkpoint_dirs,
    latest_checkpoint,
    read_trainer_state,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def straight():
    m, groups, data, config = train_setup()
    result = fit(m, groups, data, config, progress=False)
    return module_fingerprint(m), result.history


def run(directory, stop_at_step=None, **overrides):
    m, groups, data, config = train_setup()
    result = fit(m, groups, data, config, checkpoint_dir=directory, stop_at_step=stop_at_step, progress=False)
    return m, result


def test_a_resumed_run_logs_the_same_history_as_an_uninterrupted_one(tmp_path, straight):
    weights, history = straight
    run(tmp_path, stop_at_step=4)  # between two history rows (log_every=3)
    m, result = run(tmp_path)
    assert result.resumed_from == 4
    assert module_fingerprint(m) == weights
    assert result.history == history  # the loss row at step 6 averages steps 4-6, as without the break
    assert result.final_loss == history[-1]["loss"]


def test_the_global_rng_is_restored_on_resume(tmp_path):
    torch.manual_seed(7)
    run(tmp_path, stop_at_step=4)
    after_interruption = torch.rand(3)
    torch.manual_seed(99)  # a new process would start elsewhere
    run(tmp_path / "never", stop_at_step=1)
    shutil.rmtree(tmp_path / "never")
    torch.manual_seed(12345)
    # resuming from step 4 and stopping at once (step 4 again) puts the RNG where the first run left it
    m, groups, data, config = train_setup()
    fit(m, groups, data, config, checkpoint_dir=tmp_path, stop_at_step=4, progress=False)
    assert torch.equal(torch.rand(3), after_interruption)


def drop_one_moment(checkpoint, key_suffix="exp_avg_sq", keep_manifest=True):
    opt = load_file(str(checkpoint / "optimizer.safetensors"))
    dropped = sorted(k for k in opt if k.endswith(key_suffix))[1]
    del opt[dropped]
    save_file(opt, str(checkpoint / "optimizer.safetensors"))
    if keep_manifest:
        write_manifest(checkpoint, FILES, kind="vitmech-train-checkpoint")  # as if written that way
    else:
        (checkpoint / "manifest.json").unlink()
    return dropped


@pytest.mark.parametrize("keep_manifest", [True, False])
def test_an_optimizer_file_lacking_a_parameters_moments_is_refused(tmp_path, keep_manifest):
    run(tmp_path, stop_at_step=3)
    last = latest_checkpoint(tmp_path)
    dropped = drop_one_moment(last, keep_manifest=keep_manifest)
    if not keep_manifest:
        state = json.loads((last / "trainer.json").read_text())
        state.pop("optimizer_state")  # a checkpoint from before the record
        (last / "trainer.json").write_text(json.dumps(state))
    with pytest.raises(DamagedCheckpointError, match="optimizer state") as info:
        run(tmp_path)
    assert dropped in str(info.value) and "optimizer.safetensors" in str(info.value)


def test_a_damaged_newest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(tmp_path, straight, caplog):
    weights, history = straight
    run(tmp_path, stop_at_step=5)
    newest = latest_checkpoint(tmp_path)
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        m, result = run(tmp_path)
    assert str(newest) in caplog.text and "damaged" in caplog.text
    assert result.resumed_from == 4
    assert module_fingerprint(m) == weights and result.history == history


def test_a_cut_trainer_json_names_the_file(tmp_path):
    run(tmp_path, stop_at_step=2)
    state = latest_checkpoint(tmp_path) / "trainer.json"
    state.write_text(state.read_text()[:40])
    with pytest.raises(DamagedCheckpointError, match=r"trainer\.json is not valid JSON at line \d+") as info:
        read_trainer_state(state.parent)
    assert info.value.path == state


def test_a_checkpoint_deleted_half_way_is_not_listed(tmp_path):
    run(tmp_path, stop_at_step=3)
    newest = latest_checkpoint(tmp_path)
    (newest / "model.safetensors").unlink()  # what a delete killed half-way leaves
    assert newest not in checkpoint_dirs(tmp_path)
    assert latest_checkpoint(tmp_path).name == "step_0000002"


def test_nan_weights_in_a_checkpoint_are_named_not_blamed_on_the_learning_rate(tmp_path):
    run(tmp_path, stop_at_step=2)
    last = latest_checkpoint(tmp_path)
    state = load_file(str(last / "model.safetensors"))
    state["blocks.0.mlp.W_in"][0, 0] = float("nan")
    save_file(state, str(last / "model.safetensors"))
    write_manifest(last, FILES, kind="vitmech-train-checkpoint")
    with pytest.raises(NonFiniteWeightsError, match=r"blocks\.0\.mlp\.W_in") as info:
        run(tmp_path)
    assert "learning rate" not in str(info.value) and str(last) in str(info.value)


def test_a_second_writer_on_a_run_folder_is_refused(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "t0"}
    (tmp_path / ".vitmech.lock").write_text(json.dumps(holder))
    with pytest.raises(LockHeldError, match=f"training run folder {tmp_path}.*pid {os.getppid()}"):
        run(tmp_path)


def test_two_writers_of_the_same_step_do_not_share_a_temporary_folder(tmp_path):
    m, groups, data, config = train_setup()
    optimizer = torch.optim.AdamW(groups)
    errors = []

    def save():
        try:
            for _ in range(5):
                save_checkpoint(tmp_path, 7, m, optimizer, {"fingerprint": {}}, keep=0)
        except Exception as err:  # noqa: BLE001 - the test reports any
            errors.append(err)

    threads = [threading.Thread(target=save) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    (only,) = checkpoint_dirs(tmp_path)
    assert latest_checkpoint(tmp_path) == only  # intact: manifest checks out


@pytest.mark.slow
def test_a_fine_tune_killed_after_its_first_checkpoint_resumes_to_identical_weights(tmp_path, straight):
    weights, history = straight
    out, run_dir = tmp_path / "out.json", tmp_path / "run"
    rng = np.random.default_rng(7)
    killed = kill_at(
        float(rng.uniform(0.0, 0.2)),
        "train",
        str(tmp_path / "run"),
        str(out),
        when=lambda: bool(checkpoint_dirs(run_dir)),
    )
    assert killed
    done = run_child("train", str(tmp_path / "run"), str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["weights"] == weights and result["history"] == json.loads(json.dumps(history))


@pytest.fixture(scope="module")
def straight_fine_tune():
    """An uninterrupted `fine_tune` of the child's recipe: fingerprint, card (timings left out), history."""
    m, _, data, config = train_setup()
    result = fine_tune(
        m, data, TierConfig("full", head_lr=1e-2, backbone_lr=3e-3), config, new_head=False, progress=False
    )
    card = {k: v for k, v in result.card().items() if k not in TIMING_CARD_KEYS}
    record = {"weights": module_fingerprint(result.model), "card": card, "history": result.train_result.history}
    return json.loads(json.dumps(record))


@pytest.mark.slow
def test_fine_tunes_killed_at_random_moments_resume_to_identical_weights_card_and_history(tmp_path, straight_fine_tune):
    out, run_dir = tmp_path / "out.json", tmp_path / "run"
    rng = np.random.default_rng(2024)
    kills = 0
    for _ in range(6):  # each kill comes a seeded random time after the child's first new checkpoint
        before = {p.name for p in checkpoint_dirs(run_dir)}
        kills += kill_at(
            float(rng.uniform(0.0, 0.5)),
            "finetune",
            str(run_dir),
            str(out),
            when=lambda before=before: {p.name for p in checkpoint_dirs(run_dir)} != before,
        )
        if out.exists():
            break
    assert kills >= 3  # most rounds died mid-run
    done = run_child("finetune", str(run_dir), str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["weights"] == straight_fine_tune["weights"]
    assert result["history"] == straight_fine_tune["history"]
    assert result["card"] == straight_fine_tune["card"]  # final_train_loss included
