"""Does fine-tuning move attention onto the annotated features? The five-phase alignment study.

    from vitmech.studies.alignment import AlignmentStudyConfig, run_alignment_study
    study = run_alignment_study(AlignmentStudyConfig(), out_dir="reports/11_attention_alignment")
    study.comparisons        # one row per model x tier x map: IoU before/after, t, p, d_z, CI, Holm p

Phases (docs/alignment.md#the-study): (1) IoU of every model's attention with the annotated regions of
held-out images (synthetic galaxies with bar / arms / bulge masks, or chirp spectrogram figures with chirp /
text / axis / colour-bar boxes: `data="chirps"`); (2) fine-tune each model by every tier (linear probe, LoRA, full, attention-supervised)
on a separate training stream; a finished run is saved and reused, an interrupted one resumes from its
checkpoint; (3) IoU after, and each fine-tuned model's held-out accuracy; (4) change in IoU per image with
a paired t-test, Cohen's d_z, a bootstrap CI, and Holm's correction over every model x tier x map
comparison; (5) breakdowns by feature, layer and head (descriptive).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vitmech.analysis.alignment import (
    CHIRP_REGIONS,
    GALAXY_REGIONS,
    UNION,
    AlignmentResult,
    RegionMasks,
    alignment_scores,
    cls_attention_grid,
    head_mean_grid,
    rollout_grid,
)
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.rollout import RolloutSettings, rollout_maps
from vitmech.analysis.stats import holm, paired_comparison
from vitmech.errors import InputError, ModelMismatchError
from vitmech.model.hooked_vit import HookedViT
from vitmech.train.attention_supervision import (
    SUPERVISED_TIER,
    AttentionSupervision,
    fine_tune_attention_supervised,
)
from vitmech.train.data import ArrayDataset, to_model_input
from vitmech.train.evaluate import ClassificationEval, evaluate
from vitmech.train.finetune import fine_tune
from vitmech.train.loop import TrainConfig
from vitmech.train.lora import LoRAConfig
from vitmech.train.tiers import TierConfig

logger = logging.getLogger(__name__)

SHIPPED_MODELS: tuple[str, ...] = (
    "vitmech/mini-pretrained",
    "vitmech/mini-galaxy",
    "vitmech/mini-chirp",
    "vitmech/mini-chirp-full",
)
STUDY_TIERS: tuple[str, ...] = ("linear_probe", "lora", "full", SUPERVISED_TIER)
PRIMARY_MAPS: tuple[str, ...] = ("last_layer_mean", "rollout")
"""The maps whose change is tested: the last layer's head-mean class-token map, and attention rollout."""
STUDY_DATA: tuple[str, ...] = ("galaxies", "chirps")
"""Annotated data the study generates: synthetic galaxies (6-class morphology; feature masks) or chirp
spectrogram figures (regression of start time, start and end frequency; boxes of the chirp track and of the
figure's text, axes and colour bar)."""
DEFAULT_REGIONS: dict[str, tuple[str, ...]] = {"galaxies": GALAXY_REGIONS, "chirps": tuple(CHIRP_REGIONS)}
DEFAULT_TARGET: dict[str, str] = {"galaxies": UNION, "chirps": "chirp"}
"""The region whose IoU change is tested: the union of the galaxy features; the chirp track (the figure's
text, axes and colour bar are distractors, reported per region)."""
TRAIN_GALAXY_SEED = 0
EVAL_GALAXY_SEED = 12345
TRAIN_SEED = TRAIN_GALAXY_SEED
EVAL_SEED = EVAL_GALAXY_SEED


