"""Child processes for the fault-injection tests: each task prints "ready" once set up, then works
until done (or until the parent SIGKILLs it at a seeded random moment).

    python -m tests.faults.children <task> <args...>
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def ready() -> None:
    print("ready", flush=True)


def kill_self_after_first(module, name: str) -> None:
    """Replace module.name by a wrapper that SIGKILLs this process right after its first call returns."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(module, name, wrapper)


def model(seed: int):
    from tests.helpers.models import tiny_model

    m = tiny_model(seed=seed, n_layers=2)
    m.card = {"seed": seed}
    return m


def task_save(directory: str, seed: str, kill_after_weights: str = "0") -> None:
    """Save tiny model `seed` to `directory`; optionally die right after the weight file is written."""
    m = model(int(seed))
    if kill_after_weights == "1":
        import safetensors.torch

        import vitmech.loading.native as native

        kill_self_after_first(safetensors.torch, "save_file")
        if hasattr(native, "save_file"):
            kill_self_after_first(native, "save_file")
    ready()
    m.save_pretrained(directory, card={"seed": int(seed)})


def task_save_loop(directory: str, rounds: str) -> None:
    """Save models 1 and 2 alternately over one folder."""
    models = [model(1), model(2)]
    ready()
    for i in range(int(rounds)):
        m = models[i % 2]
        m.save_pretrained(directory, card=m.card)


def train_setup():
    from tests.unit.test_train_tiers import procedural_set
    from vitmech.train import TierConfig, TrainConfig, prepare_tier, with_new_head

    data = procedural_set(24, seed=5)
    m = with_new_head(model(0), data.n_outputs, data.names, init="trunc_normal")
    config = TrainConfig(steps=8, batch_size=8, warmup_steps=2, checkpoint_every=1, log_every=3, seed=3)
    groups = prepare_tier(m, TierConfig("full", head_lr=1e-2, backbone_lr=3e-3))
    return m, groups, data, config


def task_train(directory: str, out: str) -> None:
    """A tiny checkpointed fine-tune; writes its final weights' fingerprint and history to `out`."""
    from vitmech.fingerprint import module_fingerprint
    from vitmech.train import fit

    m, groups, data, config = train_setup()
    ready()
    result = fit(m, groups, data, config, checkpoint_dir=directory or None, progress=False)
    Path(out).write_text(json.dumps({"weights": module_fingerprint(m), "history": result.history}))


def sweep_setup():
    from tests.helpers.models import seeded_images

    return model(4), seeded_images(12, 32, seed=6)


def task_sweep(store: str, out: str) -> None:
    from vitmech.analysis.ablation import head_sweep

    m, images = sweep_setup()
    ready()
    result = head_sweep(m, images, "kl_to_clean", batch_size=3, max_batch=3, store=store or None, progress=False)
    result.to_frame().to_json(out, orient="split", double_precision=15)


def task_dataset(directory: str) -> None:
    from vitmech.data import make_gz2_fixture

    ready()
    summaries = ["smooth_round", "spiral", "edge_on_disk", "barred_spiral"] * 10
    make_gz2_fixture(directory, train_summaries=summaries, test_summaries=summaries[:12], image_size=16, shard_size=4)


def task_report(directory: str, tag: str, n: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitmech.report import Report

    ready()
    report = Report(directory, title=f"run {tag}")
    for i in range(int(n)):
        report.add_table(f"t{i}", [{"run": tag, "i": i, "x": j} for j in range(50)])
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot(range(10), [int(tag) * j for j in range(10)])
        report.add_figure(f"f{i}", fig)
    report.add_text(f"written by run {tag}")
    report.write()


if __name__ == "__main__":
    globals()[f"task_{sys.argv[1]}"](*sys.argv[2:])
