"""experiments/01_manual_attention.py (seed 000's first script): offline, a timm name gets seeded random
weights and says so; the hand-computed pattern must equal hook_pattern."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.models import tiny_model
from tests.helpers.scripts import load_experiment

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "01_manual_attention.py"


def load_script():
    return load_experiment("01_manual_attention.py")


def test_a_timm_name_offline_needs_random_init_and_then_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(SystemExit, match="--random-init"):
        load_script().main(["--model", "vit_tiny_patch16_224", "--layer", "11", "--out", str(tmp_path / "a")])
    args = ["--model", "vit_tiny_patch16_224", "--layer", "11", "--random-init", "--out", str(tmp_path / "b")]
    assert load_script().main(args) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "PASS" in out and "12 layers x 3 heads" in out


def test_a_saved_model_by_path_and_a_bad_layer(tmp_path, capsys):
    tiny_model(seed=4).save_pretrained(tmp_path / "m")
    script = load_script()
    assert script.main(["--model", str(tmp_path / "m"), "--layer", "0", "--out", str(tmp_path / "r")]) == 0
    assert "shipped/local weights" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage_error:
        script.main(["--model", str(tmp_path / "m"), "--layer", "3", "--out", str(tmp_path / "r2")])
    assert usage_error.value.code == 2 and "--layer must be in [0, 3)" in capsys.readouterr().err
