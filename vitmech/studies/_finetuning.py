"""What the fine-tuning commands (`finetune`, `finetune-chirp`) share: the training flags, the tier and
training configurations built from them, and the saved model with its card."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

TIERS = ("linear_probe", "lora", "full")  # vitmech.train.TIERS, without importing torch for --help


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    tier: str,
    epochs: float,
    head_lr: float,
    backbone_lr: float,
    weight_decay: float,
) -> None:
    """The tier, schedule, optimiser, LoRA, linear-probe (LP-FT) and --save-model flags, with the command's
    defaults."""
    parser.add_argument("--tier", choices=TIERS, default=tier, help="what is trained")
    parser.add_argument("--epochs", type=float, default=epochs, help="passes over the training set (sets --steps)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--head-lr", type=float, default=head_lr, help="head learning rate")
    parser.add_argument(
        "--backbone-lr", type=float, default=backbone_lr, help="backbone (full) or adapter (lora) learning rate"
    )
    parser.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha")
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="LoRA dropout")
    parser.add_argument(
        "--probe-steps", type=int, default=600, help="linear-probe steps on cached features (0: no probe)"
    )
    parser.add_argument("--probe-lr", type=float, default=1e-2, help="linear-probe learning rate")
    parser.add_argument(
        "--lp-ft",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the fine-tune from the linear probe's head (LP-FT; needs --probe-steps > 0)",
    )
    parser.add_argument("--probe-train", type=int, default=None, help="training images for the probe (default: all)")
    parser.add_argument("--save-model", metavar="DIR", help="where the fine-tuned model goes (default: OUT/model)")


def start_fine_tuning(args: argparse.Namespace, command: str) -> tuple[Path, list[Any], tuple[float, float]]:
    """Check the counts and schedule flags, then open the run folder (resumable checkpoints) and load the one
    --model. Returns (run folder, [the loaded model], (perf_counter, process_time) at the start)."""
    import time

    from vitmech.cli.args import models_from
    from vitmech.studies._common import models, start

    for name in ("n_train", "n_val", "n_test", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            args.parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps is not None and args.steps <= 0:
        args.parser.error("--steps must be positive")
    if not 0 <= args.warmup < 1:
        args.parser.error("--warmup must be in [0, 1)")
    names = models_from(args)
    if len(names) != 1:
        args.parser.error(f"{command} takes one --model")
    out = start(args, resumable_parts=("checkpoints",))
    started = time.perf_counter(), time.process_time()
    return out, models(args, names), started


def training_plan(
    args: argparse.Namespace,
    train: Any,
    *,
    augment: Literal["hflip", "dihedral"] | None,
    lora_targets: tuple[str, ...] | None = None,
) -> tuple[int, Any, Any, Any, Any]:
    """(steps, tier, training config, probe config or None, probe training subset or None) from the flags
    of `add_training_arguments`; steps from --steps, else --epochs over `train`."""
    import torch

    from vitmech.train import LoRAConfig, TierConfig, TrainConfig

    steps = args.steps or max(1, math.ceil(args.epochs * len(train) / args.batch_size))
    lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout)
    if lora_targets is not None:
        lora = replace(lora, targets=lora_targets)
    tier = TierConfig(
        args.tier, head_lr=args.head_lr, backbone_lr=args.backbone_lr, weight_decay=args.weight_decay, lora=lora
    )
    config = TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        warmup_steps=int(args.warmup * steps),
        seed=args.seed,
        augment=augment,
        clip_norm=1.0,
        checkpoint_every=25,
    )
    probe_config = (
        TrainConfig(steps=args.probe_steps, batch_size=64, warmup_steps=args.probe_steps // 10, seed=args.seed)
        if args.probe_steps
        else None
    )
    probe_train = train.subset(torch.arange(min(args.probe_train, len(train)))) if args.probe_train else None
    return steps, tier, config, probe_config, probe_train


def fine_tune_and_save(
    args: argparse.Namespace,
    out: Path,
    model: Any,
    splits: tuple[Any, Any, Any],
    base_card: dict[str, Any],
    *,
    augment: Literal["hflip", "dihedral"] | None,
    lora_targets: tuple[str, ...] | None = None,
    started: tuple[float, float],
    progress: bool,
    **card_extra: Any,
) -> tuple[Any, int, Path, dict[str, Any]]:
    """Train `model` by the flags of `add_training_arguments` on splits (train, val, test) with its linear
    probe (`run_tier_study`), then save it with its card (`save_tuned_model`; `started`: the command's
    (perf_counter, process_time) at start, for the total times). Returns (study, steps, model folder, card)."""
    import time

    from vitmech.studies._common import run_tier_study

    steps, tier, config, probe_config, probe_train = training_plan(
        args, splits[0], augment=augment, lora_targets=lora_targets
    )
    study = run_tier_study(
        args,
        out,
        model,
        splits,
        tier,
        config,
        probe_config=probe_config,
        probe_train=probe_train,
        card=base_card,
        progress=progress,
    )
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    model_dir, card = save_tuned_model(args, out, study, base_card, wall, cpu, **card_extra)
    return study, steps, model_dir, card


def save_tuned_model(
    args: argparse.Namespace, out: Path, study: Any, base_card: dict[str, Any], wall: float, cpu: float, **extra: Any
) -> tuple[Path, dict[str, Any]]:
    """Save the fine-tuned model of `study` (to --save-model, default OUT/model) with its card: `base_card`,
    `extra`, the test metrics, the training and probe times, the total wall and CPU seconds, the hardware and
    the command line. Returns (model folder, card)."""
    from vitmech.train.cards import command_line, hardware_info, shipped_name

    model_dir = Path(args.save_model) if args.save_model else out / "model"
    card_name = shipped_name(str(model_dir))
    card = study.tuned.card(
        **({"name": card_name} if card_name else {}),
        **base_card,
        **extra,
        metrics=study.card_metrics(),
        train_seconds=round(study.tuned.train_result.seconds, 1),
        probe_seconds=round(study.probe.train_result.seconds, 1) if study.probe else None,
        probe_cpu_seconds=round(study.probe.train_result.cpu_seconds, 1) if study.probe else None,
        wall_seconds_total=round(wall, 1),
        cpu_seconds_total=round(cpu, 1),
        hardware=hardware_info(),
        command=command_line(),
    )
    study.tuned.model.save_pretrained(model_dir, card=card)
    return model_dir, card
