"""Statistics over seeds, the unit of replication: the t-interval of a mean, the paired difference of two
variants trained at the same seeds (same initialisation stream and data order), and the sign test across
comparisons. McNemar's test (:func:`stripe.analysis.ablation.paired_counts`) compares two trained networks on
one test set; these compare methods."""
from __future__ import annotations

from typing import Any

import numpy as np


def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the t-interval of the mean of ``values``; one value: NaN interval; no spread: [m, m]."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.nan, np.nan, np.nan
    m = float(x.mean())
    if n < 2:
        return m, np.nan, np.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(x.std(ddof=1)) / np.sqrt(n)
    return m, m - half, m + half


def paired_t_p(diffs: Any) -> float:
    """Two-sided p of the paired t-test (mean difference 0) from the per-seed differences; NaN with fewer than two
    seeds or no spread (the t statistic then has no distribution)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2 or d.std(ddof=1) == 0:
        return np.nan
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict[str, Any]:
    """``a`` − ``b`` over the seeds both have (``{seed: value}``): the seeds, each seed's difference, their mean
    with its t-interval, and the paired t-test's p."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    m, lo, hi = t_interval(diffs, level)
    return {"seeds": seeds, "diffs": diffs, "mean": m, "lo": lo, "hi": hi, "p": paired_t_p(diffs)}


def sign_test_p(n_negative: int, n: int) -> float:
    """Two-sided exact sign test: p of a split at least as uneven as ``n_negative`` of ``n`` when each side has 1/2;
    NaN for n = 0."""
    from scipy import stats

    return float(stats.binomtest(n_negative, n, 0.5).pvalue) if n else np.nan


def reads(n: int, mean: float, lo: float, hi: float) -> str:
    """What a difference over ``n`` seeds says, in words that never overstate it: 'one seed' for one, otherwise
    whether the interval lies below 0, above 0 or contains it."""
    if n == 0 or not np.isfinite(mean):
        return "—"
    if n == 1:
        return "one seed"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{n} seeds, no interval"
    return f"{n} seeds: " + ("interval below 0" if hi < 0 else "interval above 0" if lo > 0 else "interval contains 0")
