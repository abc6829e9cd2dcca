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
from typing import Any  # noqa: E402

from vitmech.cli.args import PRETRAINED, SYNTHETIC_GALAXIES, add_images, add_labels, add_models, add_run  # noqa: E402
from vitmech.studies._common import NOT_LAUNCHED  # noqa: E402
from vitmech.studies._finetuning import add_training_arguments  # noqa: E402

LAUNCH = NOT_LAUNCHED
LAUNCH_NOTE = "training in several processes, DistributedDataParallel, is not supported"

GZ2 = "gz2"
QUICK = {"n_train": 12, "n_val": 4, "n_test": 8, "steps": 2, "batch_size": 4, "probe_steps": 2, "n_images": 24}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [PRETRAINED])
    add_images(parser, n_images=None, default=SYNTHETIC_GALAXIES)
    add_labels(parser)
    parser.add_argument("--gz2-source", default="mwalmsley/gz2", help="hub id or local copy (with --images gz2)")
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
    add_training_arguments(parser, tier="full", epochs=3.0, head_lr=5e-4, backbone_lr=3e-4, weight_decay=0.05)
    add_run(parser, resumable=True)


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

    from vitmech.cli.outputs import study_report
    from vitmech.studies._finetuning import fine_tune_and_save, start_fine_tuning
    from vitmech.train.datasets import galaxy_dataset, gz2_datasets

    out, loaded, started = start_fine_tuning(args, "finetune")
    progress = not args.no_progress
    model, weights_note, model_name = loaded[0].model, loaded[0].note, loaded[0].name

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

    base_card = {"source_model": model_name, "source_weights": weights_note, "data": data_card}
    study, steps, model_dir, card = fine_tune_and_save(
        args, out, model, (train, val, test), base_card, augment="dihedral", started=started, progress=progress
    )

    report = study_report(out, f"Fine-tuning {model_name} ({args.images}, {args.tier} tier)", loaded)
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
