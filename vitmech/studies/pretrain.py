"""Pretrain the embedded 12 x 12-head ViT on procedural (non-galaxy) images: how vitmech/mini-pretrained was made.

Formula-driven pretraining (FractalDB-style; here scenes of textured shapes, vitmech/data/procedural.py):
classify 32 shape/fill classes. Two stages, as in low-resolution pretraining (FixRes, DeiT): most steps at
112 px (7 x 7 patches: ~10x cheaper per image on a CPU), then the position embeddings are resampled to
the 14 x 14 grid and a short stage trains at 224 px. Both stages checkpoint under OUT/checkpoints and
resume after an interruption (--resume).

    vitmech pretrain                                    # the shipped recipe (~30 min on 2 cores) into runs/
    vitmech pretrain --save-model vitmech/zoo/mini-pretrained --out runs/pretrain   # replace the shipped model
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vitmech.studies.finetune

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from vitmech.cli.args import add_run  # noqa: E402
from vitmech.studies._common import NOT_LAUNCHED  # noqa: E402

LAUNCH = NOT_LAUNCHED
LAUNCH_NOTE = "training in several processes, DistributedDataParallel, is not supported"

QUICK = {
    "layers": 2,
    "d_model": 24,
    "stage1_images": 16,
    "stage1_steps": 2,
    "stage1_batch": 8,
    "stage2_images": 8,
    "stage2_steps": 1,
    "stage2_batch": 4,
    "test_images": 8,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage1-images", type=int, default=12288, help="stage-1 training images")
    p.add_argument("--patch-size", type=int, default=16, help="patch size (px); 224 and --stage1-size multiples of it")
    p.add_argument("--stage1-size", type=int, default=112, help="stage-1 image size (px)")
    p.add_argument("--stage1-steps", type=int, default=1000, help="stage-1 steps")
    p.add_argument("--stage1-batch", type=int, default=64, help="stage-1 batch size")
    p.add_argument("--stage1-lr", type=float, default=1e-3, help="stage-1 learning rate")
    p.add_argument("--stage2-images", type=int, default=3200, help="stage-2 training images (224 px)")
    p.add_argument("--stage2-steps", type=int, default=100, help="stage-2 steps")
    p.add_argument("--stage2-batch", type=int, default=32, help="stage-2 batch size")
    p.add_argument("--stage2-lr", type=float, default=2e-4, help="stage-2 learning rate")
    p.add_argument("--test-images", type=int, default=512, help="test images")
    p.add_argument("--layers", type=int, default=None, help="override n_layers (smaller trials)")
    p.add_argument("--d-model", type=int, default=None, help="override d_model (d_head = d_model / 12)")
    p.add_argument("--save-model", metavar="DIR", help="where the model goes (default: OUT/model)")
    add_run(p, resumable=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.cli.outputs import study_report
    from vitmech.data.procedural import FILLS, PROCEDURAL_CLASSES, SHAPES
    from vitmech.studies._common import device, start
    from vitmech.train import chance_baselines, with_image_size
    from vitmech.train.cards import command_line, hardware_info, shipped_name
    from vitmech.train.mini import mini_vit

    for name in (
        "stage1_images",
        "stage1_steps",
        "stage1_batch",
        "stage2_images",
        "stage2_steps",
        "stage2_batch",
        "test_images",
    ):
        if getattr(args, name) <= 0:
            args.parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.patch_size <= 0 or 224 % args.patch_size:
        args.parser.error(f"--patch-size must divide the 224 px image size, got {args.patch_size}")
    if args.stage1_size % args.patch_size or args.stage1_size > 224:
        args.parser.error(f"--stage1-size must be a multiple of the patch size {args.patch_size} and at most 224")
    out = start(args, resumable_parts=("checkpoints",))
    run = out / "checkpoints"
    progress = not args.no_progress
    overrides = {"patch_size": args.patch_size}
    if args.layers:
        overrides["n_layers"] = args.layers
    if args.d_model:
        overrides.update(d_model=args.d_model, d_head=max(1, args.d_model // 12), d_mlp=4 * args.d_model)

    model = mini_vit(
        len(PROCEDURAL_CLASSES), PROCEDURAL_CLASSES, image_size=args.stage1_size, seed=args.seed, **overrides
    ).to(device(args))  # the training loop and evaluation move each batch to the model's device
    t_start, c_start = time.perf_counter(), time.process_time()

    # stage 1: low resolution
    cfg1 = _stage_config(
        args.stage1_steps,
        args.stage1_batch,
        warmup_steps=max(1, args.stage1_steps // 12),
        min_lr_ratio=0.05,
        seed=args.seed,
        checkpoint_every=50,
        log_every=10,
    )
    res1, ev1, _ = _train_stage(
        model,
        1,
        args,
        images=args.stage1_images,
        size=args.stage1_size,
        lr=args.stage1_lr,
        config=cfg1,
        run=run,
        progress=progress,
    )
    acc1 = ev1.accuracy

    # stage 2: full resolution (position embeddings resampled to the 224 px grid: 14 x 14 at patch 16)
    model = with_image_size(model, 224).to(device(args))
    cfg2 = _stage_config(
        args.stage2_steps,
        args.stage2_batch,
        warmup_steps=max(1, args.stage2_steps // 10),
        min_lr_ratio=0.0,
        seed=args.seed + 1,
        checkpoint_every=25,
        log_every=5,
    )
    res2, ev, test2 = _train_stage(
        model, 2, args, images=args.stage2_images, size=224, lr=args.stage2_lr, config=cfg2, run=run, progress=progress
    )
    chance = chance_baselines(torch.arange(len(PROCEDURAL_CLASSES)), test2.targets, len(PROCEDURAL_CLASSES))
    wall, cpu = time.perf_counter() - t_start, time.process_time() - c_start

    grid1, grid2 = args.stage1_size // args.patch_size, 224 // args.patch_size
    card = {
        **({"name": card_name} if (card_name := shipped_name(str(args.save_model or ""))) else {}),
        "source_model": f"random init (vitmech.train.mini.scaled_init_, seed {args.seed})",
        "data": {
            "generator": "vitmech.data.procedural (scenes of one textured shape among 0-3 small distractors)",
            "classes": f"{len(SHAPES)} shapes x {len(FILLS)} fills = {len(PROCEDURAL_CLASSES)}",
            "stage1": {"images": args.stage1_images, "size": args.stage1_size, "seed": args.seed},
            "stage2": {"images": args.stage2_images, "size": 224, "seed": args.seed + 1},
            "test": {"images": args.test_images, "seed": args.seed + 1000},
        },
        "tier": "pretraining (all weights)",
        "recipe": {
            "stage1": {**cfg1.to_dict(), "lr": args.stage1_lr, "weight_decay": 0.05},
            "stage2": {
                **cfg2.to_dict(),
                "lr": args.stage2_lr,
                "weight_decay": 0.05,
                "position_embeddings": f"bicubic resample {grid1}x{grid1} -> {grid2}x{grid2}",
            },
            "optimizer": "AdamW, linear warm-up then cosine, grad-norm clip 1.0, label smoothing 0.1, dihedral flips/rotations",
        },
        "metrics": {
            "procedural_test_accuracy": ev.accuracy,
            f"procedural_test_accuracy_{args.stage1_size}px_after_stage1": acc1,
            "chance_uniform": chance["uniform"],
            "test_images": len(test2),
        },
        "train_seconds": {
            "stage1": round(res1.seconds, 1),
            "stage2": round(res2.seconds, 1),
            "wall_total": round(wall, 1),
        },
        "cpu_seconds": {
            "stage1": round(res1.cpu_seconds, 1),
            "stage2": round(res2.cpu_seconds, 1),
            "total": round(cpu, 1),
        },
        "hardware": hardware_info(),
        "command": command_line(),
    }
    model_dir = Path(args.save_model) if args.save_model else out / "model"
    model.save_pretrained(model_dir, card=card)

    report = study_report(out, "Procedural pretraining of the embedded 12 x 12-head ViT", [])
    report.add_text(
        f"Saved to `{model_dir}`. Test accuracy at 224 px: {ev.accuracy:.3f} (chance {chance['uniform']:.3f}); "
        f"after stage 1 at {args.stage1_size} px: {acc1:.3f}. Train time {res1.seconds + res2.seconds:.0f} s."
    )
    report.add_table("history_stage1", res1.to_frame(), caption="Stage 1 training history", show=False)
    report.add_table("history_stage2", res2.to_frame(), caption="Stage 2 training history", show=False)
    report.add_table(
        "confusion_224px", ev.to_frame().reset_index(), caption="Confusion matrix (224 px test set)", show=False
    )
    report.add_json("card", card)
    report.write()
    print(f"saved {model_dir}: procedural test accuracy {ev.accuracy:.3f} (chance {chance['uniform']:.3f})")
    return 0


def _stage_config(
    steps: int,
    batch_size: int,
    *,
    warmup_steps: int,
    min_lr_ratio: float,
    seed: int,
    checkpoint_every: int,
    log_every: int,
) -> Any:
    """A pretraining stage's schedule: AdamW with warm-up then cosine to `min_lr_ratio`, grad-norm clip 1.0,
    dihedral flips and rotations, label smoothing 0.1."""
    from vitmech.train import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        min_lr_ratio=min_lr_ratio,
        clip_norm=1.0,
        seed=seed,
        augment="dihedral",
        label_smoothing=0.1,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
    )


def _train_stage(
    model: Any,
    stage: int,
    args: argparse.Namespace,
    *,
    images: int,
    size: int,
    lr: float,
    config: Any,
    run: Path,
    progress: bool,
) -> tuple[Any, Any, Any]:
    """Train all of `model`'s weights (learning rate `lr`, weight decay 0.05) on `images` procedural scenes
    of `size` px (data seed: --seed + stage - 1; checkpoints in run/stage<N>), then evaluate it on --test-images
    held-out scenes (seed --seed + 1000). Returns (training result, test evaluation, test set)."""
    from vitmech.train import TierConfig, evaluate, fit, prepare_tier
    from vitmech.train.datasets import procedural_dataset

    train = procedural_dataset(images, args.seed + stage - 1, size, cache_dir=run / "data", progress=progress)
    groups = prepare_tier(model, TierConfig("full", head_lr=lr, backbone_lr=lr, weight_decay=0.05))
    result = fit(
        model,
        groups,
        train,
        config,
        checkpoint_dir=run / f"stage{stage}",
        progress=progress,
        card={"stage": stage},
        fingerprint_extra={"stage": stage},
    )
    del train
    test = procedural_dataset(args.test_images, args.seed + 1000, size, cache_dir=run / "data", progress=progress)
    evaluation: Any = evaluate(model, test)  # classification data: a ClassificationEval
    logging.info(
        "stage %d: %d steps, %.0f s, test accuracy %.3f at %d px",
        stage,
        result.steps_done,
        result.seconds,
        evaluation.accuracy,
        size,
    )
    return result, evaluation, test
