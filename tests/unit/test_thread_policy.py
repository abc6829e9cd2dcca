"""No vitmech function changes torch's global thread count unless the caller asks (vitmech.threads)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.errors import RuntimeSettingError
from vitmech.threads import torch_threads

PACKAGE = Path(__file__).resolve().parents[2] / "vitmech"


def test_no_thread_count_calls_or_load_average_in_the_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if "getloadavg" in text:
            offenders.append(f"{path.relative_to(PACKAGE)}: getloadavg")
        if path.name != "threads.py" and re.search(r"set_num(_interop)?_threads", text):
            offenders.append(f"{path.relative_to(PACKAGE)}: set_num_threads")
    assert offenders == [], (
        "only vitmech/threads.py may change torch's thread count: use torch_threads(n) (scoped, when the caller "
        "passes n) or apply_threads(args.threads) (a command line's explicit --threads)"
    )


@pytest.fixture
def thread_spy(monkeypatch):
    """Every torch.set_num_threads / set_num_interop_threads call made while the test runs."""
    calls: list[tuple[str, int]] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(("intra", n)), real(n))[1])
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: calls.append(("interop", n)))
    return calls


def _analysis_calls():
    from vitmech.analysis import attention, attribution, circuits, compare, rollout
    from vitmech.analysis.ablation import estimate_head_effects, head_sweep

    model, other = tiny_model(0), tiny_model(1)
    images = seeded_images(4, 32)
    patterns = attention.collect_patterns(model, images, progress=False)
    gradients = rollout.attention_gradients(model, images, progress=False)
    return {
        "collect_patterns": lambda: attention.collect_patterns(model, images, progress=False),
        "attention_metrics": lambda: attention.attention_metrics(patterns, model),
        "mean_attention_distance": lambda: attention.mean_attention_distance(patterns, 8),
        "rollout": lambda: rollout.rollout(patterns),
        "rollout_maps": lambda: rollout.rollout_maps(
            model, images, {"mean": rollout.RolloutSettings()}, progress=False
        ),
        "gradient_rollout": lambda: rollout.gradient_rollout(gradients.patterns, gradients.gradients),
        "gmar": lambda: rollout.gmar(gradients.patterns, gradients.gradients),
        "compare_models": lambda: compare.compare_models(model, other, images, progress=False),
        "head_sweep": lambda: head_sweep(model, images, "kl_to_clean", progress=False),
        "estimate_head_effects": lambda: estimate_head_effects(model, images, "kl_to_clean"),
        "direct_logit_attribution": lambda: attribution.direct_logit_attribution(model, images),
        "logit_lens": lambda: attribution.logit_lens(model, images),
        "ov_copying_scores": lambda: circuits.ov_copying_scores(model),
    }


def _generator_calls():
    from vitmech.data.chirps import generate_chirps
    from vitmech.data.galaxies import GalaxyStream, generate_galaxies, render_galaxies
    from vitmech.data.procedural import generate_procedural

    params = GalaxyStream(seed=1).params(2)
    return {
        "generate_galaxies": lambda: generate_galaxies(2, seed=0, size=32, noise=False),
        "render_galaxies": lambda: render_galaxies(params, size=32),
        "generate_chirps": lambda: generate_chirps(1, seed=0),
        "generate_procedural": lambda: generate_procedural(2, seed=0, size=32),
    }


@pytest.mark.parametrize("group", ["analysis", "generators"])
def test_entry_points_leave_the_thread_count_alone(group, thread_spy):
    calls = _analysis_calls() if group == "analysis" else _generator_calls()
    before = torch.get_num_threads()
    for name, call in calls.items():
        call()
        assert torch.get_num_threads() == before, name
    assert thread_spy == [], f"thread count changed by {group} entry points: {thread_spy}"


def test_torch_threads_is_explicit_and_restores():
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(ZeroDivisionError), torch_threads(before + 1):
        1 / 0  # noqa: B018
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, "auto", True):
        with (
            runtime_checks_off(),
            pytest.raises(RuntimeSettingError, match="positive int or None"),
            torch_threads(bad),  # type: ignore[arg-type]
        ):
            pass


def test_apply_threads_only_acts_on_a_given_count(thread_spy):
    from vitmech.threads import apply_threads

    before = torch.get_num_threads()
    apply_threads(None)
    assert thread_spy == []
    try:
        apply_threads(before + 1)
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(RuntimeSettingError):
        apply_threads(0)


def test_galaxy_renderer_asks_for_threads_only_when_told(thread_spy):
    from vitmech.data.galaxies import GalaxyStream, render_galaxies

    params = GalaxyStream(seed=3).params(2)
    render_galaxies(params, size=32, noise=False)
    assert thread_spy == []
    before = torch.get_num_threads()
    render_galaxies(params, size=32, noise=False, num_threads=before + 1)
    assert thread_spy == [("intra", before + 1), ("intra", before)]
