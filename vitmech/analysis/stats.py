"""Paired before/after statistics (REFERENCE §6, seed 004): t-test, Cohen's d_z, bootstrap CI, Holm.

test = paired_comparison(entropy_before, entropy_after)      # one value per image, same images
test.t, test.p, test.cohens_dz, (test.ci_low, test.ci_high)
holm([t.p for t in tests])                                   # family-wise adjusted p-values
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float


@dataclass(frozen=True)
class PairedComparison:
    """Paired differences d = after - before over n items.

    t = mean(d) / (sd(d) / sqrt(n)) with ddof 1, two-sided p from Student's t with n - 1 degrees of
    freedom; Cohen's d_z = mean(d) / sd(d); [ci_low, ci_high] a percentile bootstrap CI of mean(d)
    (`n_resamples` resamples of the items, seeded).
    """

    n: int
    mean_before: float
    mean_after: float
    mean_change: float
    sd_change: float
    t: float
    p: float
    cohens_dz: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per item (1-D), got shape {array.shape}")
    return array


def paired_comparison(
    before: Float[Any, " item"],
    after: Float[Any, " item"],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired t-test, Cohen's d_z and a bootstrap CI of the mean change after - before."""
    from scipy import stats

    x, y = _as_array(before, "before"), _as_array(after, "after")
    if x.shape != y.shape:
        raise ValueError(f"before and after must pair up: {x.shape[0]} vs {y.shape[0]} items")
    if x.shape[0] < 2:
        raise ValueError(f"a paired comparison needs at least 2 items, got {x.shape[0]}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("before and after must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = y - x
    n = d.shape[0]
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd > 0:
        t = mean / (sd / math.sqrt(n))
        p = float(2 * stats.t.sf(abs(t), df=n - 1))
        dz = mean / sd
    else:  # every difference equal
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
        dz = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedComparison(
        n=n,
        mean_before=float(x.mean()),
        mean_after=float(y.mean()),
        mean_change=mean,
        sd_change=sd,
        t=float(t),
        p=p,
        cohens_dz=float(dz),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): sort ascending, p_(i) * (m - i) for i from 0,
    running maximum, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("holm takes a flat list of p-values")
    if ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError("p-values must be in [0, 1]")
    m = p.shape[0]
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted.tolist()