@dataclass(frozen=True)
class AlignmentStudyConfig:
    """What the study runs.

    Attributes:
        models: shipped names or saved-model folders.
        tiers: any of STUDY_TIERS.
        data: "galaxies" or "chirps" (STUDY_DATA).
        regions: annotated regions scored (default: bar, arms, bulge for galaxies; chirp, text, axis,
            colorbar for chirps).
        target: the region whose IoU change is tested and supervised (default: "union" of the galaxy
            features; "chirp" for chirps).
        n_train / n_eval: generated images for fine-tuning (seed 0 stream) and for measuring (seed 12345).
        steps, batch_size: every tier's training budget (the same for all).
        head_lr, backbone_lr: learning rates (LoRA adapters use backbone_lr too).
        supervision: the attention-supervised tier's loss (lambda, map source, layers, heads).
        q: IoU's binarised fraction (None: each region's own area).
        n_resamples: bootstrap resamples.
    """

    models: tuple[str, ...] = SHIPPED_MODELS
    tiers: tuple[str, ...] = STUDY_TIERS
    data: str = "galaxies"
    regions: tuple[str, ...] = ()
    target: str = ""
    n_train: int = 320
    n_eval: int = 64
    steps: int = 40
    batch_size: int = 16
    head_lr: float = 1e-3
    backbone_lr: float = 3e-4
    lora_rank: int = 8
    supervision: AttentionSupervision = field(default_factory=AttentionSupervision)
    q: float | None = None
    n_resamples: int = 10_000
    seed: int = 0
    batch_size_eval: int = 16

    def __post_init__(self) -> None:
        if self.data not in STUDY_DATA:
            raise InputError(f"unknown data {self.data!r}; choose from {list(STUDY_DATA)}")
        if not self.regions:
            object.__setattr__(self, "regions", DEFAULT_REGIONS[self.data])
        if not self.target:
            object.__setattr__(self, "target", DEFAULT_TARGET[self.data])
        known = set(GALAXY_REGIONS if self.data == "galaxies" else CHIRP_REGIONS)
        if self.data == "galaxies":
            known |= {"disk", "ring", "clumps", "dust_lane"}
        bad = [r for r in self.regions if r not in known]
        if bad:
            raise InputError(f"unknown {self.data} regions {bad}; choose from {sorted(known)}")
        scored = (*self.regions, UNION) if self.data == "galaxies" else self.regions  # chirps: no union
        if self.target not in scored:
            raise InputError(f"target {self.target!r} must be one of the regions {list(scored)}")
        if self.supervision.region == UNION and UNION not in scored:  # the default follows the target
            object.__setattr__(self, "supervision", dataclasses.replace(self.supervision, region=self.target))
        if self.supervision.region not in scored:
            raise InputError(f"the supervised region {self.supervision.region!r} must be one of {list(scored)}")
        unknown = [t for t in self.tiers if t not in STUDY_TIERS]
        if unknown:
            raise InputError(f"unknown tiers {unknown}; choose from {list(STUDY_TIERS)}")
        if not self.models:
            raise InputError("give at least one model")
        if self.n_eval < 2:
            raise InputError(f"n_eval must be >= 2 for paired tests, got {self.n_eval}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["supervision"] = self.supervision.to_dict()
        return d

    def run_key(self) -> dict[str, Any]:
        """What a cached fine-tuning run must match to be reused."""
        keys = ("n_train", "steps", "batch_size", "head_lr", "backbone_lr", "lora_rank", "seed")
        key = {**{k: getattr(self, k) for k in keys}, "supervision": self.supervision.to_dict()}
        if self.data != "galaxies":  # galaxy runs keep the key they had before the data became a choice
            key["data"] = self.data
        return key


@dataclass
class ModelState:
    """One model (before, or after one tier) measured on the evaluation images."""

    model: str
    tier: str
    scores: dict[str, AlignmentResult]
    accuracy: float | None = None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class AlignmentStudy:
    """Every number of the study.

    Attributes:
        comparisons: one row per model x tier x primary map: IoU before/after (means), change, t, p, d_z,
            CI, Holm-adjusted p over all rows.
        by_region, by_layer, by_head: descriptive breakdowns (means over images).
        accuracy: held-out accuracy of each fine-tuned model.
        states: the measurements themselves.
    """

    config: AlignmentStudyConfig
    comparisons: pd.DataFrame
    by_region: pd.DataFrame
    by_layer: pd.DataFrame
    by_head: pd.DataFrame
    accuracy: pd.DataFrame
    states: list[ModelState]
    eval_images: np.ndarray
    eval_regions: RegionMasks
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- data


def chirp_data(
    n: int, seed: int, regions: Sequence[str], size: int, scaler: Any = None
) -> tuple[ArrayDataset, RegionMasks, Any]:
    """`n` chirp spectrogram figures of stream `seed` (every figure element drawn) as a regression set with
    z-scored targets (start time, start and end frequency; `scaler` a `vitmech.data.TargetScaler`, fitted on
    these when None), their region masks (no union: the track and the distractors are scored apart), and
    the scaler."""
    from vitmech.data.chirps import TARGETS, TargetScaler, generate_chirps

    samples = generate_chirps(n, seed, size=size)
    raw = np.asarray([s.targets for s in samples], dtype=np.float64)
    scaler = scaler or TargetScaler.fit(raw)
    data = ArrayDataset(
        torch.from_numpy(np.stack([s.image for s in samples])),
        torch.from_numpy(scaler.transform(raw).astype(np.float32)),
        list(TARGETS),
        "regression",
    )
    masks = RegionMasks.from_chirps(samples, {name: CHIRP_REGIONS[name] for name in regions})
    return data, masks, scaler


def study_data(config: AlignmentStudyConfig, size: int) -> tuple[ArrayDataset, RegionMasks, ArrayDataset, RegionMasks]:
    """Training set and held-out set with their masks for `config.data` (galaxies: + union); chirp targets are z-scored
    with the training set's mean and standard deviation."""
    if config.data == "chirps":
        train, train_regions, scaler = chirp_data(config.n_train, TRAIN_SEED, config.regions, size)
        held_out, held_out_regions, _ = chirp_data(config.n_eval, EVAL_SEED, config.regions, size, scaler)
        return train, train_regions, held_out, held_out_regions
    train, train_regions = galaxy_data(config.n_train, TRAIN_SEED, config.regions, size)
    held_out, held_out_regions = galaxy_data(config.n_eval, EVAL_SEED, config.regions, size)
    return train, train_regions, held_out, held_out_regions


def galaxy_data(n: int, seed: int, regions: Sequence[str], size: int) -> tuple[ArrayDataset, RegionMasks]:
    """`n` synthetic galaxies of stream `seed` as a classification set, with their feature masks (+ union)."""
    from vitmech.data import generate_galaxies

    batch = generate_galaxies(n, seed=seed, size=size)
    data = ArrayDataset(
        torch.from_numpy(batch.images), torch.from_numpy(batch.labels), list(batch.classes), "classification"
    )
    return data, RegionMasks.from_galaxies(batch, regions).with_union()


# ----------------------------------------------------------------------------------------- measuring


def attention_maps(model: HookedViT, images: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Readout-query maps (the class token's row, or the mean patch-query row for a model that reads its patch
    tokens) of every head [B, L, H, g, g], their head means [B, L, g, g], the last layer's head mean [B, g, g]
    and the rollout map [B, g, g] (alpha 0.5, head mean; the same query's row)."""
    with torch.no_grad():
        rows = collect_patterns(model, images, rows="cls", batch_size=batch_size, progress=False)
        heads = cls_attention_grid(model, rows, rows="cls")
        variants = {"rollout": RolloutSettings()}
        rolled = rollout_maps(model, images, variants, batch_size=batch_size, progress=False)["rollout"]  # readout row
    layers = head_mean_grid(heads)
    return {"heads": heads, "layers": layers, "last_layer_mean": layers[:, -1], "rollout": rollout_grid(model, rolled)}


def measure(
    model: HookedViT, name: str, tier: str, images: torch.Tensor, regions: RegionMasks, q: float | None, batch_size: int
) -> ModelState:
    maps = attention_maps(model, images, batch_size)
    scores = {source: alignment_scores(m, regions, q=q, source=source) for source, m in maps.items()}
    keep = {k: maps[k] for k in ("last_layer_mean", "rollout")}
    return ModelState(name, tier, scores, maps=keep)


def centre_prior_iou(model: HookedViT, regions: RegionMasks, q: float | None, target: str = UNION) -> float:
    """Mean IoU with the `target` region of a fixed isotropic Gaussian map centred on the patch grid (sigma = g / 4):
    what "looking at the middle" scores, a stronger reference than random ranking for centred objects."""
    from vitmech.tokens import token_layout

    gh, gw = token_layout(model).grid
    y = torch.arange(gh, dtype=torch.float64) + 0.5 - gh / 2  # cell centres, origin at the grid centre
    x = torch.arange(gw, dtype=torch.float64) + 0.5 - gw / 2
    gauss = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * (max(gh, gw) / 4) ** 2))
    maps = gauss.expand(len(regions), gh, gw).contiguous()
    return float(np.nanmean(alignment_scores(maps, regions, q=q).per_image("iou", target).numpy()))


# ----------------------------------------------------------------------------------------- fine-tuning


def _slug(name: str) -> str:
    return name.strip("/").replace("/", "__").replace(" ", "_")


def fine_tuned_model(
    name: str,
    model: HookedViT,
    tier: str,
    train: ArrayDataset,
    train_regions: RegionMasks,
    config: AlignmentStudyConfig,
    runs_dir: Path,
    progress: bool,
) -> tuple[HookedViT, bool]:
    """The model fine-tuned by `tier`, trained now or loaded from a finished run (True when reused)."""
    key = {"model": name, "tier": tier, **config.run_key()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = runs_dir / _slug(name) / f"{tier}-{digest}"  # another budget or recipe is another folder
    final = run_dir / "final"
    done = run_dir / "done.json"
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        return HookedViT.from_pretrained(str(final)).eval(), True
    train_config = TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        warmup_steps=max(1, config.steps // 10),
        seed=config.seed,
        checkpoint_every=max(1, config.steps // 4),
        keep_checkpoints=1,
    )
    card = {"source_model": name, "study": "attention alignment", "tier_name": tier}
    if tier == SUPERVISED_TIER:
        result = fine_tune_attention_supervised(
            model,
            train,
            train_regions,
            config.supervision,
            train_config,
            tier=TierConfig("full", head_lr=config.head_lr, backbone_lr=config.backbone_lr),
            checkpoint_dir=run_dir / "checkpoints",
            card=card,
            progress=progress,
        )
    else:
        tier_config = TierConfig(
            tier,  # type: ignore[arg-type]
            head_lr=config.head_lr,
            backbone_lr=config.backbone_lr,
            lora=LoRAConfig(rank=config.lora_rank),
        )
        result = fine_tune(
            model,
            train,
            tier_config,
            train_config,
            checkpoint_dir=run_dir / "checkpoints",
            card=card,
            progress=progress,
        )
    result.model.save_pretrained(final, card=result.card(**card))
    done.write_text(json.dumps({"key": key, "seconds": result.train_result.seconds}, indent=1))
    return result.model.eval(), False


# ----------------------------------------------------------------------------------------- statistics


def _primary_rows(before: ModelState, after: ModelState, config: AlignmentStudyConfig) -> list[dict[str, Any]]:
    rows = []
    for source in PRIMARY_MAPS:
        x = before.scores[source].per_image("iou", config.target).numpy()
        y = after.scores[source].per_image("iou", config.target).numpy()
        keep = ~np.isnan(x) & ~np.isnan(y)
        test = paired_comparison(x[keep], y[keep], n_resamples=config.n_resamples, seed=config.seed)
        target = before.scores[source].region(config.target)
        chance = float(np.nanmean(before.scores[source].iou_chance[:, target].numpy()))
        rows.append(
            {
                "model": before.model,
                "tier": after.tier,
                "map": source,
                "region": config.target,
                "n_images": test.n,
                "iou_before": test.mean_before,
                "iou_after": test.mean_after,
                "iou_chance": chance,
                "delta_iou": test.mean_change,
                "ci_low": test.ci_low,
                "ci_high": test.ci_high,
                "t": test.t,
                "p": test.p,
                "cohens_dz": test.cohens_dz,
                "trained_on_the_measure": after.tier == SUPERVISED_TIER,
            }
        )
    return rows


def _region_rows(before: ModelState, after: ModelState) -> list[dict[str, Any]]:
    rows = []
    b, a = before.scores["last_layer_mean"], after.scores["last_layer_mean"]
    for r, region in enumerate(b.region_names):
        for metric in ("iou", "energy", "pointing"):
            x, y = b.metric(metric)[:, r].numpy(), a.metric(metric)[:, r].numpy()
            keep = ~np.isnan(x) & ~np.isnan(y)
            rows.append(
                {
                    "model": before.model,
                    "tier": after.tier,
                    "region": region,
                    "metric": metric,
                    "n_images": int(keep.sum()),
                    "before": float(x[keep].mean()) if keep.any() else math.nan,
                    "after": float(y[keep].mean()) if keep.any() else math.nan,
                    "change": float((y - x)[keep].mean()) if keep.any() else math.nan,
                    "chance": float(
                        np.nanmean(b.area_share[:, r].numpy())
                        if metric != "iou"
                        else np.nanmean(b.iou_chance[:, r].numpy())
                    ),
                }
            )
    return rows


def _layer_rows(state: ModelState, target: str) -> list[dict[str, Any]]:
    scores = state.scores["layers"]
    iou = scores.iou[..., scores.region(target)].numpy()  # [B, L]
    return [
        {"model": state.model, "tier": state.tier, "layer": layer, "iou": float(np.nanmean(iou[:, layer]))}
        for layer in range(iou.shape[1])
    ]


def _head_rows(before: ModelState, after: ModelState, target: str) -> list[dict[str, Any]]:
    r = before.scores["heads"].region(target)
    x = before.scores["heads"].iou[..., r].numpy()  # [B, L, H]
    y = after.scores["heads"].iou[..., r].numpy()
    change = np.nanmean(y - x, axis=0)
    return [
        {
            "model": before.model,
            "tier": after.tier,
            "layer": layer,
            "head": head,
            "iou_before": float(np.nanmean(x[:, layer, head])),
            "iou_after": float(np.nanmean(y[:, layer, head])),
            "delta_iou": float(change[layer, head]),
        }
        for layer in range(x.shape[1])
        for head in range(x.shape[2])
    ]


# ----------------------------------------------------------------------------------------- the study


def run_alignment_study(
    config: AlignmentStudyConfig,
    runs_dir: str | Path,
    *,
    models: Sequence[tuple[str, HookedViT]] | None = None,
    progress: bool = True,
) -> AlignmentStudy:
    """Run the five phases; fine-tuned models are cached under `runs_dir` (a finished run is reused).
    `models`: (name, model) pairs already loaded (default: `config.models` by `HookedViT.from_pretrained`)."""
    started = time.perf_counter()
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    if models is None:
        loaded = [(name, HookedViT.from_pretrained(name)) for name in config.models]
    else:
        loaded = list(models)
    loaded = [(name, model.eval()) for name, model in loaded]
    size = loaded[0][1].cfg.image_size
    for name, model in loaded:
        if model.cfg.image_size != size:
            raise ModelMismatchError(f"{name} takes {model.cfg.image_size} px images, {config.models[0]} {size} px")
    train, train_regions, eval_data, eval_regions = study_data(config, size)

    steps = len(loaded) * (1 + len(config.tiers))
    bar = tqdm(total=steps, desc="alignment study", unit="model", disable=not progress)
    states: list[ModelState] = []
    comparisons, regions_rows, layer_rows, head_rows, accuracy_rows = [], [], [], [], []
    notes: list[str] = []
    for name, model in loaded:
        images = to_model_input(eval_data.images, model.preprocessing)
        bar.set_postfix_str(f"{name} baseline")
        before = measure(model, name, "before", images, eval_regions, config.q, config.batch_size_eval)
        states.append(before)
        layer_rows += _layer_rows(before, config.target)
        bar.update(1)
        for tier in config.tiers:
            bar.set_postfix_str(f"{name} {tier}")
            tuned, reused = fine_tuned_model(name, model, tier, train, train_regions, config, runs, progress=False)
            if reused:
                notes.append(f"{name} / {tier}: reused the finished run in {runs}")
            after = measure(tuned, name, tier, images, eval_regions, config.q, config.batch_size_eval)
            evaluation = evaluate(tuned, eval_data)
            if isinstance(evaluation, ClassificationEval):
                after.accuracy = evaluation.accuracy
            else:  # regression: the mean over targets of Pearson's r
                after.accuracy = float(np.nanmean(evaluation.pearson_r))
            states.append(after)
            comparisons += _primary_rows(before, after, config)
            regions_rows += _region_rows(before, after)
            layer_rows += _layer_rows(after, config.target)
            head_rows += _head_rows(before, after, config.target)
            accuracy_rows.append(
                {
                    "model": name,
                    "tier": tier,
                    "score": "accuracy" if eval_data.task == "classification" else "mean Pearson r",
                    "accuracy": after.accuracy,
                    "n_images": len(eval_data),
                    "reused_run": reused,
                }
            )
            bar.update(1)
    bar.close()
    table = pd.DataFrame(comparisons)
    table["p_holm"] = holm(table["p"].tolist())
    table["holm_significant"] = table["p_holm"] < 0.05
    centre = centre_prior_iou(loaded[0][1], eval_regions, config.q, config.target)
    notes.append(
        f"reference: a fixed centred Gaussian map (sigma a quarter of the grid, no model) has IoU {centre:.3f} with "
        f"the {config.target} region on these images; random ranking (chance) is in the tables"
    )
    if eval_data.task == "classification":
        counts = np.bincount(eval_data.targets.numpy(), minlength=len(eval_data.names))
        notes.append(f"held-out accuracy of always guessing the commonest class: {counts.max() / counts.sum():.3f}")
    else:
        notes.append(
            "score of the chirp models: Pearson r between predicted and true targets, averaged over start time, "
            "start frequency and end frequency (a constant prediction has none: r is undefined, read it as 0)"
        )
    return AlignmentStudy(
        config=config,
        comparisons=table,
        by_region=pd.DataFrame(regions_rows),
        by_layer=pd.DataFrame(layer_rows),
        by_head=pd.DataFrame(head_rows),
        accuracy=pd.DataFrame(accuracy_rows),
        states=states,
        eval_images=eval_data.images.numpy(),
        eval_regions=eval_regions,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def describe(row: pd.Series) -> str:
    """One honest sentence per comparison: a direction only when Holm-significant."""
    what = f"{row['model']} / {row['tier']} / {row['map']}"
    numbers = (
        f"IoU {row['iou_before']:.3f} -> {row['iou_after']:.3f} (chance {row['iou_chance']:.3f}); change "
        f"{row['delta_iou']:+.3f}, 95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], d_z {row['cohens_dz']:.2f}, "
        f"Holm p {row['p_holm']:.3g}"
    )
    if row["holm_significant"]:
        verdict = "rose" if row["delta_iou"] > 0 else "fell"
        tail = " (this tier is trained on the measure)" if row["trained_on_the_measure"] else ""
        return f"- {what}: IoU {verdict}{tail}: {numbers}."
    return f"- {what}: no change detectable after Holm's correction: {numbers}."


# ----------------------------------------------------------------------------------------- report


def write_alignment_report(
    study: AlignmentStudy, out_dir: str | Path, *, command: str = "", random_models: Sequence[str] = ()
) -> Path:
    """Report folder: report.md, every table as CSV (+ Markdown), the settings and comparisons as JSON, figures."""
    from vitmech.report import Report
    from vitmech.viz.alignment import plot_delta_iou, plot_head_delta_grid, plot_iou_by_layer, plot_region_overlays

    config = study.config
    what = "synthetic galaxies" if config.data == "galaxies" else "chirp spectrogram figures"
    task = "a new 6-class morphology head" if config.data == "galaxies" else "a new 3-target regression head"
    regions = ", ".join(config.regions) + (" and their union" if config.data == "galaxies" else "")
    report = Report(  # random weights: said first in report.md and stamped on every figure
        out_dir, title="Does fine-tuning move attention onto the annotated features?", random_weights=random_models
    )
    report.add_text(
        f"- models: {', '.join(f'`{m}`' for m in config.models)}\n"
        f"- tiers: {', '.join(config.tiers)}, each {config.steps} steps of batch {config.batch_size} on "
        f"{config.n_train} {what} (stream seed {TRAIN_SEED}) with {task}; head lr {config.head_lr}, "
        f"backbone/adapter lr {config.backbone_lr}, LoRA rank {config.lora_rank}\n"
        f"- attention supervision: {config.supervision.to_dict()}\n"
        f"- measured on {config.n_eval} held-out {what} (stream seed {EVAL_SEED}); regions {regions}; tested "
        f"region: {config.target}; IoU of the top-q pixels (q = "
        f"{config.q if config.q is not None else 'the region area'}), nearest upsampling, ties shared evenly "
        "(docs/alignment.md#definitions)\n"
        "- change = after - before per image; paired t-test, Cohen's d_z, 95% percentile bootstrap CI "
        f"({config.n_resamples:,} resamples, seed {config.seed}); Holm's correction over all "
        f"{len(study.comparisons)} comparisons (both tables below). Direction words only for Holm-significant rows.\n"
        "- the attention-supervised tier is trained on this measure: its gain is reported apart and is not "
        "evidence that ordinary fine-tuning moves attention.\n" + (f"- command: `{command}`\n" if command else "")
    )
    primary = study.comparisons
    plain = primary[~primary["trained_on_the_measure"]]
    supervised = primary[primary["trained_on_the_measure"]]
    report.add_table("comparisons", plain, caption=f"Change in IoU with the {config.target} region (ordinary tiers)")
    if len(supervised):
        report.add_table(
            "comparisons_supervised", supervised, caption="Attention-supervised tier (trained on the measure; apart)"
        )
    report.add_text("\n".join(describe(row) for _, row in primary.iterrows()))
    report.add_table(
        "accuracy",
        study.accuracy,
        caption="Held-out score of each fine-tuned model (accuracy; chirps: mean Pearson r over the targets)",
    )
    report.add_text("\n".join(f"- {note}" for note in study.notes))
    report.add_table(
        "by_region",
        study.by_region,
        caption="Per feature: IoU / energy / pointing of the last layer's head-mean map (descriptive, not tested)",
        show=False,
    )
    report.add_table("by_layer", study.by_layer, caption=f"IoU by layer (head-mean maps, {config.target})", show=False)
    report.add_table(
        "by_head", study.by_head, caption=f"IoU change per head ({config.target}; descriptive)", show=False
    )
    report.add_json("settings", config.to_dict())
    report.add_json("comparisons", primary.to_dict(orient="records"))
    for source in PRIMARY_MAPS:
        report.add_figure(f"delta_iou_{source}", plot_delta_iou(primary, source), caption=f"Change in IoU ({source})")
    layers = study.states[0].scores["layers"]
    chance = float(np.nanmean(layers.iou_chance[:, layers.region(config.target)].numpy()))
    report.add_figure(
        "iou_by_layer",
        plot_iou_by_layer(study.by_layer, chance, region=config.target),
        caption="IoU by layer, before and after",
    )
    for model in config.models:
        if len(study.by_head):
            report.add_figure(
                f"head_delta_{_slug(model)}",
                plot_head_delta_grid(study.by_head, model, region=config.target),
                caption=f"Per-head change: {model}",
            )
    example = int(np.argmax(study.eval_regions.masks[:, : len(config.regions)].flatten(2).any(-1).sum(-1).numpy()))
    masks = {name: study.eval_regions.select([name]).masks[example, 0].numpy() for name in config.regions}
    for model in config.models:
        maps = {
            f"{state.tier}": state.maps["last_layer_mean"][example] for state in study.states if state.model == model
        }
        report.add_figure(
            f"overlay_{_slug(model)}",
            plot_region_overlays(study.eval_images[example], masks, maps, title=f"{model}: last layer, head mean"),
            caption=f"Held-out image {example} with its regions: {model}",
        )
    report.add_text(f"Run time: {study.seconds:.0f} s (torch threads: {torch.get_num_threads()}).")
    return report.write()


# ----------------------------------------------------------------------------------------- command line

# `vitmech align` lives in vitmech.studies.align (its --help imports no torch).

__all__ = [
    "DEFAULT_REGIONS",
    "DEFAULT_TARGET",
    "STUDY_DATA",
    "chirp_data",
    "study_data",
    "PRIMARY_MAPS",
    "SHIPPED_MODELS",
    "STUDY_TIERS",
    "AlignmentStudy",
    "AlignmentStudyConfig",
    "ModelState",
    "attention_maps",
    "centre_prior_iou",
    "describe",
    "fine_tuned_model",
    "galaxy_data",
    "measure",
    "run_alignment_study",
    "write_alignment_report",
]
