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


def shipped_name(out: str | os.PathLike) -> str | None:
    """ "vitmech/<folder>" when a model is saved straight into the package's zoo (vitmech/zoo/<folder>), else None."""
    path = os.path.normpath(os.fspath(out))
    parent, folder = os.path.split(path)
    return (
        f"vitmech/{folder}"
        if os.path.basename(parent) == "zoo" and os.path.basename(os.path.dirname(parent)) == "vitmech"
        else None
    )


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


def _rows(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def results_section(card: dict[str, Any]) -> str:
    """Held-out results against the baselines (classification: accuracy vs linear probe and chance, with
    the confusion matrix; regression: MSE and Pearson r per target vs probe and mean predictor; otherwise
    the card's own metrics), then the time to train and the hardware."""
    metrics = card.get("metrics") or {}
    test, probe = metrics.get("test") or {}, metrics.get("linear_probe_test") or {}
    baselines = metrics.get("baselines") or {}
    sizes = metrics.get("split_sizes")
    parts = []
    if "accuracy" in test:
        label = f"{card['tier']} fine-tune (this model)" if "tier" in card else "this model"
        rows = [[label, test["accuracy"]]]
        if "accuracy" in probe:
            rows.append(["linear probe, same backbone and training images", probe["accuracy"]])
        rows += [[f"chance ({k.replace('_', ' ')})", v] for k, v in baselines.items()]
        parts.append(_rows(["model", "held-out test accuracy"], rows))
        names = test.get("class_names") or []
        if test.get("confusion") and names:
            parts.append("Confusion matrix of this model on the test split (rows: true class, columns: predicted):")
            parts.append(_rows(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, test["confusion"])]))
    elif "pearson_r" in test:
        targets = list(test["pearson_r"])
        rows = [
            [f"{card.get('tier', 'fine-tune')} fine-tune (this model)", test["mean_mse"], *test["pearson_r"].values()]
        ]
        if "pearson_r" in probe:
            rows.append(
                ["linear probe, same backbone and training images", probe["mean_mse"], *probe["pearson_r"].values()]
            )
        if "mean_predictor_mse" in baselines:
            mse = baselines["mean_predictor_mse"]
            rows.append(["mean predictor (training mean)", sum(mse) / len(mse), *["-"] * len(targets)])
        parts.append(_rows(["model", "mean MSE (z-score units)", *[f"Pearson r, {t}" for t in targets]], rows))
    elif metrics:
        parts.append(_rows(["metric", "value"], [[k, v] for k, v in metrics.items() if not isinstance(v, dict)]))
    if sizes:
        parts.append("Split sizes: " + _fmt(sizes) + ".")
    seconds = card.get("train_seconds")
    cost = []
    if seconds is not None:
        cost.append(f"training {_fmt(seconds)} s")
    for key, label in (
        ("probe_seconds", "linear probe"),
        ("wall_seconds_total", "whole script (data, training, evaluation)"),
    ):
        if card.get(key) is not None:
            cost.append(f"{label} {_fmt(card[key])} s")
    hardware = card.get("hardware") or {}
    if hardware:
        where = (
            f"{hardware.get('cpu')} ({hardware.get('cpu_cores')} cores, {hardware.get('torch_threads')} torch threads)"
        )
        where += f", GPU {hardware['gpu']}" if hardware.get("gpu") else ", no GPU"
        cost.append(f"on {where}, torch {hardware.get('torch')}")
    if cost:
        parts.append("**Time to train:** " + "; ".join(cost) + ".")
    return "\n\n".join(parts)


def model_card_page(
    name: str,
    config: dict[str, Any],
    card: dict[str, Any],
    intro: str,
    reproduce: str,
    *,
    architecture: str | None = None,
) -> str:
    """A Markdown model-card page: intro, architecture, held-out results and cost, the card's entries,
    and the reproducing commands. `architecture`: the architecture line of a model without a ViT config
    (default: the config's shape and `HookedViT.from_pretrained(name)`)."""
    if architecture is None:
        shape = ", ".join(
            f"{k} {config[k]}"
            for k in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "image_size", "patch_size", "n_classes")
        )
        architecture = f'{shape} (`HookedViT.from_pretrained("{name}")`)'

    return (
        "\n\n".join(
            [
                f"# {name}",
                intro.strip(),
                f"**Architecture:** {architecture}.",
                "## Results on held-out data",
                results_section(card),
                "## Card (from the model's `config.json`)",
                card_table(card),
                "## Reproduce",
                reproduce.strip(),
            ]
        )
        + "\n"
    )


__all__ = ["card_table", "command_line", "hardware_info", "model_card_page", "results_section", "shipped_name"]
