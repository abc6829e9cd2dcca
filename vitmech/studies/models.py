"""The shipped models, ViTs and CNNs: list them (name, shape, task, held-out accuracy); with --pages, write a Markdown page per
model from the card saved in its config.json (docs/models/ is built with `--pages --out docs/models --force`).

    vitmech models
    vitmech models --pages --out docs/models --force
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
    "vitmech/mini-galaxy-p32": """
The patch-32 twin of `vitmech/mini-galaxy` for the patch-size comparison (docs/explanations.md#patch-size):
the same 12-layer, 12-head, 96-wide ViT with 32 px patches (a 7 x 7 grid at 224 px, 49 patches instead of
196). Made the same way: pretrained from scratch by `vitmech pretrain` with mini-pretrained's recipe (the same
procedural scenes, seeds, steps, batch sizes and learning rates), then fully fine-tuned by `vitmech finetune`
with mini-galaxy's recipe (LP-FT, the same galaxies, split, steps and seeds), so its held-out accuracy
compares with mini-galaxy's on the same 568 test images. One difference is forced by the patch size: stage 1
of the pretraining runs at 128 px (a 4 x 4 grid), since 112 px is not a multiple of 32; the card's
`pretraining` entry holds the pretraining's own card (recipe, procedural test accuracy, times). The weights are
stored in float16 and load as float32: the 4x larger patch embedding makes 1.64 M parameters (6.6 MB in
float32); the card's test accuracy is that of the stored weights (unchanged by the rounding, whose accuracy
before it is under `metrics.test_float32_before_rounding`).
""",
    "vitmech/mini-cnn": """
The default CNN of the explanation study (docs/explanations.md#cnn): a timm `resnet10t` narrowed to stage
widths (16, 32, 64, 128) with a 16-wide stem, trained from scratch on the same synthetic galaxies, split and
dihedral augmentation as `vitmech/mini-galaxy` at 112 px input, so its held-out accuracy compares with the
ViT's on the same 568 test images (the card's `compare` entry). `vitmech explain` puts its Grad-CAM,
integrated gradients and saliency maps next to the ViT's; load it with `vitmech.train.cnn.load_cnn`.
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
    "vitmech/mini-galaxy-p32": """
```bash
vitmech pretrain --patch-size 32 --stage1-size 128 --out runs/pretrain-p32 --save-model runs/pretrain-p32/model
vitmech finetune --model runs/pretrain-p32/model --tier full --out runs/galaxy-p32 \\
    --save-model vitmech/zoo/mini-galaxy-p32
vitmech models --pages --out docs/models --force                               # this page
```
Both commands resume after an interruption (`--resume`).
""",
    "vitmech/mini-cnn": """
```bash
python -m vitmech.train.cnn --out vitmech/zoo/mini-cnn --steps 900
vitmech models --pages --out docs/models --force                               # this page
```
""",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", action="store_true", help="write a card page per shipped model into --out")
    add_run(parser, device=False)


def shipped_models() -> dict[str, tuple[Path, str]]:
    """Every shipped model: name -> (folder, "vit" or "cnn"), ViTs first, each kind sorted by name."""
    from vitmech.loading.registry import zoo_models
    from vitmech.train.cnn import zoo_cnns

    return {
        **{name: (folder, "vit") for name, folder in zoo_models().items()},
        **{name: (folder, "cnn") for name, folder in zoo_cnns().items()},
    }


def describe(meta: dict[str, Any], kind: str) -> str:
    """One line of shape and task from a shipped model's config.json."""
    card = meta.get("card", {}) or {}
    if kind == "cnn":
        arch = meta.get("arch", {}) or {}
        size = (meta.get("preprocessing") or {}).get("image_size")
        shape = f"CNN: timm {meta.get('base')}, channels {arch.get('channels')}, {size} px input"
    else:
        config = meta.get("config", {})
        shape = f"{config.get('n_layers')} layers x {config.get('n_heads')} heads, d_model {config.get('d_model')}"
        shape += f", patch {config.get('patch_size')}"
    accuracy = ((card.get("metrics") or {}).get("test") or {}).get("accuracy")
    held_out = f"; held-out accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
    return f"{shape}; task: {card.get('task', 'classification')}{held_out}"


def architecture(meta: dict[str, Any], kind: str, name: str) -> str | None:
    """The page's architecture line for a CNN (None: the ViT config line of `model_card_page`)."""
    if kind != "cnn":
        return None
    arch = meta.get("arch", {}) or {}
    size = (meta.get("preprocessing") or {}).get("image_size")
    parameters = (meta.get("card") or {}).get("parameters")
    return (
        f"timm `{meta.get('base')}`, stage channels {arch.get('channels')}, stem width {arch.get('stem_width')}, "
        f"{parameters} parameters, {meta.get('n_classes')} classes, {size} px input "
        f'(`vitmech.train.cnn.load_cnn("{name}")`)'
    )


def run(args: argparse.Namespace) -> int:
    zoo = shipped_models()
    for name, (folder, kind) in zoo.items():
        meta = json.loads((folder / "config.json").read_text())
        print(f"{name:<26} {describe(meta, kind)}")
    if not args.pages:
        return 0
    from vitmech.studies._common import start
    from vitmech.train.cards import model_card_page

    out = start(args)
    missing = [name for name in INTROS if name not in zoo]
    for name in INTROS:
        if name not in zoo:
            continue
        folder, kind = zoo[name]
        meta = json.loads((folder / "config.json").read_text())
        page = model_card_page(
            name,
            meta.get("config", {}),
            meta["card"],
            INTROS[name],
            REPRODUCE[name],
            architecture=architecture(meta, kind, name),
        )
        path = out / f"{name.split('/')[-1]}.md"
        path.write_text(page)
        print(f"wrote {path}")
    if missing:
        print(f"not installed: {', '.join(missing)}")
    return 0 if not missing else 1
