"""LoRA-fine-tune a ViT as a chirp-spectrogram regressor (the set-up of arXiv 2503.18762).

Synthetic spectrogram figures (vitmech.data.chirps: viridis image, axis labels, title, colour bar) with
three z-scored targets: start time, start frequency, end frequency. LoRA rank 8 on query and value, as in
the paper, plus a 3-output regression head. The head reads the mean final-normed patch token of each grid
row and column (`pool="rowcol"`: the figure's frequency and time profiles), not the class token: a
class-token readout loses where the chirp is, so the start time stays unlearned
(docs/training.md#why-the-start-time-needs-a-position-keeping-readout); `--pool cls` is the paper's readout.
The head starts from the closed-form ridge probe (LP-FT); the linear probe and the mean predictor are the
baselines. Reports MSE and Pearson r per target on held-out figures; the merged model is saved with a card
(the z-scoring mean/std are in it, to map predictions back to seconds and Hz).

    vitmech finetune-chirp                                     # mini-pretrained -> LoRA
    vitmech finetune-chirp --save-model vitmech/zoo/mini-chirp --out runs/chirp   # how the shipped model was made
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vitmech.studies.finetune

import argparse  # noqa: E402

from vitmech.cli.args import PRETRAINED, add_models, add_run  # noqa: E402
from vitmech.studies._common import NOT_LAUNCHED  # noqa: E402
from vitmech.studies._finetuning import add_training_arguments  # noqa: E402

LAUNCH = NOT_LAUNCHED
LAUNCH_NOTE = "training in several processes, DistributedDataParallel, is not supported"

QUICK = {"n_train": 8, "n_val": 2, "n_test": 4, "steps": 2, "batch_size": 4, "probe_steps": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [PRETRAINED])
    parser.add_argument("--n-train", type=int, default=6000, help="training figures")
    parser.add_argument("--n-val", type=int, default=500, help="validation figures")
    parser.add_argument("--n-test", type=int, default=500, help="test figures")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated figures")
    add_training_arguments(parser, tier="lora", epochs=1.0, head_lr=2e-4, backbone_lr=1e-3, weight_decay=0.01)
    parser.add_argument(
        "--lora-targets", default="q,v", help="comma-separated projections among q, k, v (the paper's: q,v)"
    )
    parser.add_argument(
        "--pool",
        choices=("rowcol", "flatten", "cls"),
        default="rowcol",
        help="the head's readout: the mean patch token of each grid row and column (rowcol: the frequency and "
        "time profiles), every patch token (flatten), both keeping where the chirp is "
        "(docs/training.md#why-the-start-time-needs-a-position-keeping-readout), or the class token (cls)",
    )
    parser.add_argument(
        "--probe-ridge",
        type=float,
        default=0.05,
        help="fit the linear probe in closed form, ridge with this alpha (0: AdamW --probe-steps instead)",
    )
    add_run(parser, resumable=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitmech.cli.outputs import study_report
    from vitmech.data import TargetScaler
    from vitmech.studies._finetuning import fine_tune_and_save, start_fine_tuning
    from vitmech.train import ArrayDataset
    from vitmech.train.datasets import chirp_dataset
    from vitmech.train.heads import with_new_head

    if args.n_train < 2:
        args.parser.error("--n-train must be at least 2 (targets are z-scored with the training split)")
    if args.probe_ridge < 0:
        args.parser.error("--probe-ridge must be >= 0 (0: no ridge)")
    args.probe_ridge = args.probe_ridge or None
    out, loaded, started = start_fine_tuning(args, "finetune-chirp")
    progress = not args.no_progress
    model, weights_note, model_name = loaded[0].model, loaded[0].note, loaded[0].name

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
    lora_targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    if args.pool != model.cfg.pool:
        model = with_new_head(model, train.n_outputs, train.names, task="regression", pool=args.pool)
    base_card = {
        "source_model": model_name,
        "source_weights": weights_note,
        "readout": args.pool,
        "data": data_card,
        "targets": targets,
    }
    study, steps, model_dir, card = fine_tune_and_save(
        args,
        out,
        model,
        (train, val, test),
        base_card,
        augment=None,
        lora_targets=lora_targets,
        started=started,
        progress=progress,
        task="regression",
    )

    report = study_report(out, f"{args.tier} fine-tuning of {model_name} as a chirp regressor", loaded)
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
