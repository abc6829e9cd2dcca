"""A patching study on counterfactual galaxy pairs (with / without one feature): which layers, heads and
patches carry the feature, the paths from the strongest heads onward, and an EAP circuit with its measured
faithfulness. `run_patching_study(config, out_dir)` writes a report folder and returns its summary;
`experiments/15_patching_circuits.py` is the command-line front end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vitmech.analysis.ablation.metrics import logit_diff
from vitmech.analysis.circuit_discovery import edge_attribution_patching, prune_to_faithfulness
from vitmech.analysis.patch_lens import patch_logit_lens
from vitmech.analysis.patching import activation_patching, head_sites, layer_sites, position_sites
from vitmech.analysis.path_patching import path_patching
from vitmech.data.galaxies import galaxy_counterfactual_pairs
from vitmech.errors import PatchingError
from vitmech.model.hooked_vit import HookedViT
from vitmech.report import Report

logger = logging.getLogger(__name__)


@dataclass
class PatchingStudyConfig:
    """What to run. `quick()` gives the small version the tests run offline.

    Attributes:
        model: a shipped name, local path, timm name or hub id.
        feature: the galaxy feature toggled ("bar", "arms" or "bulge").
        positive_class, negative_class: the metric is logit[positive] - logit[negative].
        n_pairs, seed: how many counterfactual pairs, from which seeded stream.
        position_layers: layers whose residual stream is patched per patch (None: all).
        top_heads: heads (largest restored fraction, all positions) followed by path patching.
        head_position_sets: which positions head patching covers ("all", "cls", "patches").
        head_layers: layers whose heads are patched (None: all; negative counts from the end).
        per_patch_heads: how many of the top heads also get a per-patch map.
        path_components: receiver inputs for the top-head -> top-head path tables.
        eap_method, ig_steps: edge scores for the circuit ("eap" or "eap-ig").
        target_faithfulness: the circuit is the smallest top-scored edge set reaching it, measured by running it.
        search_steps: halvings of that search (None: to one edge, about log2(number of edges) circuit runs); with
            fewer the circuit still reaches the target and is within n_edges / 2**search_steps edges of the
            smallest top-scored set the full search finds (`prune_to_faithfulness(max_steps=...)`).
        max_rows: the suffix engine's largest stacked batch (memory).
    """

    model: str = "vitmech/mini-galaxy"
    feature: str = "bar"
    positive_class: str = "barred_spiral"
    negative_class: str = "unbarred_spiral"
    n_pairs: int = 16
    seed: int = 0
    position_layers: list[int] | None = None
    top_heads: int = 4
    eap_method: Literal["eap", "eap-ig"] = "eap-ig"
    ig_steps: int = 5
    target_faithfulness: float = 0.8
    search_steps: int | None = None
    max_rows: int = 128
    head_position_sets: tuple[Literal["all", "cls", "patches"], ...] = ("all", "cls", "patches")
    head_layers: list[int] | None = None
    per_patch_heads: int = 2
    path_components: tuple[Literal["q", "k", "v"], ...] = ("q", "k", "v")
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.search_steps is not None and self.search_steps < 0:  # before any model runs, not at the search
            raise PatchingError(f"search_steps must be None or >= 0, got {self.search_steps}")

    @classmethod
    def quick(cls, **changes: Any) -> PatchingStudyConfig:
        """Two pairs, the last layers only, two top heads, plain EAP, an 8-step circuit search (within 0.4% of
        the edges of the smallest circuit): well under a minute on a laptop CPU."""
        base: dict[str, Any] = dict(
            n_pairs=2,
            position_layers=[-1],
            head_layers=[-2, -1],
            top_heads=2,
            per_patch_heads=0,
            path_components=("v",),
            eap_method="eap",
            head_position_sets=("all",),
            max_rows=256,
            search_steps=8,
        )
        base.update(changes)
        return cls(**base)


def _fmt_restored(value: float, se: float) -> str:
    return f"{value:.2f} ± {se:.2f}" if math.isfinite(se) else f"{value:.2f}"


@torch.no_grad()
def _pairs(model: HookedViT, config: PatchingStudyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    with_f, without = galaxy_counterfactual_pairs(
        config.n_pairs, config.seed, config.feature, size=model.cfg.image_size
    )
    return model.preprocess(list(with_f.images)), model.preprocess(list(without.images))


def run_patching_study(
    config: PatchingStudyConfig,
    out_dir: str | Path,
    model: HookedViT | None = None,
    random_weights: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the study and write `out_dir/report.md` with its tables and figures; returns the summary numbers.
    random_weights: names of randomly initialised models (stamped on the report and every figure)."""
    from vitmech.viz.patching import (
        plot_circuit,
        plot_faithfulness_curve,
        plot_patch_lens,
        plot_path_table,
        plot_restored_heads,
        plot_restored_positions,
    )

    model = (model or HookedViT.from_pretrained(config.model)).eval()
    names = model.class_names or []
    for label in (config.positive_class, config.negative_class):
        if label not in names:
            raise PatchingError(f"class {label!r} is not one of the model's classes {names}")
    pos, neg = names.index(config.positive_class), names.index(config.negative_class)
    metric = logit_diff(pos, neg)
    clean, corrupted = _pairs(model, config)
    n_layers = model.cfg.n_layers
    report = Report(
        out_dir, f"Activation patching and circuits: the galaxy {config.feature}", random_weights=random_weights
    )
    note = f"{config.model}, {config.n_pairs} pairs; metric logit[{config.positive_class}] - logit[{config.negative_class}]"
    summary: dict[str, Any] = {"config": asdict(config)}

    # 1. layers
    sites = layer_sites(model, ["attn_out", "mlp_out"])  # resid_pre at every position restores 1 by construction
    layers = activation_patching(model, clean, corrupted, metric, sites, max_rows=config.max_rows)
    gap, gap_se = layers.gap, float((layers.clean - layers.corrupted).std() / math.sqrt(max(1, config.n_pairs)))
    summary.update(clean=float(layers.clean.mean()), corrupted=float(layers.corrupted.mean()), gap=gap)
    report.add_text(
        f"Pairs: {config.n_pairs} synthetic galaxies (seed {config.seed}), each rendered with and without its "
        f"{config.feature}, everything else (shape, colours, noise) identical. Metric: "
        f"logit[{config.positive_class}] - logit[{config.negative_class}], mean {summary['clean']:.3f} with the "
        f"{config.feature} and {summary['corrupted']:.3f} without (gap {gap:.3f} ± {gap_se:.3f} SE over pairs). "
        "Restored fraction = (m(patched) - m(without)) / gap: clean activations patched into the run without "
        "the feature; ± is the standard error over pairs with the gap held fixed."
    )
    if abs(gap) < 2 * gap_se or gap == 0:
        report.add_text(
            f"**The gap is not distinguishable from zero ({gap:.3f} ± {gap_se:.3f}); restored fractions below "
            "divide by it and are not interpretable.**"
        )
    report.add_table("layers", layers.to_frame(), "Attention and MLP outputs patched whole (all positions)", show=True)

    # 2. heads
    head_results = {}
    head_layers = None if config.head_layers is None else sorted({layer % n_layers for layer in config.head_layers})
    for which in config.head_position_sets:
        head_results[which] = activation_patching(
            model, clean, corrupted, metric, head_sites(model, which, layers=head_layers), max_rows=config.max_rows
        )
        report.add_figure(
            f"heads_{which}",
            plot_restored_heads(head_results[which], f"Head z patched at {which} positions", note),
        )
    heads_all = head_results[config.head_position_sets[0]]
    frame = heads_all.to_frame().sort_values("restored", ascending=False)
    report.add_table(
        "heads", frame, f"Heads patched ({config.head_position_sets[0]} positions), largest first", show=False
    )
    top = frame.head(config.top_heads)
    top_heads = [(int(r.layer), int(r.head)) for r in top.itertuples()]
    summary["top_heads"] = [
        {"head": f"L{a}H{b}", "restored": float(r.restored), "se": float(r.restored_se)}
        for (a, b), r in zip(top_heads, top.itertuples())
    ]
    lines = [
        f"- L{a}H{b}: {_fmt_restored(r.restored, r.restored_se)}" for (a, b), r in zip(top_heads, top.itertuples())
    ]
    significant = [h for h in summary["top_heads"] if h["restored"] - 2 * h["se"] > 0]
    report.add_text(
        "Heads with the largest restored fraction (patched alone at every position):\n"
        + "\n".join(lines)
        + f"\n\n{len(significant)} of these are more than 2 SE above 0"
        + (" (with fewer than 5 pairs the SE is itself rough)." if config.n_pairs < 5 else ".")
    )

    # 3. positions on the grid
    chosen_layers = sorted({layer % n_layers for layer in (config.position_layers or range(n_layers))})
    positions = activation_patching(
        model,
        clean,
        corrupted,
        metric,
        position_sites(model, "resid_pre", layers=chosen_layers),
        max_rows=config.max_rows,
    )
    grids = positions.position_grid("resid_pre")
    report.add_figure(
        "positions_resid",
        plot_restored_positions(
            grids, "Residual stream entering each layer, patched at one patch", note, chosen_layers
        ),
    )
    summary["class_token_restored"] = {
        int(layer): float(positions.prefix_values("resid_pre")[layer, 0]) for layer in chosen_layers
    }
    for layer, head in top_heads[: config.per_patch_heads]:
        per_patch = activation_patching(
            model,
            clean,
            corrupted,
            metric,
            position_sites(model, "head", layers=[layer], head=head),
            max_rows=config.max_rows,
        )
        report.add_figure(
            f"positions_L{layer}H{head}",
            plot_restored_positions(
                per_patch.position_grid("head", head=head), f"Head L{layer}H{head} patched at one patch", note, [layer]
            ),
        )

    # 4. paths from the top heads
    direct = path_patching(model, clean, corrupted, metric, top_heads, "logits", max_rows=config.max_rows)
    report.add_table("paths_to_logits", direct.to_frame().reset_index(names="sender"), "Direct path to the logits")
    summary["direct_to_logits"] = dict(zip(direct.senders, direct.restored[:, 0].tolist()))
    later = [h for h in top_heads if h[0] > min(a for a, _ in top_heads)]
    if later:
        for component in config.path_components:
            table = path_patching(
                model, clean, corrupted, metric, top_heads, later, component=component, max_rows=config.max_rows
            )
            report.add_figure(
                f"paths_{component}", plot_path_table(table, f"Top heads to top heads through {component}", note)
            )

    # 5. circuit
    scores = edge_attribution_patching(
        model, clean, corrupted, metric, method=config.eap_method, ig_steps=config.ig_steps
    )
    report.add_table("edges", scores.to_frame().head(200), "Edges by |score| (first 200)", show=False)
    circuit = prune_to_faithfulness(
        model, clean, corrupted, metric, scores, target=config.target_faithfulness, max_steps=config.search_steps
    )
    lo, hi = circuit.meta["bracket"]
    summary["circuit"] = {
        "method": scores.method,
        "n_edges": circuit.n_edges,
        "fraction_of_edges": circuit.fraction_of_edges,
        "faithfulness": circuit.faithfulness,
        "target": config.target_faithfulness,
        "nodes": circuit.nodes,
        "search_bracket": [lo, hi],
    }
    narrowed = hi - lo > 1 and circuit.faithfulness >= config.target_faithfulness  # a search cut short
    smallest = f"within {hi - lo - 1} top edges of the smallest" if narrowed else "smallest"
    report.add_text(
        f"Circuit ({scores.method.upper()} scores, {smallest} top-|score| edge set reaching faithfulness "
        f"{config.target_faithfulness}): {circuit.n_edges} of {int(circuit.graph.valid.sum())} edges "
        f"({100 * circuit.fraction_of_edges:.1f}%), faithfulness {circuit.faithfulness:.3f}, measured by running "
        "the model with every other edge fed from the image without the feature."
    )
    report.add_table("circuit_edges", circuit.to_frame(), "Circuit edges", show=False)
    report.add_figure("circuit", plot_circuit(circuit, scores, note=note))
    report.add_figure("faithfulness", plot_faithfulness_curve(circuit, note=note))

    # 6. per-patch logit lens
    lens = patch_logit_lens(model, clean)
    report.add_figure("patch_lens", plot_patch_lens(lens, pos, note=note))
    summary["lens_agreement"] = lens.agreement(model(clean).argmax(-1)).tolist()
    report.add_json("summary", summary)
    report.write()
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line for logs: the gap, the best head and the circuit."""
    best = summary["top_heads"][0] if summary.get("top_heads") else {"head": "-", "restored": np.nan}
    circuit = summary.get("circuit", {})
    return (
        f"gap {summary.get('gap', np.nan):.3f}; best head {best['head']} restores {best['restored']:.2f}; "
        f"circuit {circuit.get('n_edges', '-')} edges, faithfulness {circuit.get('faithfulness', np.nan):.3f}"
    )
