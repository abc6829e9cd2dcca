"""A fine-tuning study: the chosen tier, its linear probe and the guessing baselines, on the same held-out set.

What the Galaxy Zoo fine-tuning study reports (test accuracy vs a baseline) and the tiers side by side, as one
result whose `summary_rows()` is the report table and whose `card_metrics()` goes into the model card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitmech.errors import InputError
from vitmech.model.hooked_vit import HookedViT
from vitmech.train.data import ArrayDataset
from vitmech.train.evaluate import (
    ClassificationEval,
    Evaluation,
    RegressionEval,
    chance_baselines,
    evaluate,
    mean_predictor_mse,
)
from vitmech.train.finetune import FineTuneResult, fine_tune
from vitmech.train.loop import TrainConfig
from vitmech.train.tiers import TierConfig


@dataclass
class StudyResult:
    """The fine-tuned model's and the linear probe's test evaluations, and the baselines."""

    tuned: FineTuneResult
    test: Evaluation
    probe: FineTuneResult | None
    probe_test: Evaluation | None
    baselines: dict[str, Any]
    split_sizes: dict[str, int]

    @property
    def task(self) -> str:
        return "classification" if isinstance(self.test, ClassificationEval) else "regression"

    def card_metrics(self) -> dict[str, Any]:
        """Test metrics, probe metrics, baselines and the margins between them."""
        out: dict[str, Any] = {
            "split_sizes": self.split_sizes,
            "test": self.test.to_dict(),
            "baselines": self.baselines,
        }
        if self.probe_test is not None:
            out["linear_probe_test"] = self.probe_test.to_dict()
        if self.probe is not None and "head_fit" in self.probe.extra:
            out["linear_probe_fit"] = self.probe.extra["head_fit"]
        if isinstance(self.test, ClassificationEval):
            margins = {
                "over_uniform_chance": self.test.accuracy - self.baselines["uniform"],
                "over_majority_class": self.test.accuracy - self.baselines["majority_class"],
            }
            if isinstance(self.probe_test, ClassificationEval):
                margins["over_linear_probe"] = self.test.accuracy - self.probe_test.accuracy
            out["margins"] = margins
        else:
            assert isinstance(self.test, RegressionEval)
            out["mse_reduction_vs_mean_predictor"] = (
                1 - self.test.mse / np.asarray(self.baselines["mean_predictor_mse"])
            ).tolist()
        if self.tuned.evaluation is not None:
            out["validation"] = self.tuned.evaluation.to_dict()
        return out

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per model/baseline: accuracy, or mean MSE and Pearson r per target."""
        tier = self.tuned.tier.tier
        if isinstance(self.test, ClassificationEval):
            rows = [{"model": f"{tier} fine-tune", "test_accuracy": self.test.accuracy, "n_test": self.test.n}]
            if isinstance(self.probe_test, ClassificationEval):
                rows.append(
                    {"model": "linear probe", "test_accuracy": self.probe_test.accuracy, "n_test": self.probe_test.n}
                )
            rows.append(
                {"model": "chance (uniform)", "test_accuracy": self.baselines["uniform"], "n_test": self.test.n}
            )
            rows.append(
                {
                    "model": "chance (majority class)",
                    "test_accuracy": self.baselines["majority_class"],
                    "n_test": self.test.n,
                }
            )
            return rows
        rows = []
        evals = [(f"{tier} fine-tune", self.test)] + (
            [("linear probe", self.probe_test)] if self.probe_test is not None else []
        )
        for name, ev in evals:
            assert isinstance(ev, RegressionEval)
            row: dict[str, Any] = {"model": name, "mean_mse": ev.mean_mse}
            row.update({f"r_{t}": r for t, r in zip(ev.target_names, ev.pearson_r.tolist())})
            rows.append(row)
        rows.append({"model": "mean predictor", "mean_mse": float(np.mean(self.baselines["mean_predictor_mse"]))})
        return rows


def run_study(
    model: HookedViT,
    train: ArrayDataset,
    val: ArrayDataset | None,
    test: ArrayDataset,
    tier: TierConfig,
    config: TrainConfig,
    *,
    probe_config: TrainConfig | None = None,
    probe_lr: float = 1e-2,
    probe_train: ArrayDataset | None = None,
    head_from_probe: bool = False,
    probe_ridge: float | None = None,
    checkpoint_dir: str | Path | None = None,
    card: dict[str, Any] | None = None,
    progress: bool = True,
) -> StudyResult:
    """Fine-tune `model` by `tier`, train its linear probe (unless probe_config is None), and evaluate
    both and the baselines on `test`. `probe_train` (default `train`) lets the probe use a subset.

    `head_from_probe`: start the fine-tune from the trained linear probe's head instead of a zero head
    (LP-FT, Kumar et al. 2022, "Fine-tuning can distort pretrained features"): the backbone then adapts
    to a head that already reads its features, instead of to a random one. `probe_ridge`: fit a regression
    probe in closed form (ridge of that alpha, `vitmech.train.finetune.ridge_fit`) instead of AdamW steps.
    """
    probe = probe_eval = None
    if probe_config is not None and tier.tier != "linear_probe":
        probe = fine_tune(
            model,
            probe_train or train,
            TierConfig("linear_probe", head_lr=probe_lr),
            probe_config,
            progress=progress,
            ridge=probe_ridge,
        )
        probe_eval = evaluate(probe.model, test, progress=progress)
    if head_from_probe and probe is None:
        raise InputError(
            "head_from_probe needs the linear probe: give probe_config (and a tier other than linear_probe)"
        )
    start, new_head = (probe.model, False) if head_from_probe and probe is not None else (model, True)
    tuned = fine_tune(
        start,
        train,
        tier,
        config,
        val=val,
        new_head=new_head,
        checkpoint_dir=checkpoint_dir,
        card=card,
        progress=progress,
    )
    if head_from_probe:
        tuned.extra["head_init"] = "linear probe (LP-FT)"
    test_eval = evaluate(tuned.model, test, progress=progress)
    if train.task == "classification":
        baselines: dict[str, Any] = chance_baselines(train.targets, test.targets, train.n_outputs)
    else:
        baselines = {"mean_predictor_mse": mean_predictor_mse(train.targets, test.targets).tolist()}
    sizes = {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)}
    if probe is not None:
        sizes["probe_train"] = len(probe_train or train)
    return StudyResult(tuned, test_eval, probe, probe_eval, baselines, sizes)


__all__ = ["StudyResult", "run_study"]
