"""Card entries shared by every trained model: hardware, software, and the command that made it."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch


def hardware_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, GPU (if any) and library versions of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }
    return info


def command_line() -> str:
    """The command that is running, as typed (module path relative to the repository)."""
    return " ".join(["python", *sys.argv])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def card_table(card: dict[str, Any], keys: list[str] | None = None) -> str:
    """A two-column Markdown table of a card's top-level entries (nested dicts flattened one level)."""
    lines = ["| field | value |", "|---|---|"]
    for key in keys or list(card):
        if key not in card:
            continue
        value = card[key]
        if isinstance(value, dict) and key not in ("hardware",):
            for sub, v in value.items():
                lines.append(f"| {key}.{sub} | {_fmt(v)} |")
        else:
            lines.append(f"| {key} | {_fmt(value)} |")
    return "\n".join(lines)


def model_card_page(name: str, config: dict[str, Any], card: dict[str, Any], intro: str, reproduce: str) -> str:
    """A Markdown model-card page: intro, architecture, the card's entries, and the reproducing commands."""
    arch = ", ".join(f"{k} {config[k]}" for k in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "image_size", "patch_size", "n_classes"))
    return "\n\n".join([
        f"# {name}",
        intro.strip(),
        f"**Architecture:** {arch} (`HookedViT.from_pretrained(\"{name}\")`).",
        "## Card (from the model's `config.json`)",
        card_table(card),
        "## Reproduce",
        reproduce.strip(),
    ]) + "\n"


__all__ = ["card_table", "command_line", "hardware_info", "model_card_page"]
