"""The `vitmech` command: fast --help, every subcommand's --quick run, the output-folder guard, weights
from the offline hub cache, random weights only when asked (and stamped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.helpers.models import write_study_inputs
from vitmech.cli import main, run_command
from vitmech.cli.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return write_study_inputs(root)


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


def test_every_subcommand_help_is_fast_and_does_not_import_torch():
    """Each `vitmech COMMAND --help` in one fresh interpreter: builds the parser without torch, quickly."""
    script = (
        "import sys, time, json\n"
        "started = time.process_time()\n"
        "from vitmech.cli import main\n"
        "from vitmech.cli.commands import COMMANDS\n"
        "main(['--help'])\n"
        "seconds = {'vitmech --help (import + help, CPU s)': time.process_time() - started}\n"
        "for name in COMMANDS:\n"
        "    started = time.perf_counter()\n"
        "    try:\n"
        "        main([name, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    seconds[name] = time.perf_counter() - started\n"
        "    assert 'torch' not in sys.modules, f'{name} --help imported torch'\n"
        "print(json.dumps(seconds), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seconds = json.loads(done.stderr.strip().splitlines()[-1])
    top = seconds.pop("vitmech --help (import + help, CPU s)")
    assert top < 1.0, f"vitmech --help took {top:.2f} s of CPU (import included)"  # ~0.1 s measured
    assert set(seconds) == set(COMMANDS)
    slow = {name: round(s, 2) for name, s in seconds.items() if s > 2.0}  # each takes ~0.01 s once loaded
    assert not slow, f"--help too slow: {slow}"


def test_align_flags_show_the_study_defaults():
    """`vitmech align` keeps its flags torch-free by restating AlignmentStudyConfig's defaults: they agree."""
    from vitmech.studies import align
    from vitmech.studies.alignment import SHIPPED_MODELS, STUDY_DATA, STUDY_TIERS, AlignmentStudyConfig

    defaults = AlignmentStudyConfig()
    assert align.SHIPPED_MODELS == SHIPPED_MODELS and align.STUDY_TIERS == STUDY_TIERS
    assert align.STUDY_DATA == STUDY_DATA and defaults.data == "galaxies"
    assert {name: getattr(defaults, name) for name in align.DEFAULTS} == align.DEFAULTS
    assert defaults.models == SHIPPED_MODELS and defaults.tiers == STUDY_TIERS


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
    # the tiny galaxy-classed model, as every other command here runs on a tiny model: the default
    # vitmech/mini-galaxy takes ~20 s more and is run end to end by test_patching_experiment.py
    "patch": lambda t: ["--model", str(t / "galaxy")],
    "pretrain": lambda t: [],
    "data": lambda t: [],
    "models": lambda t: ["--pages"],
    "align": lambda t: ["--model", str(t / "before")],
    "explain": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
    "misclassified": lambda t: ["--model", str(t / "before"), "--images", str(t / "images")],
    "patch-size": lambda t: ["--model", str(t / "before"), "--model", str(t / "coarse"), "--images", str(t / "images")],
}


def test_every_command_has_a_quick_test():
    assert set(QUICK_RUNS) == set(COMMANDS)


NO_MODEL = {"data", "models", "pretrain"}  # commands that load no model (pretrain trains its own from scratch)
NO_FIGURES = {"attention-check", "finetune", "finetune-chirp"}  # reports of tables and text only
NO_DEVICE = {"data", "models"}  # commands that run no model: no --device flag
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU machine checks real moves


@dataclass
class Spies:
    saved: list[bool] = field(default_factory=list)  # per saved figure: stamped RANDOM WEIGHTS?
    load_devices: list[object] = field(default_factory=list)  # the device each load_model call was given
    forwards: list[tuple[str, str]] = field(default_factory=list)  # (input device, model device) per forward


@pytest.fixture
def spies(monkeypatch):
    """Every model asked with --random-init is treated as if its pretrained weights were missing: loaded as
    usual but flagged random, exactly what `load_model` returns for a random-init fallback. Records every
    saved figure (stamped when saved?), the device every model load is given, and the device of every
    forward pass's input against the model's own."""
    from matplotlib.figure import Figure

    import vitmech.cli.models as cli_models
    from vitmech import HookedViT
    from vitmech.viz.stamp import is_stamped

    found = Spies()
    real_load, real_savefig, real_forward = cli_models.load_model, Figure.savefig, HookedViT.forward

    def load(name, random_init=False, device=None):
        found.load_devices.append(device)
        loaded = real_load(name, random_init, device)
        if random_init:
            loaded.random, loaded.note = True, f"{cli_models.RANDOM_WEIGHTS} (--random-init)"
        return loaded

    def savefig(self, *args, **kwargs):
        found.saved.append(is_stamped(self))
        # drawn at 10 dpi: the stamp (on the figure and in the PNG's metadata) is what these tests read, and
        # at the reports' 110 dpi rendering took ~0.3 s a figure (speed; test_distributed_studies.py does so too)
        return real_savefig(self, *args, **{**kwargs, "dpi": 10})

    def forward(self, x, *args, **kwargs):
        found.forwards.append((str(x.device), str(self.device)))
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(cli_models, "load_model", load)
    monkeypatch.setattr(Figure, "savefig", savefig)
    monkeypatch.setattr(HookedViT, "forward", forward)
    return found


