"""Paired before/after statistics: t-test, Cohen's d_z, bootstrap CI, Holm (Holm 1979, Scand. J. Statist. 6:65-70).

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

from vitmech.errors import InputError


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
        raise InputError(f"{name} must be one value per item (1-D), got shape {array.shape}")
    return array


def paired_comparison(
    before: Float[np.ndarray, " item"] | Float[torch.Tensor, " item"] | Sequence[float],
    after: Float[np.ndarray, " item"] | Float[torch.Tensor, " item"] | Sequence[float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired t-test (`scipy.stats.ttest_rel`), Cohen's d_z and a percentile bootstrap CI of the mean change
    after - before (`scipy.stats.bootstrap`, resamples drawn by `numpy.random.default_rng(seed)`).

    >>> test = paired_comparison([1.0, 2.0, 3.0, 4.0], [1.5, 2.4, 3.6, 4.3], n_resamples=200)
    >>> round(test.mean_change, 3), round(test.t, 2), test.p < 0.05
    (0.45, 6.97, True)
    """
    from scipy import stats

    x, y = _as_array(before, "before"), _as_array(after, "after")
    if x.shape != y.shape:
        raise InputError(f"before and after must pair up: {x.shape[0]} vs {y.shape[0]} items")
    if x.shape[0] < 2:
        raise InputError(f"a paired comparison needs at least 2 items, got {x.shape[0]}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise InputError("before and after must be finite")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    d = y - x
    n = d.shape[0]
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd > 0:
        result = stats.ttest_rel(y, x)
        t, p = float(result.statistic), float(result.pvalue)
        dz = mean / sd
    else:  # every difference equal: ttest_rel's 0 / 0; the limits instead
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
        dz = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    if sd > 0:
        interval = stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    else:  # every resample has the same mean
        low = high = mean
    return PairedComparison(
        n=n,
        mean_before=float(x.mean()),
        mean_after=float(y.mean()),
        mean_change=mean,
        sd_change=sd,
        t=float(t),
        p=p,
        cohens_dz=float(dz),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (statsmodels' `multipletests(method="holm")`).

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise InputError("holm takes a flat list of p-values")
    if ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise InputError("p-values must be in [0, 1]")
    if p.shape[0] == 0:
        return []
    return [float(v) for v in multipletests(p, method="holm")[1]]
