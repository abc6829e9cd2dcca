"""Figure of a RegisterAnalysis: token norms by stage, the last stage's patch-norm histogram with the outlier
threshold, and the attention the readout query gives registers and outlier patches by block.

    fig = plot_register_analysis(register_analysis(model, images))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vitmech.analysis.registers import KEY_GROUPS, QUERY_GROUPS, RegisterAnalysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_register_analysis(result: RegisterAnalysis, query: str | None = None, title: str | None = None) -> Figure:
    """Three panels: (a) mean token norm per stage by token kind; (b) histogram of the last stage's patch
    norms (log count) with the outlier threshold factor x median marked; (c) attention share per block that
    `query` (a QUERY_GROUPS name; default the class token, else the patch mean) gives each key group,
    mean over images and heads, with the spread over images as a band (+- 1 std)."""
    from matplotlib.figure import Figure

    layout = result.layout
    query = query or ("class" if layout.class_index is not None else "patches")
    fig = Figure(figsize=(13.5, 3.8), layout="constrained")
    ax_norm, ax_hist, ax_share = fig.subplots(1, 3)

    stages = np.arange(len(result.stage_labels))
    for kind, values in result.mean_norms().items():
        ax_norm.plot(stages, values.double().numpy(), marker="o", ms=3, label=kind)
    ax_norm.set_xticks(stages, result.stage_labels, fontsize=7, rotation=45)
    ax_norm.set_ylabel("L2 norm of the residual stream")
    ax_norm.set_title("(a) token norms by stage (means over images)", fontsize=9)
    ax_norm.legend(fontsize=7)

    last = layout.patches(result.norms[:, -1], -1).double()
    ax_hist.hist(last.flatten().numpy(), bins=40, color="grey", log=True)
    threshold = result.factor * last.median(-1).values.mean()
    ax_hist.axvline(float(threshold), color="red", ls="--", lw=1, label=f"{result.factor:g} x median (image mean)")
    ax_hist.set_xlabel("patch-token norm, last stage")
    ax_hist.set_ylabel("count (log)")
    ax_hist.set_title(
        f"(b) {float(result.outlier_fraction()[-1]):.1%} of patches are outliers ({result.n_images} images)",
        fontsize=9,
    )
    ax_hist.legend(fontsize=7)

    blocks = np.arange(result.n_layers)
    q = QUERY_GROUPS.index(query)
    for k, key in enumerate(KEY_GROUPS):
        per_image = result.shares[:, :, :, q, k].mean(2).double()  # [B, L]
        if not bool(per_image.abs().sum() > 0):
            continue
        mean = per_image.mean(0).numpy()
        spread = per_image.std(0).numpy() if result.n_images > 1 else np.zeros_like(mean)
        ax_share.plot(blocks, mean, marker="o", ms=3, label=key)
        ax_share.fill_between(blocks, mean - spread, mean + spread, alpha=0.2)
    ax_share.set_xticks(blocks, [f"L{b}" for b in blocks], fontsize=7)
    ax_share.set_ylim(0, 1)
    ax_share.set_ylabel("attention share")
    ax_share.set_title(f"(c) attention from the {query} query (head mean; band: +-1 std over images)", fontsize=9)
    ax_share.legend(fontsize=7)
    fig.suptitle(title or f"Token norms and attention sinks ({layout.readout_name} readout)", fontsize=10)
    return fig


__all__ = ["plot_register_analysis"]