@pytest.mark.parametrize("command", list(QUICK_RUNS))
def test_quick_run(command, tiny, tmp_path, spies):
    """Every subcommand's --quick run, with --random-init and its models' weights 'unavailable': the report
    and every figure it saves are stamped RANDOM WEIGHTS (the text on the figure and the PNG's metadata).
    With --device, every model is loaded onto that device and every forward pass gets its input there
    (on a CUDA machine DEVICE is "cuda", so inputs left on the CPU fail here)."""
    from vitmech.viz.stamp import read_png_stamp

    out = tmp_path / "out"
    flags = [*QUICK_RUNS[command](tiny), "--quick", "--no-progress", "--random-init", "--out", str(out)]
    if command not in NO_DEVICE:
        flags += ["--device", DEVICE]
    code = run_command(command, flags)
    assert code == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files, f"{command} wrote nothing under --out"
    if command not in ("data", "models", "attention-check"):
        assert (out / "report.md").exists()
    if command not in NO_DEVICE:
        assert all(device == DEVICE for device in spies.load_devices), spies.load_devices
        assert spies.forwards, f"{command} ran no model"
        assert {model for _, model in spies.forwards} == {str(torch.device(DEVICE, 0) if DEVICE == "cuda" else DEVICE)}
        misplaced = [f for f in spies.forwards if f[0] != f[1]]
        assert not misplaced, f"{command}: inputs not on the model's device: {misplaced[:3]}"
    if command in NO_MODEL:
        return
    assert spies.load_devices, f"{command} loaded no model through the shared loader"
    assert "RANDOM WEIGHTS" in (out / "report.md").read_text()
    figures = sorted(out.rglob("*.png"))
    if command not in NO_FIGURES:
        assert figures and spies.saved, f"{command} saved no figure"
    assert all(spies.saved), f"{command} saved {spies.saved.count(False)} unstamped figure(s)"
    unstamped = [p.name for p in figures if not read_png_stamp(p)]
    assert not unstamped, f"{command}: figures without the RANDOM WEIGHTS stamp: {unstamped}"


def test_trained_weights_are_not_stamped(tmp_path):
    import matplotlib.pyplot as plt

    from vitmech.report import Report
    from vitmech.viz.stamp import is_stamped, read_png_stamp

    report = Report(tmp_path, "t")
    fig, _ = plt.subplots()
    report.add_figure("f", fig)
    report.write()
    assert not is_stamped(fig) and read_png_stamp(tmp_path / "f.png") is None
    assert "RANDOM WEIGHTS" not in (tmp_path / "report.md").read_text()


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


def test_the_shipped_cnn_is_listed_with_its_card_page(capsys, tmp_path):
    """`vitmech models` lists the shipped CNN next to the ViTs (read from its own config.json), and --pages
    writes its card page with the architecture and held-out accuracy of that card."""
    from vitmech.train.cnn import zoo_cnns

    if "vitmech/mini-cnn" not in zoo_cnns():
        pytest.skip("shipped CNN not in this checkout")
    card = json.loads((zoo_cnns()["vitmech/mini-cnn"] / "config.json").read_text())
    assert run_command("models", ["--pages", "--out", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("vitmech/mini-cnn "))
    accuracy = card["card"]["metrics"]["test"]["accuracy"]
    assert f"timm {card['base']}" in line and f"held-out accuracy {accuracy:.3f}" in line
    page = (tmp_path / "mini-cnn.md").read_text()
    assert page.startswith("# vitmech/mini-cnn") and f"timm `{card['base']}`" in page
    assert f"| this model | {accuracy:.4g} |" in page
    assert "python -m vitmech.train.cnn --out vitmech/zoo/mini-cnn" in page


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
    from vitmech.viz.stamp import read_png_stamp

    report = StudyReport(tmp_path, "t", random_weights=["vit_tiny_patch16_224"])
    fig, _ = plt.subplots()
    stamped = fig
    report.add_figure("f", fig)
    report.add_json("j", {"x": 1})
    report.write()
    assert any(t.get_text() == "RANDOM WEIGHTS" for t in stamped.texts)
    assert read_png_stamp(tmp_path / "f.png") == "vit_tiny_patch16_224"
    assert "RANDOM WEIGHTS" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "j.json").read_text())["random_weights"] == ["vit_tiny_patch16_224"]
