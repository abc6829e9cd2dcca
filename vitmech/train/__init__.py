"""Fine-tuning a HookedViT by tier (linear probe, LoRA, full), with checkpoints, resume and evaluation.

    from vitmech.train import ArrayDataset, TierConfig, TrainConfig, fine_tune
    result = fine_tune(model, train_set, TierConfig("full", head_lr=1e-3, backbone_lr=1e-4),
                       TrainConfig(steps=300, batch_size=32, warmup_steps=30), val=val_set,
                       checkpoint_dir="runs/galaxy_full")
    result.model.save_pretrained("runs/galaxy_full/final", card=result.card(data="synthetic galaxies"))

Attention-supervised tier: `fine_tune_attention_supervised` (docs/alignment.md#attention-supervised-tier).
Lower level: `prepare_tier` (parameter groups), `fit` (the loop), `apply_lora` / `merge_lora`,
`with_new_head` / `with_image_size`, `evaluate`. See docs/training.md.
"""

from vitmech.train.attention_supervision import SUPERVISED_TIER, AttentionSupervision, fine_tune_attention_supervised
from vitmech.train.data import ArrayDataset, augment_batch, batch_indices, to_model_input
from vitmech.train.errors import HeadMismatchError, ResumeMismatchError, TrainingDataError
from vitmech.train.evaluate import (
    ClassificationEval,
    RegressionEval,
    chance_baselines,
    confusion_matrix,
    evaluate,
    mean_predictor_mse,
    pearson_r,
    predict,
)
from vitmech.train.finetune import FineTuneResult, fine_tune, fit_head_on_features
from vitmech.train.heads import check_head, interpolate_positions, with_image_size, with_new_head
from vitmech.train.loop import TrainConfig, TrainResult, fit, lr_factor
from vitmech.train.lora import LoRAAttention, LoRAConfig, apply_lora, has_lora, lora_parameters, merge_lora
from vitmech.train.tiers import TIERS, TierConfig, prepare_tier, trainable_parameter_count

__all__ = [
    "SUPERVISED_TIER",
    "AttentionSupervision",
    "fine_tune_attention_supervised",
    "TIERS",
    "ArrayDataset",
    "ClassificationEval",
    "FineTuneResult",
    "HeadMismatchError",
    "LoRAAttention",
    "LoRAConfig",
    "RegressionEval",
    "ResumeMismatchError",
    "TierConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDataError",
    "apply_lora",
    "augment_batch",
    "batch_indices",
    "chance_baselines",
    "check_head",
    "confusion_matrix",
    "evaluate",
    "fine_tune",
    "fit",
    "fit_head_on_features",
    "has_lora",
    "interpolate_positions",
    "lora_parameters",
    "lr_factor",
    "mean_predictor_mse",
    "merge_lora",
    "pearson_r",
    "predict",
    "prepare_tier",
    "to_model_input",
    "trainable_parameter_count",
    "with_image_size",
    "with_new_head",
]
