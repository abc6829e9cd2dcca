"""The `vitmech` command: fast --help, every subcommand's --quick run, the output-folder guard, weights
from the offline hub cache, random weights only when asked (and stamped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.models import tiny_model
from vitmech.cli import main, run_command
from vitmech.cli.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_model(seed=0).save_pretrained(root / "before")
    tiny_model(seed=1).save_pretrained(root / "after")
    tiny_model(seed=2, n_classes=2).save_pretrained(root / "binary")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "images" / cls / f"{i}.png")
    return root


def test_help_is_fast_and_does_not_import_torch():
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vitmech.cli import main; main(['--help']); print('torch' in sys.modules)",
        ],
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    assert done.stdout.strip().endswith("False"), "vitmech --help imported torch"
    for name in COMMANDS:
        assert name in done.stdout
    assert seconds < 5.0, f"vitmech --help took {seconds:.2f} s (interpreter start included)"


def test_python_dash_m_vitmech_and_subcommand_help_show_defaults():
    done = subprocess.run(
        [sys.executable, "-m", "vitmech", "compare", "--help"],
        env=env(COLUMNS="250"),
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(done.stdout.split())
    assert "--before NAME" in text and "(default: vitmech/mini-pretrained)" in text
    assert "--n-images N" in text and "(default: 64)" in text and "--force" in text and "--random-init" in text


def test_unknown_command_suggests_a_close_one(capsys):
    with pytest.raises(SystemExit, match="Did you mean: compare"):
        main(["compaer"])


QUICK_RUNS = {
    "compare": lambda t: ["--before", str(t / "before"), "--after", str(t / "after"), "--images", str(t / "images")],
    "locality": lambda t: ["--model", str(t / "before"), "--model", str(t / "after"), "--images", str(t / "images")],
    "cls": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
    "rollout": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
    "circuits": lambda t: ["--before", str(t / "before"), "--after", str(t / "after"), "--images", str(t / "images")],
    "attention-check": lambda t: ["--model", str(t / "before")],
    "ablate": lambda t: ["--model", str(t / "binary"), "--images", str(t / "images")],
    "finetune": lambda t: [
        "--model",
        str(t / "before"),
        "--images",
        str(t / "images"),
        "--n-train",
        "3",
        "--n-val",
        "1",
        "--n-test",
        "2",
    ],
    "finetune-chirp": lambda t: ["--model", str(t / "before")],
    "patch": lambda t: [],
    "pretrain": lambda t: [],
    "data": lambda t: [],
    "models": lambda t: ["--pages"],
    "align": lambda t: ["--model", str(t / "before")],
    "explain": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
    "misclassified": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
}


def test_every_command_has_a_quick_test():
    assert set(QUICK_RUNS) == set(COMMANDS)


@pytest.mark.parametrize("command", list(QUICK_RUNS))
def test_quick_run(command, tiny, tmp_path):
    out = tmp_path / "out"
    code = run_command(command, [*QUICK_RUNS[command](tiny), "--quick", "--no-progress", "--out", str(out)])
    assert code == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files, f"{command} wrote nothing under --out"
    if command not in ("data", "models", "attention-check"):
        assert (out / "report.md").exists()


def test_the_output_folder_is_never_overwritten_without_force(tiny, tmp_path, monkeypatch):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["--model", str(tiny / "before"), "--quick", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit, match="exists and is not empty"):
        run_command("attention-check", args)
    assert run_command("attention-check", [*args, "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine"
    # the default folder is runs/<command>-<time> under the current folder, never the package or docs
    monkeypatch.chdir(tmp_path)
    assert run_command("attention-check", ["--model", str(tiny / "before"), "--quick"]) == 0
    made = list((tmp_path / "runs").iterdir())
    assert len(made) == 1 and made[0].name.startswith("attention-check-")


def test_resumable_studies_need_resume_or_restart(tiny, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "--model",
        str(tiny / "binary"),
        "--images",
        str(tiny / "images"),
        "--quick",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert run_command("ablate", args) == 0
    with pytest.raises(SystemExit, match="--resume to continue"):
        run_command("ablate", args)
    first = (out / "all_heads.csv").read_text()
    assert run_command("ablate", [*args, "--resume"]) == 0
    assert (out / "all_heads.csv").read_text() == first
    assert run_command("ablate", [*args, "--restart"]) == 0


def test_labels_are_checked_against_the_head(tiny, tmp_path):
    args = ["--model", str(tiny / "before"), "--images", str(tiny / "images"), "--quick", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="head has 5 outputs but the 2 classes"):
        run_command("ablate", args)


def test_shipped_models_are_listed(capsys):
    assert run_command("models", []) == 0
    assert "vitmech/mini-galaxy" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- weights


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty HF hub cache, offline, as a cluster node without internet sees it."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def plant_timm_weights(cache: Path, name: str = "vit_tiny_patch16_224") -> dict:
    """Put seeded weights for `name` into the hub cache the way a download leaves them."""
    import timm
    import torch
    from safetensors.torch import save_file

    model = timm.create_model(name, pretrained=False)
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}
    repo = cache / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file(state, repo / "snapshots" / "abc" / "model.safetensors")
    return state


def test_offline_weights_come_from_the_hub_cache_as_from_pretrained(offline_cache):
    import torch

    from vitmech import HookedViT
    from vitmech.cli.models import load_model

    state = plant_timm_weights(offline_cache)
    loaded = load_model("vit_tiny_patch16_224")
    assert not loaded.random and loaded.note == "pretrained weights"
    reference = HookedViT.from_pretrained("vit_tiny_patch16_224")
    for ours, theirs in zip(loaded.model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours, theirs)
    # and they are the planted weights, not a random init
    assert torch.equal(loaded.model.W_pos, state["pos_embed"][0])


def test_offline_without_cached_weights_fails_in_one_line_unless_random_init(offline_cache, tmp_path, capsys):
    args = ["--model", "vit_tiny_patch16_224", "--quick", "--no-progress"]
    started = time.perf_counter()
    with pytest.raises(SystemExit) as failure:
        run_command("attention-check", [*args, "--out", str(tmp_path / "a")])
    assert time.perf_counter() - started < 30
    message = str(failure.value)
    assert "\n" not in message and "vit_tiny_patch16_224" in message
    assert "--random-init" in message and "HF_HUB_CACHE" in message and "timm.create_model" in message
    assert run_command("attention-check", [*args, "--random-init", "--out", str(tmp_path / "b")]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    assert "RANDOM WEIGHTS" in (tmp_path / "b" / "report.md").read_text()


def test_random_weights_are_stamped_on_report_figures_and_json(tmp_path):
    import matplotlib.pyplot as plt

    from vitmech.cli.outputs import StudyReport

    report = StudyReport(tmp_path, "t", random_weights=["vit_tiny_patch16_224"])
    fig, _ = plt.subplots()
    stamped = fig
    report.add_figure("f", fig)
    report.add_json("j", {"x": 1})
    report.write()
    assert any(t.get_text() == "RANDOM WEIGHTS" for t in stamped.texts)
    assert "RANDOM WEIGHTS" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "j.json").read_text())["random_weights"] == ["vit_tiny_patch16_224"]
