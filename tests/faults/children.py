"""Child processes for the fault-injection tests: each task prints "ready" once set up, then works
until done (or until the parent SIGKILLs it at a seeded random moment).

    python -m tests.faults.children <task> <args...>
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path


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


TIMING_CARD_KEYS = ("train_seconds", "train_cpu_seconds")  # wall and CPU time: the only card entries a kill may change


def task_finetune(directory: str, out: str) -> None:
    """A tiny checkpointed `fine_tune`; writes the merged model's fingerprint, its card (timings left out)
    and the history to `out`."""
    from vitmech.fingerprint import module_fingerprint
    from vitmech.train import TierConfig, fine_tune

    m, _, data, config = train_setup()
    ready()
    result = fine_tune(
        m,
        data,
        TierConfig("full", head_lr=1e-2, backbone_lr=3e-3),
        config,
        new_head=False,
        checkpoint_dir=directory,
        progress=False,
    )
    card = {k: v for k, v in result.card().items() if k not in TIMING_CARD_KEYS}
    record = {"weights": module_fingerprint(result.model), "card": card, "history": result.train_result.history}
    Path(out).write_text(json.dumps(record))


def sweep_setup():
    from tests.helpers.models import seeded_images

    return model(4), seeded_images(12, 32, seed=6)


def throttle_store_writes(seconds: float) -> None:
    """Sleep after each store write (so a kill lands at a chosen record count, not after the sweep ended)."""
    import time

    from vitmech.analysis.ablation.store import JsonlStore

    real = JsonlStore.write

    def slow(self, records):
        real(self, records)
        time.sleep(seconds)

    JsonlStore.write = slow


def sweep_table(result) -> dict:
    """The sweep's table as JSON-able lists (float repr round-trips exactly)."""
    return json.loads(json.dumps(result.to_frame().to_dict(orient="split")))


def task_sweep(store: str, out: str, throttle: str = "0") -> None:
    """The 8-head, 4-batch sweep of `sweep_setup`, stored in `store`; its exact table is written to `out`."""
    from vitmech.analysis.ablation import head_sweep

    m, images = sweep_setup()
    if float(throttle) > 0:
        throttle_store_writes(float(throttle))
    ready()
    result = head_sweep(m, images, "kl_to_clean", batch_size=3, max_batch=3, store=store or None, progress=False)
    Path(out).write_text(json.dumps(sweep_table(result)))


def task_stream_rank(store: str, rank: str, world: str, throttle: str = "0") -> None:
    """The streamed sweep of `sweep_setup` as rank `rank` of `world` (collectives answered locally)."""
    from vitmech.analysis import streaming
    from vitmech.distributed import Ranks

    streaming.current = lambda: Ranks(int(rank), int(world))
    streaming.gather_objects = lambda obj: [obj] * int(world)
    streaming.barrier = lambda: None
    m, images = sweep_setup()
    if float(throttle) > 0:
        throttle_store_writes(float(throttle))
    ready()
    with contextlib.suppress(KeyError):  # this rank alone cannot build the table (the others' cells are missing)
        streaming.stream_head_sweep(m, images, "kl_to_clean", store=store, batch_size=3, max_batch=3, progress=False)


DATASET_SUMMARIES = ["smooth_round", "spiral", "edge_on_disk", "barred_spiral"] * 10  # 40 train rows, 12 test


def write_child_dataset(directory: str | Path) -> Path:
    """The dataset the `dataset` child writes: 10 train shards and 3 test shards of 4 rows."""
    from vitmech.data import make_gz2_fixture

    return make_gz2_fixture(
        directory,
        train_summaries=DATASET_SUMMARIES,
        test_summaries=DATASET_SUMMARIES[:12],
        image_size=16,
        shard_size=4,
    )


def task_dataset(directory: str) -> None:
    ready()
    write_child_dataset(directory)


def pause_point(sync: str, tag: str) -> None:
    """Tell the parent this writer is mid-write (`<sync>/paused-<tag>`), then wait for `<sync>/go`."""
    import time

    Path(sync, f"paused-{tag}").touch()
    deadline = time.monotonic() + 300
    while not Path(sync, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def task_report(directory: str, tag: str, n: str, sync: str = "") -> None:
    """A report of n tables and figures; with `sync`, pause mid-write after the first table (pause_point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitmech.report import Report

    ready()
    report = Report(directory, title=f"run {tag}")
    for i in range(int(n)):
        report.add_table(f"t{i}", [{"run": tag, "i": i, "x": j} for j in range(50)])
        if sync and i == 0:
            pause_point(sync, tag)
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot(range(10), [int(tag) * j for j in range(10)])
        report.add_figure(f"f{i}", fig)
    report.add_text(f"written by run {tag}")
    report.write()


if __name__ == "__main__":
    if sys.argv[1] != "report":  # the report child draws with matplotlib only: not importing torch saves ~3 s
        import torch

        torch.set_num_threads(1)
    globals()[f"task_{sys.argv[1]}"](*sys.argv[2:])
