"""Fine-tune a ViT on galaxy morphology (the Galaxy Zoo fine-tuning study's fine-tune, docs/attention.md#the-galaxy-zoo-fine-tuning-table-and-the-scripts), by tier, with its linear probe.

Data: the synthetic galaxies (vitmech.data.galaxies, offline, balanced over the six gz2 classes) or
Galaxy Zoo 2 (`--data gz2`, hub id mwalmsley/gz2 or a local copy with its schema). Split sizes default to
the study's: 4,937 train / 549 validation / 568 test (for gz2: 10,000 + 1,000 rows requested, 10% of the
surviving training rows to validation). The fine-tuned model is saved with a card holding the test
accuracy, the linear probe's, chance, and the margins between them; a report folder holds the tables.

    python experiments/02_fine_tune_galaxy.py                                    # mini-pretrained -> full tier
    python experiments/02_fine_tune_galaxy.py --model google/vit-base-patch16-224 --data gz2 --tier lora
    python experiments/02_fine_tune_galaxy.py --out vitmech/zoo/mini-galaxy      # how the shipped model was made
"""

from __future__ import annotations

import os

# Threads that wait passively instead of spinning: on a shared, oversubscribed CPU spinning OpenMP threads
# made training 3-4x slower (measured); must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import math
import sys
import time
from pathlib import Path

import torch

from vitmech.cli import load_model
from vitmech.report import Report
from vitmech.train import TIERS, LoRAConfig, TierConfig, TrainConfig
from vitmech.train.cards import command_line, hardware_info, shipped_name
from vitmech.train.datasets import galaxy_dataset, gz2_datasets
from vitmech.train.study import run_study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vitmech/mini-pretrained", help="shipped name, local path, timm name or hub id")
    p.add_argument("--data", choices=("synthetic", "gz2"), default="synthetic")
    p.add_argument("--gz2-source", default="mwalmsley/gz2", help="hub id or local copy (with --data gz2)")
    p.add_argument("--tier", choices=TIERS, default="full")
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training images (synthetic, default 4937) / training rows requested (gz2, default 10000 or all there are)",
    )
    p.add_argument("--n-val", type=int, default=549, help="validation images (synthetic)")
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="test images (synthetic, default 568) / test rows requested (gz2, default 1000 or all there are)",
    )
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training set (sets --steps)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head-lr", type=float, default=5e-4)
    p.add_argument("--backbone-lr", type=float, default=3e-4, help="backbone (full) or adapter (lora) learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--probe-steps", type=int, default=600, help="linear-probe steps on cached features (0: no probe)")
    p.add_argument("--probe-lr", type=float, default=1e-2)
    p.add_argument(
        "--lp-ft",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the fine-tune from the linear probe's head (LP-FT; needs --probe-steps > 0)",
    )
    p.add_argument("--probe-train", type=int, default=None, help="training images for the probe (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    p.add_argument("--out", default="runs/fine_tune_galaxy/model", help="where the fine-tuned model is saved")
    p.add_argument("--run-dir", default="runs/fine_tune_galaxy", help="checkpoints (resumable) and data cache")
    p.add_argument("--report", default="reports/fine_tune_galaxy")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("n_train", "n_val", "n_test", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps is not None and args.steps <= 0:
        p.error("--steps must be positive")
    if not 0 <= args.warmup < 1:
        p.error("--warmup must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    t0, c0 = time.perf_counter(), time.process_time()
    model, weights_note = load_model(args.model)

    if args.data == "synthetic":
        args.n_train = args.n_train or 4937
        args.n_test = args.n_test or 568
        full = galaxy_dataset(
            args.n_train + args.n_val + args.n_test,
            args.data_seed,
            model.cfg.image_size,
            cache_dir=Path(args.run_dir) / "data",
            progress=progress,
        )
        index = torch.arange(len(full))
        train = full.subset(index[: args.n_train])
        val = full.subset(index[args.n_train : args.n_train + args.n_val])
        test = full.subset(index[args.n_train + args.n_val :])
        data_card = {
            "source": "vitmech.data.galaxies (synthetic, balanced classes)",
            "seed": args.data_seed,
            "images": "stream indices 0.. split in order train / val / test",
        }
    else:
        splits, gz2_report = gz2_datasets(
            args.gz2_source,
            model.preprocessing,
            n_train=args.n_train or 10000,
            n_test=args.n_test or 1000,
            at_most=args.n_train is None,
            seed=args.data_seed,
            progress=progress,
        )
        train, val, test = splits["train"], splits.get("val"), splits["test"]
        data_card = {"source": f"Galaxy Zoo 2 ({args.gz2_source})", "loader_report": gz2_report}

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
    base_card = {"source_model": args.model, "source_weights": weights_note, "data": data_card}
    study = run_study(
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
        checkpoint_dir=Path(args.run_dir) / args.tier,
        card=base_card,
        progress=progress,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    name = shipped_name(args.out)
    card = study.tuned.card(
        **({"name": name} if name else {}),
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
    study.tuned.model.save_pretrained(args.out, card=card)

    report = Report(args.report, f"Fine-tuning {args.model} on galaxies ({args.data}, {args.tier} tier)")
    report.add_text(
        f"Model saved to `{args.out}`. Source weights: {weights_note}. Splits: {study.split_sizes}. "
        f"{steps} steps of {args.batch_size} images; training took {study.tuned.train_result.seconds:.0f} s."
    )
    report.add_table("summary", study.summary_rows(), caption="Held-out test accuracy")
    report.add_table(
        "confusion",
        study.test.to_frame().reset_index(),
        caption="Confusion matrix of the fine-tuned model (rows: true)",
    )
    if study.probe_test is not None:
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
        print(f"{row['model']:>26}: test accuracy {row['test_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
