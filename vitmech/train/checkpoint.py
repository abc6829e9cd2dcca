"""Training checkpoints: safetensors for tensors, JSON for everything else (no pickles).

A checkpoint is a folder `step_0000123/` holding

- `model.safetensors`: the full model state dict (with LoRA adapters while attached);
- `optimizer.safetensors`: AdamW's per-parameter state (`{group}.{index}.{exp_avg|exp_avg_sq|step}`);
- `trainer.json`: step, the run's fingerprint (model config, trainable parameters, recipe), history,
  and a card (source model, data, tier, hyperparameters).

- `manifest.json`: sizes and SHA-256 of the three files and who wrote them (written last).

Folders are written under a unique temporary name and renamed, so a crash never leaves a half
checkpoint that looks complete, and two writers never share a temporary folder; old checkpoints are
renamed aside before they are deleted. On resume the newest checkpoint whose manifest checks out is
used; a damaged newer one is named in a warning and skipped. The optimizer file must hold the moments
of every parameter that had them when it was saved, or the resume is refused (a restart of the
moments would silently change the run). The finished model is saved with `model.save_pretrained`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from vitmech.io.atomic import commit_dir, fsync_dir, staging_dir, temporary_name
from vitmech.io.errors import CorruptFileError, StorageError
from vitmech.io.manifest import verify_manifest, write_manifest
from vitmech.io.readers import read_json, read_safetensors
from vitmech.loading._state import load_strict
from vitmech.train.errors import ResumeMismatchError

logger = logging.getLogger(__name__)

FORMAT = "vitmech-train-checkpoint"
PREFIX = "step_"


FILES = ("model.safetensors", "optimizer.safetensors", "trainer.json")


class DamagedCheckpointError(StorageError, ResumeMismatchError):
    """A checkpoint folder with a missing, cut or corrupted file, or incomplete optimizer state (named)."""


def _step_of(path: Path) -> int | None:
    try:
        return int(path.name[len(PREFIX) :])
    except ValueError:
        return None


def checkpoint_dirs(directory: str | Path) -> list[Path]:
    """Checkpoint folders under `directory` that hold all their files, oldest first (see `verify_checkpoint`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir()
        and p.name.startswith(PREFIX)
        and _step_of(p) is not None
        and all((p / f).is_file() for f in FILES)
    ]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def verify_checkpoint(path: str | Path) -> None:
    """DamagedCheckpointError naming the file if the checkpoint's manifest (or, without one, its files) does not check out."""
    path = Path(path)
    try:
        if verify_manifest(path, what=f"training checkpoint {path}") is None:
            read_trainer_state(path)  # a checkpoint from before manifests: at least its JSON must parse
    except StorageError as exc:
        raise DamagedCheckpointError(str(exc), path=exc.path) from exc


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest intact checkpoint; damaged newer ones are named in a warning and skipped."""
    for path in reversed(checkpoint_dirs(directory)):
        try:
            verify_checkpoint(path)
        except DamagedCheckpointError as exc:
            logger.warning("skipping the damaged checkpoint %s: %s", path, exc)
            continue
        return path
    return None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()
    flat: dict[str, torch.Tensor] = {}
    for g, group in enumerate(state["param_groups"]):
        for i, pid in enumerate(group["params"]):
            for key, value in state["state"].get(pid, {}).items():
                flat[f"{g}.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return flat


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor], expected: list[str] | None, where: Path
) -> None:
    """Load AdamW state; refuse if a key recorded at save time (`expected`) is missing from the file.

    Without a record (older checkpoints) every trainable parameter must have complete state once a step was taken.
    """
    state = optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    slots: list[tuple[str, torch.nn.Parameter]] = []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    flat_ids = [pid for group in state["param_groups"] for pid in group["params"]]
    for g, group in enumerate(state["param_groups"]):
        for i, pid in enumerate(group["params"]):
            prefix = f"{g}.{i}."
            entry = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
            slots.append((prefix, params[flat_ids.index(pid)]))
            if entry:
                restored[pid] = entry
    if expected is not None:
        missing = sorted(set(expected) - set(flat))
    else:
        keys = {k.rsplit(".", 1)[1] for k in flat}
        missing = [
            f"{prefix}{key}"
            for prefix, param in slots
            if param.requires_grad and flat
            for key in sorted(keys)
            if f"{prefix}{key}" not in flat
        ]
    if missing:
        raise DamagedCheckpointError(
            f"{where} lacks optimizer state for {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} "
            f"({missing[:8]}{' ...' if len(missing) > 8 else ''}); resuming would restart those moments and change "
            "the run. Resume from an earlier checkpoint, or start over with resume=False",
            path=where,
        )
    state["state"] = restored
    optimizer.load_state_dict(state)


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `directory`; keep only the `keep` newest (0: keep all)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:07d}"
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = _optimizer_tensors(optimizer)
    payload = {"format": FORMAT, "step": step, "optimizer_state": sorted(optimizer_state), **trainer_state}
    with staging_dir(final) as tmp:
        save_file(model_state, str(tmp / "model.safetensors"))
        save_file(optimizer_state, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        write_manifest(tmp, FILES, kind=FORMAT, extra={"step": step})
        commit_dir(tmp, final)
    if keep > 0:
        for old in checkpoint_dirs(directory)[:-keep]:
            remove_checkpoint(old)
    logger.info("checkpoint written: %s", final)
    return final


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder: renamed aside first, so a kill mid-delete never leaves a partial `step_` folder."""
    aside = temporary_name(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / "trainer.json"
    if not meta_file.is_file():
        raise ResumeMismatchError(f"{path} is not a training checkpoint (no trainer.json)")
    try:
        meta = read_json(meta_file, what="checkpoint state")
    except CorruptFileError as exc:
        raise DamagedCheckpointError(str(exc), path=meta_file, line=exc.line) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ResumeMismatchError(f"{path} is not a vitmech training checkpoint (format={found!r})")
    return meta


def _differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for key in sorted(set(expected) | set(found)):
            if key not in found:
                out.append(f"{prefix}{key}: missing in the checkpoint")
            elif key not in expected:
                out.append(f"{prefix}{key}: only in the checkpoint")
            else:
                out += _differences(expected[key], found[key], f"{prefix}{key}.")
        return out
    # JSON round trip turns tuples into lists; compare in that form
    if json.loads(json.dumps(expected, default=str)) != json.loads(json.dumps(found, default=str)):
        return [f"{prefix.rstrip('.')}: this run has {expected!r}, the checkpoint {found!r}"]
    return []


def check_fingerprint(expected: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    """Raise ResumeMismatchError listing how the checkpoint's run differs from this one."""
    diffs = _differences(expected, meta.get("fingerprint", {}))
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; ... {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ResumeMismatchError(
            f"cannot resume from {path}: it belongs to another model or recipe ({shown}). "
            "Use another checkpoint directory, or resume=False to start over"
        )


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """Restore model and optimizer from checkpoint `path` after checking its files and fingerprint; returns trainer.json.

    Raises DamagedCheckpointError (a damaged file or incomplete optimizer state), NonFiniteWeightsError (NaN/inf
    weights, named) or ResumeMismatchError (another run's checkpoint).
    """
    path = Path(path)
    verify_checkpoint(path)
    meta = read_trainer_state(path)
    check_fingerprint(fingerprint, meta, path)
    try:
        weights = read_safetensors(path / "model.safetensors", what="checkpoint weights")
        moments = read_safetensors(path / "optimizer.safetensors", what="checkpoint optimizer state")
    except CorruptFileError as exc:
        raise DamagedCheckpointError(str(exc), path=exc.path) from exc
    load_strict(model, weights, f"training checkpoint {path / 'model.safetensors'}")
    _restore_optimizer(optimizer, moments, meta.get("optimizer_state"), path / "optimizer.safetensors")
    return meta


__all__ = [
    "DamagedCheckpointError",
    "checkpoint_dirs",
    "check_fingerprint",
    "latest_checkpoint",
    "load_checkpoint",
    "read_trainer_state",
    "remove_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]
