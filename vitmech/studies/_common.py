"""Set-up shared by the studies: the launch (one process, or several under torchrun / accelerate),
seeds, models and the output folder.

Every study runs through `launch` (`vitmech.cli.run_command` calls it), so every command and numbered
script accepts `torchrun --nproc_per_node=N ...` unchanged. A study module says how it runs under such
a launch with `LAUNCH` (docs/cluster.md#every-study-under-torchrun):
  - SHARDS: every rank runs the study; its streamed analyses deal the images out to the ranks and merge
    the results with torch.distributed collectives; rank 0 makes the output folder (`start`) and alone
    writes the report (`is_main`).
  - ON_MAIN (the default, so a new study is correct without doing anything): rank 0 runs the study as
    one process would and writes; the other ranks wait for it and exit with its status.
  - NOT_LAUNCHED: the study refuses a launch of several processes (exit status 2) with `LAUNCH_NOTE`
    as the reason (fine-tuning: DistributedDataParallel is not supported).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vitmech.cli.models import LoadedModel, load_models
from vitmech.cli.outputs import output_dir
from vitmech.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.analysis.streaming import StreamedSummary
    from vitmech.data.sources import ImageSource

SHARDS = "shards"
ON_MAIN = "on main"
NOT_LAUNCHED = "not launched"
LAUNCH_MODES = (SHARDS, ON_MAIN, NOT_LAUNCHED)


def launch(module: ModuleType, args: argparse.Namespace) -> int:
    """Run study `module` on `args` under whatever started this process; returns the exit status.

    A plain `python` / `vitmech` run calls `module.run(args)`. Under torchrun or accelerate (WORLD_SIZE > 1)
    the process joins the process group and the study runs as its `LAUNCH` mode says (module docstring).
    """
    from vitmech.distributed import distributed_session, launched, run_on_main, run_together

    mode = getattr(module, "LAUNCH", ON_MAIN)
    if mode not in LAUNCH_MODES:
        raise InputError(f"{module.__name__}.LAUNCH must be one of {LAUNCH_MODES}, got {mode!r}")
    if not launched():
        return int(module.run(args) or 0)
    world_size = int(os.environ["WORLD_SIZE"])
    if mode == NOT_LAUNCHED:
        if int(os.environ.get("RANK", "0")) == 0:
            note = getattr(module, "LAUNCH_NOTE", "it runs on one process")
            print(
                f"error: vitmech {args.command} does not run under a launch of {world_size} processes ({note}). "
                "Run it with plain python (or torchrun --nproc_per_node=1); docs/cluster.md#every-study-under-torchrun",
                file=sys.stderr,
            )
        return 2
    on_cpu = str(getattr(args, "device", None) or "").startswith("cpu")
    backend = "gloo" if mode == ON_MAIN or on_cpu else None  # None: nccl where there is a GPU
    with distributed_session(backend):
        if mode == SHARDS:  # every rank runs the study; all end when rank 0 has written
            return run_together(lambda: int(module.run(args) or 0))
        return run_on_main(lambda: int(module.run(args) or 0), f"vitmech {args.command}")


def is_main() -> bool:
    """Whether this process writes the outputs: rank 0 of a launch, or the only process."""
    from vitmech.distributed import current

    return current().is_main


def start(args: argparse.Namespace, resumable_parts: tuple[str, ...] = ()) -> Path:
    """Seed torch and create the output folder (refusing to overwrite). Under a sharded launch rank 0
    makes the folder and every rank gets its path (or rank 0's refusal, as its own exit)."""
    import torch

    from vitmech.distributed import current, exit_status, gather_objects

    torch.manual_seed(args.seed)
    ranks = current()
    if not ranks.active:
        return output_dir(args, resumable_parts)
    made: tuple[str | None, str | int | None] = (None, None)
    if ranks.is_main:
        try:
            made = (str(output_dir(args, resumable_parts)), None)
        except SystemExit as refusal:
            made = (None, refusal.code if refusal.code is not None else 0)
    out, refusal_code = gather_objects(made)[0]
    if out is None:  # rank 0 refused: it says why, the others just stop with the same status
        raise SystemExit(refusal_code if ranks.is_main else exit_status(SystemExit(refusal_code)))
    args.out = out
    return Path(out)


def models(args: argparse.Namespace, names: list[str], comparable: bool = False) -> list[LoadedModel]:
    return load_models(names, random_init=args.random_init, device=getattr(args, "device", None), comparable=comparable)


def models_and_images(args: argparse.Namespace) -> tuple[Path, list[LoadedModel], ImageSource]:
    """The set-up of a study that measures each --model on the same --images: seed and output folder
    (`start`), the models (comparable: same patch grid and prefix tokens), and the raw images."""
    from vitmech.cli.args import models_from
    from vitmech.cli.inputs import load_images

    out = start(args)
    loaded = models(args, models_from(args), comparable=True)
    return out, loaded, load_images(args)


def attention_summaries(
    args: argparse.Namespace, loaded: list[LoadedModel], images: list[Any], **settings: Any
) -> list[StreamedSummary]:
    """Each model's `stream_attention_summary` of `images` (`settings`: its AttentionSettings /
    RolloutSettings keywords), --batch-size images per forward, a progress bar unless --no-progress;
    under a sharded launch every rank takes its share of the images."""
    import torch

    from vitmech.analysis.streaming import stream_attention_summary

    stream = image_stream(images, args.batch_size)
    with torch.no_grad():
        return [
            stream_attention_summary(
                m.model,
                stream,
                name=m.name,
                batch_size=args.batch_size,
                progress=not args.no_progress,
                **settings,
            )
            for m in loaded
        ]


def head_rows(summaries: list[StreamedSummary], columns: list[str] | None = None) -> pd.DataFrame:
    """The per layer x head table of every summary (`columns` of it, default all), with a `model` column."""
    import pandas as pd

    frames = [s.metrics.to_frame() for s in summaries]
    if columns is not None:
        frames = [frame[columns] for frame in frames]
    return pd.concat([f.assign(model=s.name) for f, s in zip(frames, summaries)], ignore_index=True)


def image_stream(images: list[Any], batch_size: int) -> list[dict[str, Any]]:
    """A study's raw images as a batch source of `vitmech.analysis.streaming` (batches of `batch_size`,
    which each model preprocesses its own way); under a sharded launch each rank computes its own batches."""
    if batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {batch_size}")
    return [{"image": images[i : i + batch_size]} for i in range(0, len(images), batch_size)]


def device(args: argparse.Namespace) -> Any:
    """The torch.device of --device (None: CUDA when present, else the CPU); one clear line when unusable."""
    from vitmech.device import resolve_device
    from vitmech.errors import RuntimeSettingError

    try:
        return resolve_device(getattr(args, "device", None))
    except RuntimeSettingError as err:
        raise SystemExit(f"error: --device: {err}") from None


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def model_lines(loaded: list[LoadedModel]) -> str:
    return "\n".join(f"- `{m.name}`: {m.note}" for m in loaded)


def error(args: argparse.Namespace, message: str) -> Any:
    """argparse-style usage error (exit status 2)."""
    args.parser.error(message)


def run_tier_study(
    args: argparse.Namespace,
    out: Path,
    model: Any,
    splits: tuple[Any, Any, Any],
    tier: Any,
    config: Any,
    *,
    probe_config: Any,
    probe_train: Any,
    card: dict[str, Any],
    progress: bool,
) -> Any:
    """`vitmech.train.study.run_study` with the fine-tuning commands' shared flags, checkpoints under
    `out/checkpoints/<tier>`, and a clear exit when those checkpoints belong to another run."""
    from vitmech.train import ResumeMismatchError
    from vitmech.train.study import run_study

    train, val, test = splits
    try:
        return run_study(
            model,
            train,
            val,
            test,
            tier,
            config,
            probe_config=probe_config,
            probe_lr=args.probe_lr,
            probe_train=probe_train,
            head_from_probe=args.lp_ft and bool(args.probe_steps),
            probe_ridge=getattr(args, "probe_ridge", None),
            checkpoint_dir=out / "checkpoints" / args.tier,
            card=card,
            progress=progress,
        )
    except ResumeMismatchError as err:
        raise SystemExit(
            f"error: {out} holds checkpoints of a different run ({err}). Rerun with --restart to discard them, "
            "or pass a new --out."
        ) from None
