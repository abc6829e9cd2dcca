"""Training checkpoints: safetensors for tensors, JSON for everything else (no pickles).

A checkpoint is a folder `step_0000123/` holding

- `model.safetensors`: the full model state dict (with LoRA adapters while attached);
- `optimizer.safetensors`: AdamW's per-parameter state (`{group}.{index}.{exp_avg|exp_avg_sq|step}`);
- `trainer.json`: step, the run's fingerprint (model config, trainable parameters, recipe), history,
  and a card (source model, data, tier, hyperparameters).

Folders are written under a temporary name and renamed, so a crash never leaves a half checkpoint that
looks complete. The finished model is saved separately with `model.save_pretrained(dir, card=...)`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vitmech.loading._state import load_strict
from vitmech.train.errors import ResumeMismatchError

logger = logging.getLogger(__name__)

FORMAT = "vitmech-train-checkpoint"
PREFIX = "step_"


def checkpoint_dirs(directory: str | Path) -> list[Path]:
    """Complete checkpoints under `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = checkpoint_dirs(directory)
    return found[-1] if found else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()
    flat: dict[str, torch.Tensor] = {}
    for g, group in enumerate(state["param_groups"]):
        for i, pid in enumerate(group["params"]):
            for key, value in state["state"].get(pid, {}).items():
                flat[f"{g}.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return flat


def _restore_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for g, group in enumerate(state["param_groups"]):
        for i, pid in enumerate(group["params"]):
            prefix = f"{g}.{i}."
            entry = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
            if entry:
                restored[pid] = entry
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
    tmp = directory / f".tmp_{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(model_state, str(tmp / "model.safetensors"))
    save_file(_optimizer_tensors(optimizer), str(tmp / "optimizer.safetensors"))
    payload = {"format": FORMAT, "step": step, **trainer_state}
    (tmp / "trainer.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep > 0:
        for old in checkpoint_dirs(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / "trainer.json"
    if not meta_file.is_file():
        raise ResumeMismatchError(f"{path} is not a training checkpoint (no trainer.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ResumeMismatchError(f"{path} is not a vitmech training checkpoint (format={meta.get('format')!r})")
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
    """Restore model and optimizer from checkpoint `path` after checking its fingerprint; returns trainer.json."""
    path = Path(path)
    meta = read_trainer_state(path)
    check_fingerprint(fingerprint, meta, path)
    load_strict(model, load_file(str(path / "model.safetensors")), f"training checkpoint {path}")
    _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")))
    return meta


__all__ = [
    "checkpoint_dirs",
    "check_fingerprint",
    "latest_checkpoint",
    "load_checkpoint",
    "read_trainer_state",
    "save_checkpoint",
]
