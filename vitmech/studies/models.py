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
The set-up of arXiv 2503.18762 on the embedded architecture, with a position-keeping readout:
`vitmech/mini-pretrained` fine-tuned with LoRA (rank 8 on query and value, merged) plus a 3-output regression
head on chirp-spectrogram figures (vitmech.data.chirps: viridis image with title, axis labels and colour
bar). The head reads the mean final-normed patch token of each of the 14 grid rows and 14 grid columns
(`pool="rowcol"`: the figure's frequency and time profiles, 2,688 features), not the class token. Outputs
are z-scores of start time (s), start frequency (Hz) and end frequency (Hz); the card's `targets` holds the
mean and std that map them back. The 12 x 12 head-ablation heatmap experiment runs on it offline.

**It learns all three targets:** held-out Pearson r 0.84 / 0.81 / 0.83 (test, 500 figures; 95% intervals
0.81-0.86, 0.78-0.84, 0.80-0.86) and 0.83 / 0.83 / 0.83 on the 500 validation figures. Almost all of it comes
from the readout: the closed-form ridge probe on the frozen backbone's row and column means already reaches
the same r (0.836 / 0.810 / 0.833); one epoch of LoRA from that head (LP-FT) changed it by less than 0.001.
The earlier class-token regressor (`vitmech/mini-chirp-full`, and the LoRA model this one replaces) did not
learn the start time at all (r about 0): the class token carries no position
(docs/training.md#why-the-start-time-needs-a-position-keeping-readout). Its class token still exists and
other tokens still attend to it, but the head does not read it: maps of the class token's attention row
describe where that token looks, not what the head reads.
""",
    "vitmech/mini-chirp-full": """
The earlier class-token chirp regressor, trained with the full tier: `vitmech/mini-pretrained` with every
weight trained (backbone 3e-4, head 1e-3, LP-FT) and the head on the class token, 8 epochs of 4,000 chirps,
the same 3 z-scored targets. It predicts the frequencies partly (Pearson r 0.54 / 0.62) and the start time
not at all (r about 0), because its class-token readout has lost where the chirp is
(docs/training.md#why-the-start-time-needs-a-position-keeping-readout). It is kept as the class-token
comparison (the alignment study uses it); `vitmech/mini-chirp` is the regressor that learns all three targets.
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
vitmech finetune-chirp --save-model vitmech/zoo/mini-chirp --out runs/chirp   # resumable: rerun the same command
```
The defaults are the shipped recipe: 6,000 / 500 / 500 figures (stream indices 0.., data seed 0), the rowcol
readout, a ridge probe (alpha 0.05) as the head's start, then 188 steps of 32 (one epoch) of LoRA q, v rank 8
at 1e-3 (head 2e-4). Writes `vitmech/zoo/mini-chirp/` and the report in `runs/chirp/` (20 minutes on 2 shared
CPU cores, one torch thread).
""",
    "vitmech/mini-chirp-full": """
```bash
vitmech finetune-chirp --model vitmech/mini-pretrained --tier full --epochs 8 --pool cls --n-train 4000 \\
    --probe-ridge 0 --backbone-lr 3e-4 --head-lr 1e-3 --weight-decay 0.05 --out runs/chirp_full
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
