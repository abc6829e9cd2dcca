"""Fine-tune a ViT by tier (linear probe, LoRA, full) with its linear probe as the baseline.

Data: generated galaxies (default; offline, balanced over six gz2 classes), Galaxy Zoo 2 (`--images gz2`,
hub id mwalmsley/gz2 or a local copy with its schema, `--gz2-source`), or your own labelled images:
class sub-folders, a CSV/JSON of paths with a label (`--labels COLUMN`) or target (`--targets COLUMNS`)
column, or `hf:NAME` with `--labels`/`--targets` columns. The run folder (--out) holds the model
(`model/`, or --save-model), its checkpoints (resumable with --resume) and the report.

    vitmech finetune                                          # mini-pretrained -> full tier on galaxies
    vitmech finetune --model google/vit-base-patch16-224 --images gz2 --tier lora
    vitmech finetune --model vitmech/mini-pretrained --images my_photos/    # class sub-folders
"""

from __future__ import annotations

import os

# Threads that wait passively instead of spinning: on a shared, oversubscribed CPU spinning OpenMP threads
# made training 3-4x slower (measured); must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from vitmech.cli.args import PRETRAINED, SYNTHETIC_GALAXIES, add_images, add_labels, add_models, add_run  # noqa: E402
from vitmech.studies._common import NOT_LAUNCHED  # noqa: E402

LAUNCH = NOT_LAUNCHED
LAUNCH_NOTE = "training in several processes, DistributedDataParallel, is not supported"

