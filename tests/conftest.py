"""Shared test settings (offline hubs, headless plots, one torch thread) and fixtures.

Most tests run tiny models, whose ops are dominated by thread hand-off: with several threads on a busy
machine each op can stall for a scheduler slice. Set VITMECH_TEST_THREADS to use more.

The default run checks the annotations of all of `vitmech` at call time (jaxtyping shapes through beartype;
see `addopts` in pyproject.toml). Tests that pass wrongly-typed values on purpose, to test vitmech's own
validation (what a caller without runtime checking gets), take the `unchecked_types` fixture.

Fixtures: `tiny_vit` (a 3-layer, 4-head, d_model 32 HookedViT on 32 px images, patch 8, 5 classes, with
weights drawn so attention is far from uniform), `tiny_images` (5 seeded N(0, 1) images [5, 3, 32, 32]) and
`small_figures` (report figures saved at 10 dpi, for tests that check which figures a study writes, not their
pixels).
"""

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jaxtyping  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tests.helpers.typecheck  # noqa: E402, F401  (the runtime checker named in pyproject's addopts)
from tests.helpers.models import seeded_images, tiny_model  # noqa: E402
from vitmech import HookedViT  # noqa: E402

torch.set_num_threads(int(os.environ.get("VITMECH_TEST_THREADS", "1")))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """Workers for `-n auto` (pyproject's addopts): xdist's default, one per CPU core (at most 4), for the suite
    or a folder; none (one process) when the command line names only files or tests, whose run would cost less
    than the workers' start-up (each imports and instruments `vitmech` again, ~10 s)."""
    paths = [arg.split("::")[0] for arg in config.args]
    return 0 if paths and all(os.path.isfile(path) for path in paths) else None


_frozen_for: list[object] = [None]  # the test module whose start last froze the heap


def pytest_collection_finish(session):
    """Move everything alive after collection (torch, scipy, the checked `vitmech` package, the collected
    tests) out of the garbage collector's reach with `gc.freeze()`; objects made later are collected as usual.

    A full collection then walks only what the tests made, not the ~350k objects of the imports:
    statsmodels' `multipletests(method="holm")` (behind `vitmech.analysis.stats.holm`) calls `gc.collect()`
    on every call, ~0.3 s each in this process, which made the Holm property test take 20-25 s."""
    gc.collect()
    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """At the start of each test module, after the previous module's fixtures are torn down and before this
    module's are made (so they stay collectable): collect the garbage, then freeze what is left (as above),
    so the heap a full collection walks stays about one module's."""
    module = getattr(item, "module", None)
    if module is not _frozen_for[0]:
        _frozen_for[0] = module
        gc.collect()
        gc.freeze()


@pytest.fixture
def tiny_vit() -> HookedViT:
    """A fresh tiny HookedViT (tests may modify it)."""
    return tiny_model(seed=0)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """5 seeded images [5, 3, 32, 32] for `tiny_vit`."""
    return seeded_images(5, 32, seed=1)


@pytest.fixture
def small_figures(monkeypatch):
    """Report figures saved at 10 dpi instead of 110: drawn, stamped and written as usual, in a fraction of the
    rendering time (~0.3 s a figure at 110 dpi). For tests that read which figures exist, not their pixels."""
    from vitmech.report import Report

    add_figure = Report.add_figure
    monkeypatch.setattr(
        Report,
        "add_figure",
        lambda self, name, figure, caption="", dpi=110: add_figure(self, name, figure, caption, 10),
    )


@pytest.fixture
def unchecked_types():
    """Runtime type and shape checks off for this test (it passes wrongly-typed values on purpose)."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", before)
