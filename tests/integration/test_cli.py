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
    "pretrain": lambda t: [],
    "data": lambda t: [],
    "models": lambda t: ["--pages"],
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

PLANT = """
import os, sys, timm, torch
from safetensors.torch import save_file
model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
torch.manual_seed(3)
state = {k: torch.randn_like(v).contiguous() for k, v in model.state_dict().items()}
repo = os.path.join(os.environ["HF_HUB_CACHE"], "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k")
os.makedirs(os.path.join(repo, "snapshots", "abc"))
os.makedirs(os.path.join(repo, "refs"))
open(os.path.join(repo, "refs", "main"), "w").write("abc")
save_file(state, os.path.join(repo, "snapshots", "abc", "model.safetensors"))
torch.save(state["head.weight"], sys.argv[1])
"""

USE = """
import sys, torch
from vitmech.cli.models import load_model
loaded = load_model("vit_tiny_patch16_224")
head = torch.load(sys.argv[1])
print(loaded.random, loaded.note, torch.equal(loaded.model.W_H.T.contiguous(), head) or torch.equal(loaded.model.W_H, head))
"""


@pytest.mark.slow
def test_offline_weights_come_from_the_hub_cache_as_from_pretrained(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    run_env = env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    subprocess.run([sys.executable, "-c", PLANT, str(tmp_path / "head.pt")], env=run_env, check=True)
    done = subprocess.run(
        [sys.executable, "-c", USE, str(tmp_path / "head.pt")], env=run_env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "pretrained", "weights", "True"]


def test_offline_without_cached_weights_fails_in_one_line_unless_random_init(tmp_path):
    run_env = env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty"), HF_HOME=str(tmp_path / "home"))
    args = [sys.executable, "-m", "vitmech", "attention-check", "--model", "vit_tiny_patch16_224", "--quick"]
    started = time.perf_counter()
    done = subprocess.run(
        [*args, "--out", str(tmp_path / "a")], env=run_env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode != 0 and time.perf_counter() - started < 60
    message = done.stderr.strip().splitlines()[-1]
    assert "vit_tiny_patch16_224" in message and "--random-init" in message and "HF_HUB_CACHE" in message
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [*args, "--random-init", "--out", str(tmp_path / "b")],
        env=run_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "RANDOM WEIGHTS" in done.stdout and "RANDOM WEIGHTS" in (tmp_path / "b" / "report.md").read_text()


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
