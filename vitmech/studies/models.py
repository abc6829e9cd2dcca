"""The shipped models: list them (name, size, task, card metrics); with --pages, write a Markdown page per
model from the card saved in its config.json (docs/models/ is built with `--pages --out docs/models --force`).

    vitmech models
    vitmech models --pages --out docs/models --force
"""

from __future__ import annotations

import argparse
import json

from vitmech.cli.args import add_run

QUICK: dict[str, object] = {}

INTROS = {
    "vitmech/mini-pretrained": """
The "before" model of the embedded pair: a 12-layer, 12-head ViT on a 14 x 14 patch grid (224 px, patch 16),
like ViT-B/16 but 96 wide, pretrained from scratch on procedural scenes (one large textured shape among small
distractors; 32 shape/fill classes; no galaxy or natural images) in two stages: 112 px (7 x 7 patches), then
224 px after resampling the position embeddings. Its attention has been trained (it is not a random init),
so before/after comparisons on it mean something; its classifier predicts the 32 procedural classes.
""",
    "vitmech/mini-galaxy": """
The "after" model of the embedded pair: `vitmech/mini-pretrained` fully fine-tuned (all weights; backbone and
head at different learning rates) on synthetic galaxies (vitmech.data.galaxies, six gz2 summary classes) by
`vitmech finetune`, with the Galaxy Zoo fine-tuning study's split sizes. The card compares its held-out accuracy with
the linear probe of the same pretrained backbone (trained on the same images) and with chance.
""",
    "vitmech/mini-chirp": """
The set-up of arXiv 2503.18762 on the embedded architecture: `vitmech/mini-pretrained` fine-tuned with LoRA (rank 8 on query
and value, merged) plus a 3-output regression head on chirp-spectrogram figures (vitmech.data.chirps: viridis
image with title, axis labels and colour bar). Outputs are z-scores of start time (s), start frequency (Hz) and
end frequency (Hz); the card's `targets` holds the mean and std that map them back. The 12 x 12 head-ablation
heatmap experiment runs on it offline.

**A weak regressor.** It beats the mean predictor and its linear probe, but only on the frequencies (Pearson r
0.32 and 0.48), and it has not learned the start time (r about 0). The backbone's patch tokens do encode
where the chirp is (a ridge fit on them reaches r about 0.72 for each target), but its class token pools over the
whole figure and carries no position, so the head gets no start-time signal to start from
(docs/training.md#why-the-start-time-needs-a-position-keeping-readout). Two 100-step trials on the same data learned nothing either: a full fine-tune (backbone 3e-4) and LoRA on
q, k, v at rank 16 (lr 1e-2). Both ended at test MSE 0.97-0.98. The heatmap experiment therefore shows the
pipeline on a trained model, not the paper's findings. An 8-epoch full fine-tune does better on the
frequencies (`vitmech/mini-chirp-full`: MSE 0.76, r 0.54 / 0.62), but it has not learned the start time either.
""",
    "vitmech/mini-chirp-full": """
The same chirp regressor trained with the full tier instead of LoRA: `vitmech/mini-pretrained` with every
weight trained (backbone 3e-4, head 1e-3, LP-FT), 8 epochs of the same 4,000 chirps, the same 3 z-scored
targets and test split as `vitmech/mini-chirp`. It is not the paper's set-up (that is `mini-chirp`, LoRA on
query and value); it is here because full fine-tuning adapts this small backbone further than rank-8 LoRA
could in the time we had: test MSE 0.76 against LoRA's 0.87, and Pearson r 0.54 / 0.62 on the start / end
frequency. The start time is still not learned (r about 0). Run
`vitmech ablate --model vitmech/mini-chirp-full` for the heatmap of the stronger regressor.
""",
}

REPRODUCE = {
    "vitmech/mini-pretrained": """
```bash
vitmech pretrain --out runs/pretrain --save-model vitmech/zoo/mini-pretrained   # resumable (--resume)
vitmech models --pages --out docs/models --force                               # this page
```
Writes `vitmech/zoo/mini-pretrained/` and the report in `runs/pretrain/`. Bit-identical on the same machine and
thread count; other CPUs give slightly different floats.
""",
    "vitmech/mini-galaxy": """
```bash
vitmech finetune --model vitmech/mini-pretrained --tier full --out runs/galaxy --save-model vitmech/zoo/mini-galaxy
```
Writes `vitmech/zoo/mini-galaxy/` and the report in `runs/galaxy/` (summary table, confusion matrices, history).
The same command fine-tunes ViT-B/16 on Galaxy Zoo 2 where a hub is reachable:
`--model google/vit-base-patch16-224 --images gz2 --tier lora` (or `full`, `linear_probe`).
""",
    "vitmech/mini-chirp": """
```bash
vitmech finetune-chirp --model vitmech/mini-pretrained --tier lora --out runs/chirp --save-model vitmech/zoo/mini-chirp
```
Writes `vitmech/zoo/mini-chirp/` and the report in `runs/chirp/`.
""",
    "vitmech/mini-chirp-full": """
```bash
vitmech finetune-chirp --model vitmech/mini-pretrained --tier full --epochs 8 \\
    --backbone-lr 3e-4 --head-lr 1e-3 --weight-decay 0.05 --out runs/chirp_full
```
The shipped copy was trained into `runs/chirp_full/model`, then saved into `vitmech/zoo/mini-chirp-full/` by
`save_pretrained` with its card's `name` set to match.
""",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", action="store_true", help="write a card page per shipped model into --out")
    add_run(parser, device=False)


def run(args: argparse.Namespace) -> int:
    from vitmech.loading.registry import zoo_models

    zoo = zoo_models()
    for name, folder in zoo.items():
        meta = json.loads((folder / "config.json").read_text())
        config, card = meta.get("config", {}), meta.get("card", {}) or {}
        shape = f"{config.get('n_layers')} layers x {config.get('n_heads')} heads, d_model {config.get('d_model')}"
        print(f"{name:<26} {shape}; task: {card.get('task', 'classification')}")
    if not args.pages:
        return 0
    from vitmech.studies._common import start
    from vitmech.train.cards import model_card_page

    out = start(args)
    missing = [name for name in INTROS if name not in zoo]
    for name in INTROS:
        if name not in zoo:
            continue
        meta = json.loads((zoo[name] / "config.json").read_text())
        page = model_card_page(name, meta["config"], meta["card"], INTROS[name], REPRODUCE[name])
        path = out / f"{name.split('/')[-1]}.md"
        path.write_text(page)
        print(f"wrote {path}")
    if missing:
        print(f"not installed: {', '.join(missing)}")
    return 0 if not missing else 1
