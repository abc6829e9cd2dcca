"""LoRA-fine-tune a ViT as a chirp-spectrogram regressor (the set-up of arXiv 2503.18762).

Synthetic spectrogram figures (vitmech.data.chirps: viridis image, axis labels, title, colour bar) with
three z-scored targets: start time, start frequency, end frequency. LoRA rank 8 on query and value plus a
3-output regression head on the CLS token, as in the paper; the linear probe and the mean predictor are
the baselines. Reports MSE and Pearson r per target on held-out figures; the merged model is saved with a
card (the z-scoring mean/std are in it, to map predictions back to seconds and Hz).

    vitmech finetune-chirp                                     # mini-pretrained -> LoRA
    vitmech finetune-chirp --save-model vitmech/zoo/mini-chirp --out runs/chirp   # how the shipped model was made
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vitmech.studies.finetune

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from vitmech.cli.args import PRETRAINED, add_models, add_run  # noqa: E402
from vitmech.studies._common import NOT_LAUNCHED  # noqa: E402

LAUNCH = NOT_LAUNCHED
LAUNCH_NOTE = "training in several processes, DistributedDataParallel, is not supported"

QUICK = {"n_train": 8, "n_val": 2, "n_test": 4, "steps": 2, "batch_size": 4, "probe_steps": 2}
TIERS = ("linear_probe", "lora", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [PRETRAINED])
    parser.add_argument("--tier", choices=TIERS, default="lora", help="what is trained")
    parser.add_argument("--n-train", type=int, default=4000, help="training figures")
    parser.add_argument("--n-val", type=int, default=500, help="validation figures")
    parser.add_argument("--n-test", type=int, default=500, help="test figures")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated figures")
    parser.add_argument("--epochs", type=float, default=5.0, help="passes over the training set (sets --steps)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="head learning rate")
    parser.add_argument(
        "--backbone-lr", type=float, default=2e-3, help="adapter (lora) or backbone (full) learning rate"
    )
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha")
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="LoRA dropout")
    parser.add_argument(
        "--lora-targets", default="q,v", help="comma-separated projections among q, k, v (the paper's: q,v)"
    )
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


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.cli.args import models_from
    from vitmech.cli.outputs import study_report
    from vitmech.data import TargetScaler
    from vitmech.studies._common import models, run_tier_study, start
    from vitmech.train import ArrayDataset, LoRAConfig, TierConfig, TrainConfig
    from vitmech.train.cards import command_line, hardware_info, shipped_name
    from vitmech.train.datasets import chirp_dataset

    for name in ("n_train", "n_val", "n_test", "batch_size"):
        if getattr(args, name) <= 0:
            args.parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.n_train < 2:
        args.parser.error("--n-train must be at least 2 (targets are z-scored with the training split)")
    if args.steps is not None and args.steps <= 0:
        args.parser.error("--steps must be positive")
    names = models_from(args)
    if len(names) != 1:
        args.parser.error("finetune-chirp takes one --model")
    out = start(args, resumable_parts=("checkpoints",))
    progress = not args.no_progress
    t0, c0 = time.perf_counter(), time.process_time()
    loaded = models(args, names)
    model, weights_note = loaded[0].model, loaded[0].note

    raw = chirp_dataset(
        args.n_train + args.n_val + args.n_test,
        args.data_seed,
        model.cfg.image_size,
        cache_dir=out / "data",
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
    base_card = {"source_model": names[0], "source_weights": weights_note, "data": data_card, "targets": targets}
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
    study.tuned.model.save_pretrained(model_dir, card=card)

    report = study_report(out, f"{args.tier} fine-tuning of {names[0]} as a chirp regressor", loaded)
    report.add_text(
        f"Model saved to `{model_dir}`. Source weights: {weights_note}. Splits: {study.split_sizes}. "
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
    print(f"model: {model_dir}\nreport: {out / 'report.md'}")
    return 0
