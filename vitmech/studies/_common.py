"""Set-up shared by the studies: threads, seeds, models and the output folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitmech.cli.models import LoadedModel, load_models
from vitmech.cli.outputs import output_dir


def start(args: argparse.Namespace, resumable_parts: tuple[str, ...] = ()) -> Path:
    """Seed torch and create the output folder (refusing to overwrite)."""
    import torch

    torch.manual_seed(args.seed)
    return output_dir(args, resumable_parts)


def models(args: argparse.Namespace, names: list[str], comparable: bool = False) -> list[LoadedModel]:
    return load_models(names, random_init=args.random_init, device=getattr(args, "device", None), comparable=comparable)


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
            checkpoint_dir=out / "checkpoints" / args.tier,
            card=card,
            progress=progress,
        )
    except ResumeMismatchError as err:
        raise SystemExit(
            f"error: {out} holds checkpoints of a different run ({err}). Rerun with --restart to discard them, "
            "or pass a new --out."
        ) from None
