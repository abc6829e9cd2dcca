"""LoRA-fine-tune a ViT as a chirp-spectrogram regressor (the set-up of arXiv 2503.18762).

Synthetic spectrogram figures (vitmech.data.chirps: viridis image, axis labels, title, colour bar) with
three z-scored targets: start time, start frequency, end frequency. LoRA rank 8 on query and value plus a
3-output regression head on the CLS token, as in the paper; the linear probe and the mean predictor are
the baselines. Reports MSE and Pearson r per target on held-out figures; the merged model is saved with a
card (the z-scoring mean/std are in it, to map predictions back to seconds and Hz).

    python experiments/09_fine_tune_chirp.py                                     # mini-pretrained -> LoRA
    python experiments/09_fine_tune_chirp.py --out vitmech/zoo/mini-chirp        # how the shipped model was made
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
from vitmech.data import TargetScaler
from vitmech.report import Report
from vitmech.train import TIERS, ArrayDataset, LoRAConfig, TierConfig, TrainConfig
from vitmech.train.cards import command_line, hardware_info, shipped_name
from vitmech.train.datasets import chirp_dataset
from vitmech.train.study import run_study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vitmech/mini-pretrained", help="shipped name, local path, timm name or hub id")
    p.add_argument("--tier", choices=TIERS, default="lora")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr", type=float, default=2e-3, help="adapter (lora) or backbone (full) learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument(
        "--lora-targets", default="q,v", help="comma-separated projections among q, k, v (default q,v: the paper's)"
    )
    p.add_argument("--probe-steps", type=int, default=600, help="linear-probe steps on cached features (0: no probe)")
    p.add_argument("--probe-lr", type=float, default=1e-2)
    p.add_argument(
        "--lp-ft",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the fine-tune from the linear probe's head (LP-FT; needs --probe-steps > 0)",
    )
    p.add_argument("--probe-train", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    p.add_argument("--out", default="runs/fine_tune_chirp/model")
    p.add_argument("--run-dir", default="runs/fine_tune_chirp")
    p.add_argument("--report", default="reports/fine_tune_chirp")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("n_train", "n_val", "n_test", "batch_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.n_train < 2:
        p.error("--n-train must be at least 2 (targets are z-scored with the training split)")
    if args.steps is not None and args.steps <= 0:
        p.error("--steps must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    t0, c0 = time.perf_counter(), time.process_time()
    model, weights_note = load_model(args.model)

    raw = chirp_dataset(
        args.n_train + args.n_val + args.n_test,
        args.data_seed,
        model.cfg.image_size,
        cache_dir=Path(args.run_dir) / "data",
        progress=progress,
    )
    index = torch.arange(len(raw))
    raw_train = raw.subset(index[: args.n_train])
    scaler = TargetScaler.fit(raw_train.targets.double().numpy())

    def zscored(data: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(data.images, scaler.transform(data.targets), data.names, "regression")

    train = zscored(raw_train)
    val = zscored(raw.subset(index[args.n_train : args.n_train + args.n_val]))
    test = zscored(raw.subset(index[args.n_train + args.n_val :]))

    steps = args.steps or max(1, math.ceil(args.epochs * len(train) / args.batch_size))
    tier = TierConfig(
        args.tier,
        head_lr=args.head_lr,
        backbone_lr=args.backbone_lr,
        weight_decay=args.weight_decay,
        lora=LoRAConfig(
            rank=args.lora_rank,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        ),
    )
    config = TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        warmup_steps=int(args.warmup * steps),
        seed=args.seed,
        augment=None,
        clip_norm=1.0,
        checkpoint_every=25,
    )
    probe_config = (
        TrainConfig(steps=args.probe_steps, batch_size=64, warmup_steps=args.probe_steps // 10, seed=args.seed)
        if args.probe_steps
        else None
    )
    probe_train = train.subset(torch.arange(min(args.probe_train, len(train)))) if args.probe_train else None
    targets = {
        "names": train.names,
        "units": ["s", "Hz", "Hz"],
        "mean": list(scaler.mean),
        "std": list(scaler.std),
        "meaning": "outputs are z-scores: value = output * std + mean",
    }
    data_card = {
        "source": "vitmech.data.chirps (synthetic spectrogram figures with title, axis labels, colour bar)",
        "seed": args.data_seed,
        "images": "stream indices 0.. split in order train / val / test",
    }
    base_card = {"source_model": args.model, "source_weights": weights_note, "data": data_card, "targets": targets}
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
        task="regression",
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

    report = Report(args.report, f"{args.tier} fine-tuning of {args.model} as a chirp regressor")
    report.add_text(
        f"Model saved to `{args.out}`. Source weights: {weights_note}. Splits: {study.split_sizes}. "
        f"{steps} steps of {args.batch_size} images; training took {study.tuned.train_result.seconds:.0f} s. "
        "MSE in z-score units (1.0 = predicting the training mean)."
    )
    report.add_table("summary", study.summary_rows(), caption="Held-out test MSE and Pearson r per target")
    report.add_table("per_target", study.test.to_frame(), caption="Fine-tuned model, per target")
    report.add_table("history", study.tuned.train_result.to_frame(), caption="Training history", show=False)
    report.add_json("card", card)
    report.write()
    for row in study.summary_rows():
        rs = ", ".join(f"{k[2:]} r={v:.3f}" for k, v in row.items() if k.startswith("r_"))
        print(f"{row['model']:>18}: mean MSE {row['mean_mse']:.3f}  {rs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
