"""The subcommand registry: name -> (study module, one-line summary, numbered script).

To add a study, write `vitmech/studies/<module>.py` with `add_arguments(parser)` and `run(args) -> int`
(optionally `QUICK`, a dict of argument defaults for `--quick`), then add one line here. The module is
imported only when its subcommand runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    script: str = ""  # the numbered script in experiments/ that calls it, if any


COMMANDS: dict[str, Command] = {
    "compare": Command(
        "vitmech.studies.compare",
        "before/after fine-tuning: CLS entropy, top-k, rollout, locality, CKA (paired tests)",
        "06_before_after_comparison.py",
    ),
    "ablate": Command(
        "vitmech.studies.ablate",
        "ablate every head: the layer x head heatmap of the metric change, estimates, pruning",
        "07_head_ablation_heatmap.py",
    ),
    "rollout": Command(
        "vitmech.studies.rollout", "attention rollout family vs the last layer", "05_attention_rollout.py"
    ),
    "cls": Command(
        "vitmech.studies.cls_attention", "CLS attention entropy and top-k by layer and head", "04_cls_attention.py"
    ),
    "locality": Command(
        "vitmech.studies.locality", "mean attention distance per layer and head", "03_spatial_attention.py"
    ),
    "circuits": Command(
        "vitmech.studies.circuits",
        "positional QK, composition, OV copying, direct logit attribution, logit lens",
        "08_circuits_report.py",
    ),
    "attention-check": Command(
        "vitmech.studies.attention_check",
        "recompute one layer's attention by hand and check it against the cache",
        "01_manual_attention.py",
    ),
    "finetune": Command(
        "vitmech.studies.finetune",
        "fine-tune on galaxies, Galaxy Zoo 2 or your own labelled images, with a linear probe",
        "02_fine_tune_galaxy.py",
    ),
    "finetune-chirp": Command(
        "vitmech.studies.finetune_chirp", "LoRA chirp-spectrogram regressor (arXiv 2503.18762)", "09_fine_tune_chirp.py"
    ),
    "patch": Command(
        "vitmech.studies.patching",
        "activation and path patching, EAP circuit on counterfactual galaxy pairs",
        "15_patching_circuits.py",
    ),
    "pretrain": Command(
        "vitmech.studies.pretrain", "pretrain the mini ViT on procedural scenes (how mini-pretrained was made)"
    ),
    "data": Command(
        "vitmech.studies.data",
        "write the synthetic data sets (galaxies, chirps) and example figures",
        "00_make_datasets.py",
    ),
    "align": Command(
        "vitmech.studies.align",
        "does fine-tuning move attention onto annotated features? IoU before/after by tier (paired tests)",
        "11_attention_alignment.py",
    ),
    "explain": Command(
        "vitmech.studies.explain",
        "explanation maps side by side: attention, rollout, Grad-CAM, LRP (Chefer et al. 2021), IG, saliency; ViTs and CNNs",
        "12_explanations.py",
    ),
    "misclassified": Command(
        "vitmech.studies.misclassified",
        "confusion matrix, misclassified images by confidence, maps for the true and predicted class",
        "13_misclassified.py",
    ),
    "patch-size": Command(
        "vitmech.studies.patch_size",
        "patch 16 vs patch 32: explanation maps on one grid, alignment and attention metrics side by side",
        "14_patch_size.py",
    ),
    "models": Command(
        "vitmech.studies.models", "list the shipped models; write their card pages", "10_model_card_pages.py"
    ),
}
