"""Ablation engine: head ablations as hooks, exact fast sweeps, gradient estimates, groups, pruning.

    from vitmech.analysis.ablation import head_sweep, head_ablation_hooks, MeanAblation
    result = head_sweep(model, images, "cross_entropy", targets=labels)   # all heads, exact
    result.grid("pct_change")                                              # [n_layers, n_heads]
    logits = model.run_with_hooks(images, fwd_hooks=head_ablation_hooks(model, [(3, 5)], "zero"))

See docs/ablation.md.
"""

from vitmech.analysis.ablation.errors import (
    AblationError,
    EmptyReferenceError,
    HeadIndexError,
    MetricError,
    StoreMismatchError,
)
from vitmech.analysis.ablation.estimates import (
    EstimateComparison,
    HeadEstimates,
    compare_estimates,
    estimate_head_effects,
)
from vitmech.analysis.ablation.groups import (
    PairInteractions,
    PruningCurve,
    head_set_ablation,
    layer_ablation,
    pair_interactions,
    pruning_curve,
)
from vitmech.analysis.ablation.heads import (
    Cell,
    Head,
    all_heads,
    head_label,
    heads_per_layer,
    make_cell,
    make_cells,
    parse_heads,
)
from vitmech.analysis.ablation.interventions import (
    BoundAblation,
    HeadAblation,
    MeanAblation,
    ResampleAblation,
    UniformAttention,
    ZeroAblation,
    ablated,
    head_ablation_hooks,
    resolve_ablation,
)
from vitmech.analysis.ablation.metrics import (
    Metric,
    accuracy,
    class_logit,
    cross_entropy,
    feature_direction,
    kl_to_clean,
    logit_diff,
    metric_from_function,
    mse,
    mse_to_clean,
    resolve_metric,
)
from vitmech.analysis.ablation.pruning import PruningMeasurement, kept_heads, measure_pruning, prune_heads
from vitmech.analysis.ablation.results import AblationTable, HeadSweepResult
from vitmech.analysis.ablation.sweep import ablated_output, ablation_sweep, head_sweep, naive_head_sweep

__all__ = [
    "AblationError",
    "AblationTable",
    "BoundAblation",
    "Cell",
    "EmptyReferenceError",
    "EstimateComparison",
    "Head",
    "HeadAblation",
    "HeadEstimates",
    "HeadIndexError",
    "HeadSweepResult",
    "MeanAblation",
    "Metric",
    "MetricError",
    "PairInteractions",
    "PruningCurve",
    "PruningMeasurement",
    "ResampleAblation",
    "StoreMismatchError",
    "UniformAttention",
    "ZeroAblation",
    "ablated",
    "ablated_output",
    "ablation_sweep",
    "accuracy",
    "all_heads",
    "class_logit",
    "compare_estimates",
    "cross_entropy",
    "estimate_head_effects",
    "head_ablation_hooks",
    "head_label",
    "head_set_ablation",
    "head_sweep",
    "heads_per_layer",
    "kept_heads",
    "kl_to_clean",
    "layer_ablation",
    "logit_diff",
    "make_cell",
    "make_cells",
    "measure_pruning",
    "metric_from_function",
    "mse",
    "feature_direction",
    "mse_to_clean",
    "naive_head_sweep",
    "pair_interactions",
    "parse_heads",
    "prune_heads",
    "pruning_curve",
    "resolve_ablation",
    "resolve_metric",
]
