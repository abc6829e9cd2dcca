"""A small timm CNN as the reference convolutional model for the explanation maps (docs/explanations.md#cnn).

`load_cnn(name)` gives a timm CNN (an `nn.Module` returning logits) with three attributes the studies read:
`preprocessing` (a `vitmech.preprocessing.Preprocessing`), `class_names` (list or None) and `card` (dict).
Names: a shipped CNN (`vitmech/mini-cnn`), a folder written by `save_cnn`, or any timm model name (built
with `pretrained=False` unless asked; timm reads its hub cache when offline).

`train_cnn` trains one on the synthetic galaxies with the same data, split, augmentation and schedule as
`vitmech/mini-galaxy` (docs/training.md), so the two held-out accuracies compare on the same 568 test images.

    python -m vitmech.train.cnn --out vitmech/zoo/mini-cnn      # how vitmech/mini-cnn was made
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitmech.errors import InputError
from vitmech.preprocessing import Preprocessing
from vitmech.train.mini import mini_preprocessing

logger = logging.getLogger(__name__)

CNN_FORMAT = "vitmech-cnn"
ZOO_PREFIX = "vitmech/"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
DEFAULT_CNN = "vitmech/mini-cnn"
MINI_CNN_ARCH: dict[str, Any] = {"channels": [16, 32, 64, 128], "stem_width": 16}
MINI_CNN_BASE = "resnet10t"
MINI_CNN_IMAGE_SIZE = 112
VIT_PREFIXES = ("vit_", "deit", "eva", "beit", "flexivit", "samvit", "vitamin")


def cnn_preprocessing(image_size: int = MINI_CNN_IMAGE_SIZE) -> Preprocessing:
    """The mini models' normalisation (mean = std = 0.5, squash) at the CNN's input size."""
    return replace(mini_preprocessing(image_size), source="vitmech mini CNN (mini-model normalisation)")


def build_cnn(
    base: str, n_classes: int, arch: dict[str, Any] | None = None, pretrained: bool = False, seed: int = 0
) -> nn.Module:
    """timm.create_model(base, num_classes=n_classes, **arch), seeded; the vitmech attributes filled."""
    import timm

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in (arch or {}).items()}
    try:
        model = timm.create_model(base, pretrained=pretrained, num_classes=n_classes, **kwargs)
    except RuntimeError as err:
        raise InputError(f"timm cannot build CNN {base!r}: {err}") from err
    config: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    preprocessing = Preprocessing(
        image_size=int(config.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(config.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(config.get("std", (0.229, 0.224, 0.225))),
        interpolation=config.get("interpolation", "bicubic") or "bicubic",
        crop_pct=float(config.get("crop_pct", 0.875) or 0.875),
        source=f"timm {base}",
    )
    card = {"base": base, "arch": dict(arch or {}), "random_init": not pretrained}
    return describe_cnn(model, preprocessing, None, card).eval()


def describe_cnn(
    model: nn.Module, preprocessing: Preprocessing, class_names: list[str] | None, card: dict[str, Any]
) -> nn.Module:
    """Set the attributes the studies read (`preprocessing`, `class_names`, `card`) on a CNN; returns it."""
    vars(model).update(preprocessing=preprocessing, class_names=class_names, card=card)
    return model


def is_cnn_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == CNN_FORMAT
    except (OSError, ValueError):
        return False


def zoo_cnns() -> dict[str, Path]:
    """Shipped CNNs: 'vitmech/<dir>' -> folder."""
    if not ZOO_DIR.is_dir():
        return {}
    return {ZOO_PREFIX + p.name: p for p in sorted(ZOO_DIR.iterdir()) if is_cnn_dir(p)}


def is_cnn_name(name: str) -> bool:
    """Whether `name` names a CNN (a shipped or saved CNN folder, or a timm model that is not a ViT)."""
    if name in zoo_cnns() or is_cnn_dir(Path(name).expanduser()):
        return True
    if "/" in name or Path(name).expanduser().exists():
        return False
    import timm

    return bool(timm.list_models(name)) and not name.startswith(VIT_PREFIXES)


def save_cnn(model: nn.Module, directory: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` + `config.json` (timm base name, arch kwargs, preprocessing, class names, card)."""
    from safetensors.torch import save_file

    from vitmech.io.atomic import atomic_write, atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own = dict(getattr(model, "card", {}))
    meta = {
        "format": CNN_FORMAT,
        "format_version": 1,
        "base": own.get("base"),
        "arch": own.get("arch", {}),
        "n_classes": int(getattr(model, "num_classes")),  # noqa: B009 (timm models have it)
        "preprocessing": getattr(model, "preprocessing").to_dict(),  # noqa: B009 (a plain attribute set by build_cnn)
        "class_names": model.class_names,
        "card": card if card is not None else own,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(directory / "config.json", json.dumps(meta, indent=2) + "\n")
    return directory


def load_cnn(name: str = DEFAULT_CNN, *, n_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """A shipped CNN (`vitmech/mini-cnn`), a folder from `save_cnn`, or a timm CNN name (random init unless
    pretrained=True; then n_classes sets the head, default timm's)."""
    from safetensors.torch import load_file

    folder = zoo_cnns().get(name) or Path(name).expanduser()
    if is_cnn_dir(folder):
        meta = json.loads((folder / "config.json").read_text())
        model = build_cnn(meta["base"], int(meta["n_classes"]), meta.get("arch"))
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        card = {**meta.get("card", {}), "random_init": False}
        return describe_cnn(model, Preprocessing.from_dict(meta["preprocessing"]), meta.get("class_names"), card).eval()
    import timm

    if not timm.list_models(name):
        raise InputError(
            f"unknown CNN {name!r}: not a shipped CNN ({', '.join(zoo_cnns()) or 'none'}), a folder written by "
            "save_cnn, or a timm model name"
        )
    kwargs = {"num_classes": n_classes} if n_classes is not None else {}
    model = build_cnn(name, kwargs.get("num_classes", 1000), pretrained=pretrained)
    return model


# ----------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class CNNRecipe:
    """steps, batch size, AdamW lr / weight decay, warm-up fraction, seed (augmentation: dihedral)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    seed: int = 0


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, Any]:
    from vitmech.train.data import to_model_input
    from vitmech.train.evaluate import confusion_matrix

    model.eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            x = to_model_input(images[start : start + 64], getattr(model, "preprocessing"))  # noqa: B009
            predicted.append(model(x).argmax(-1))
    pred = torch.cat(predicted)
    confusion = confusion_matrix(labels, pred, n_classes)
    return {
        "accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
        "n": int(len(labels)),
        "confusion": confusion.tolist(),
    }


def train_cnn(
    recipe: CNNRecipe, n_train: int = 4937, n_val: int = 549, n_test: int = 568, data_seed: int = 0, **data: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """The mini CNN trained on synthetic galaxies (stream indices split in order train / val / test, as
    `vitmech finetune`); returns the model and its card (held-out accuracy and confusion matrix)."""
    from vitmech.train.data import augment_batch, batch_indices, step_generator, to_model_input
    from vitmech.train.datasets import galaxy_dataset
    from vitmech.train.loop import TrainConfig, lr_factor

    full = galaxy_dataset(n_train + n_val + n_test, data_seed, 224, **data)
    train_images, train_labels = full.images[:n_train], full.targets[:n_train]
    val = (full.images[n_train : n_train + n_val], full.targets[n_train : n_train + n_val])
    test = (full.images[n_train + n_val :], full.targets[n_train + n_val :])
    n_classes = len(full.names)
    model = build_cnn(MINI_CNN_BASE, n_classes, MINI_CNN_ARCH, seed=recipe.seed)
    preprocessing = cnn_preprocessing()
    describe_cnn(model, preprocessing, list(full.names), getattr(model, "card"))  # noqa: B009
    schedule = TrainConfig(steps=recipe.steps, warmup_steps=int(recipe.warmup * recipe.steps))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    history = []
    running = 0.0
    model.train()
    for step in range(recipe.steps):
        rows = batch_indices(n_train, recipe.batch_size, step, recipe.seed)
        batch = augment_batch(train_images[rows], "dihedral", step_generator(recipe.seed, step))
        x = to_model_input(batch, preprocessing)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, schedule)
        loss = F.cross_entropy(model(x), train_labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % 25 == 0 or step + 1 == recipe.steps:
            history.append({"step": step + 1, "loss": running / 25})
            logger.info("step %d loss %.4f", step + 1, running / 25)
            running = 0.0
    model.eval()
    card = {
        "base": MINI_CNN_BASE,
        "arch": MINI_CNN_ARCH,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "recipe": recipe.__dict__,
        "data": {
            "source": "vitmech.data.galaxies (synthetic, balanced classes)",
            "seed": data_seed,
            "images": "stream indices 0.. split in order train / val / test (as vitmech/mini-galaxy)",
            "split_sizes": {"train": n_train, "val": n_val, "test": n_test},
        },
        "train_seconds": round(time.perf_counter() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - c0, 1),
        "history": history,
        "metrics": {"val": _accuracy(model, *val, n_classes), "test": _accuracy(model, *test, n_classes)},
    }
    return model, card


def main(argv: list[str] | None = None) -> int:
    from vitmech.train.cards import hardware_info

    parser = argparse.ArgumentParser(prog="python -m vitmech.train.cnn", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder the CNN is written to")
    parser.add_argument("--steps", type=int, default=CNNRecipe.steps)
    parser.add_argument("--batch-size", type=int, default=CNNRecipe.batch_size)
    parser.add_argument("--lr", type=float, default=CNNRecipe.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="data cache folder")
    parser.add_argument("--n-train", type=int, default=4937)
    parser.add_argument("--n-val", type=int, default=549)
    parser.add_argument("--n-test", type=int, default=568)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    recipe = CNNRecipe(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model, card = train_cnn(recipe, args.n_train, args.n_val, args.n_test, cache_dir=args.cache, progress=False)
    vit = json.loads((ZOO_DIR / "mini-galaxy" / "config.json").read_text())["card"]["metrics"]["test"]["accuracy"]
    card.update(
        name="vitmech/mini-cnn" if Path(args.out).name == "mini-cnn" else None,
        compare={"vitmech/mini-galaxy test accuracy (same 568 test images)": vit},
        hardware=hardware_info(),
        command=" ".join(["python -m vitmech.train.cnn", *(argv if argv is not None else sys.argv[1:])]),
    )
    save_cnn(model, args.out, card=card)
    logger.info(
        "test accuracy %.4f (mini-galaxy %.4f); saved to %s", card["metrics"]["test"]["accuracy"], vit, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