GZ2 = "gz2"
QUICK = {"n_train": 12, "n_val": 4, "n_test": 8, "steps": 2, "batch_size": 4, "probe_steps": 2, "n_images": 24}
TIERS = ("linear_probe", "lora", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [PRETRAINED])
    add_images(parser, n_images=None, default=SYNTHETIC_GALAXIES)
    add_labels(parser)
    parser.add_argument("--gz2-source", default="mwalmsley/gz2", help="hub id or local copy (with --images gz2)")
    parser.add_argument("--tier", choices=TIERS, default="full", help="what is trained")
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training images (galaxies: 4937; gz2: 10000 rows requested; own data: 80%% of the images)",
    )
    parser.add_argument("--n-val", type=int, default=None, help="validation images (galaxies: 549; own data: 10%%)")
    parser.add_argument(
        "--n-test", type=int, default=None, help="test images (galaxies: 568; gz2: 1000; own data: the rest)"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated data / the split")
    parser.add_argument("--epochs", type=float, default=3.0, help="passes over the training set (sets --steps)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--head-lr", type=float, default=5e-4, help="head learning rate")
    parser.add_argument(
        "--backbone-lr", type=float, default=3e-4, help="backbone (full) or adapter (lora) learning rate"
    )
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
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
    add_run(parser, resumable=True)


def check(args: argparse.Namespace) -> None:
    for name in ("n_train", "n_val", "n_test", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            args.parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps is not None and args.steps <= 0:
        args.parser.error("--steps must be positive")
    if not 0 <= args.warmup < 1:
        args.parser.error("--warmup must be in [0, 1)")


def own_splits(args: argparse.Namespace, model: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Your images (folder, list, CSV/JSON, hf:) split into train / val / test (seeded)."""
    from vitmech.cli.inputs import load_images
    from vitmech.train.datasets import image_source_dataset

    source = load_images(args, minimum=3)
    try:
        data = image_source_dataset(source, model.preprocessing)
    except ValueError as err:
        raise SystemExit(f"error: --images {args.images}: {err}") from None
    n = len(data)
    n_train = args.n_train or max(1, int(0.8 * n))
    n_val = args.n_val if args.n_val is not None else max(0, min(n - n_train - 1, int(0.1 * n)))
    n_test = args.n_test or n - n_train - n_val
    if n_train + n_val + n_test > n or n_test <= 0:
        raise SystemExit(f"error: {n} images cannot be split into {n_train} train / {n_val} val / {n_test} test")
    parts = data.split([n_train, n_test] + ([n_val] if n_val else []), seed=args.data_seed)
    train, test = parts[0], parts[1]
    val = parts[2] if n_val else None
    return train, val, test, {"source": source.note, "split_seed": args.data_seed, "task": data.task}


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.cli.args import models_from
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import models, run_tier_study, start
    from vitmech.train import LoRAConfig, TierConfig, TrainConfig
    from vitmech.train.cards import command_line, hardware_info, shipped_name
    from vitmech.train.datasets import galaxy_dataset, gz2_datasets

    check(args)
    names = models_from(args)
    if len(names) != 1:
        args.parser.error("finetune takes one --model")
    out = start(args, resumable_parts=("checkpoints",))
    progress = not args.no_progress
    t0, c0 = time.perf_counter(), time.process_time()
    loaded = models(args, names)
    model, weights_note = loaded[0].model, loaded[0].note

    if args.images == SYNTHETIC_GALAXIES:
        n_train, n_val, n_test = args.n_train or 4937, args.n_val or 549, args.n_test or 568
        full = galaxy_dataset(
            n_train + n_val + n_test, args.data_seed, model.cfg.image_size, cache_dir=out / "data", progress=progress
        )
        index = torch.arange(len(full))
        train = full.subset(index[:n_train])
        val = full.subset(index[n_train : n_train + n_val])
        test = full.subset(index[n_train + n_val :])
        data_card = {
            "source": "vitmech.data.galaxies (synthetic, balanced classes)",
            "seed": args.data_seed,
            "images": "stream indices 0.. split in order train / val / test",
        }
    elif args.images == GZ2:
        splits, gz2_report = gz2_datasets(
            args.gz2_source,
            model.preprocessing,
            n_train=args.n_train or 10000,
            n_test=args.n_test or 1000,
            at_most=args.n_train is None,
            seed=args.data_seed,
            progress=progress,
        )
        train, val, test = splits["train"], splits.get("val"), splits["test"]  # type: ignore[assignment]
        data_card = {"source": f"Galaxy Zoo 2 ({args.gz2_source})", "loader_report": gz2_report}
    else:
        train, val, test, data_card = own_splits(args, model)

    steps = args.steps or max(1, math.ceil(args.epochs * len(train) / args.batch_size))
    tier = TierConfig(
        args.tier,
        head_lr=args.head_lr,
        backbone_lr=args.backbone_lr,
        weight_decay=args.weight_decay,
        lora=LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout),
    )
    config = TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        warmup_steps=int(args.warmup * steps),
        seed=args.seed,
        augment="dihedral",
        clip_norm=1.0,
        checkpoint_every=25,
        eval_every=0,
    )
    probe_config = (
        TrainConfig(steps=args.probe_steps, batch_size=64, warmup_steps=args.probe_steps // 10, seed=args.seed)
        if args.probe_steps
        else None
    )
    probe_train = train.subset(torch.arange(min(args.probe_train, len(train)))) if args.probe_train else None
    base_card = {"source_model": names[0], "source_weights": weights_note, "data": data_card}
    study = run_tier_study(
        args,
        out,
        model,
        (train, val, test),
        tier,
        config,
        probe_config=probe_config,
        probe_train=probe_train,
        card=base_card,
        progress=progress,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model_dir = Path(args.save_model) if args.save_model else out / "model"
    card_name = shipped_name(str(model_dir))
    card = study.tuned.card(
        **({"name": card_name} if card_name else {}),
        **base_card,
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

    report = study_report(out, f"Fine-tuning {names[0]} ({args.images}, {args.tier} tier)", loaded)
    report.add_text(
        f"Model saved to `{model_dir}`. Source weights: {weights_note}. Splits: {study.split_sizes}. "
        f"{steps} steps of {args.batch_size} images; training took {study.tuned.train_result.seconds:.0f} s."
    )
    report.add_table("summary", study.summary_rows(), caption="Held-out test results")
    if hasattr(study.test, "to_frame") and train.task == "classification":
        report.add_table(
            "confusion",
            study.test.to_frame().reset_index(),
            caption="Confusion matrix of the fine-tuned model (rows: true)",
        )
    if study.probe_test is not None and train.task == "classification":
        report.add_table(
            "confusion_probe",
            study.probe_test.to_frame().reset_index(),
            caption="Linear probe confusion matrix",
            show=False,
        )
    report.add_table("history", study.tuned.train_result.to_frame(), caption="Training history", show=False)
    report.add_json("card", card)
    report.write()
    for row in study.summary_rows():
        shown = {k: v for k, v in row.items() if k != "model" and isinstance(v, float)}
        print(f"{row['model']:>26}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    print(f"model: {model_dir}\nreport: {out / 'report.md'}")
    return 0
