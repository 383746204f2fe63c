"""Intervals, the one home of their maths.

* On a statistic's own range (:data:`RANGES`: S and rstd in [0, 1], std >= 0, cosine in [-1, 1]): the jackknife
  over the probe folds (:func:`jackknife_interval`) and the t-interval over seeds (:func:`seed_interval`), both
  computed on a scale where the range is the whole real line (logit, log, atanh) and mapped back, so an interval
  never leaves the range (the stated cases are in :mod:`stripe.analysis.tables`' docstring).
* Over seeds, the unit of replication, on the plain scale (accuracy, slopes): the t-interval of a mean
  (:func:`t_interval`), the paired difference of two variants trained at the same seeds (same initialisation
  stream and data order; :func:`paired_difference`, :func:`paired_t_p`), the sign test across comparisons
  (:func:`sign_test_p`), and the words a difference gets (:func:`reads`). McNemar's test
  (:func:`stripe.analysis.ablation.paired_counts`) compares two trained networks on one test set; these compare
  methods.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import UserError

#: the range of each statistic (its intervals never leave it)
RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({"stripe": (0.0, 1.0), "std": (0.0, np.inf),
                                                               "rstd": (0.0, 1.0), "cos": (-1.0, 1.0)})
_LOGIT = ("stripe", "rstd")  # the statistics in [0, 1], on the logit scale
_EQUAL_TOL = 1e-12  # replicates this close to the value (times max(1, |value|)) give a point interval


def _to_scale(x: np.ndarray, stat: str) -> np.ndarray:
    """The transform g of ``stat``: logit for S and rstd, log for std, atanh for cos (±inf at the range's ends)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if stat in _LOGIT:
            return np.log(x) - np.log1p(-x)
        if stat == "std":
            return np.log(x)
        return np.arctanh(x)


def _from_scale(z: np.ndarray, stat: str) -> np.ndarray:
    """g⁻¹, the inverse of :func:`_to_scale`."""
    from scipy.special import expit

    with np.errstate(over="ignore"):
        if stat in _LOGIT:
            return expit(z)
        if stat == "std":
            return np.exp(z)
        return np.tanh(z)


def _check_stat(stat: str) -> tuple[float, float]:
    if stat not in RANGES:
        raise UserError(f"unknown statistic {stat!r}; known: {', '.join(RANGES)}")
    return RANGES[stat]


def jackknife_interval(value: Any, loo: Any, stat: str, level: float = 0.95) -> dict[str, np.ndarray]:
    """Jackknife interval of ``stat`` ('stripe', 'std', 'rstd' or 'cos') on its transformed scale, mapped back.

    ``value`` [...]: the statistic on every fold; ``loo`` [..., K]: without fold k. Returns lo and hi
    [...] inside :data:`RANGES` (the cases are stated in the module docstring: NaN with K < 2 or an
    end of the range reached by some values only, a point interval when every replicate equals the value).
    """
    from scipy import stats

    low, high = _check_stat(stat)
    value = np.clip(np.asarray(value, dtype=np.float64), low, high)
    loo = np.clip(np.asarray(loo, dtype=np.float64), low, high)
    k = loo.shape[-1]
    nan = np.full(value.shape, np.nan)
    if k < 2:
        return {"lo": nan, "hi": nan.copy()}
    with np.errstate(invalid="ignore"):
        exact = (np.abs(loo - value[..., None]) <= _EQUAL_TOL * np.maximum(1.0, np.abs(value))[..., None]).all(axis=-1)
        z, zk = _to_scale(value, stat), _to_scale(loo, stat)
        finite = np.isfinite(z) & np.isfinite(zk).all(axis=-1)
        zk = np.where(finite[..., None], zk, 0.0)
        se = np.sqrt((k - 1) / k * np.square(zk - zk.mean(axis=-1, keepdims=True)).sum(axis=-1))
    t = float(stats.t.ppf(0.5 + level / 2, k - 1))
    z = np.where(finite, z, 0.0)
    lo = np.where(exact, value, np.where(finite, _from_scale(z - t * se, stat), np.nan))
    hi = np.where(exact, value, np.where(finite, _from_scale(z + t * se, stat), np.nan))
    return {"lo": lo, "hi": hi}


def _t_half(x: np.ndarray, level: float) -> float:
    """Half the width of the t-interval of the mean of ``x`` (two or more values)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * float(np.std(x, ddof=1)) / np.sqrt(len(x))


def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the t-interval of the mean of ``values``; one value: NaN interval; no spread: [m, m]."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, np.nan, np.nan
    half = _t_half(x, level)
    return m, m - half, m + half


def seed_interval(values: Any, stat: str, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) over runs of ``stat``: the t-interval of the runs' transformed values, centred on the
    transformed mean and mapped back (module docstring); NaN values are left out; one run: NaN interval."""
    low, high = _check_stat(stat)
    x = np.asarray(values, dtype=np.float64)
    x = np.clip(x[np.isfinite(x)], low, high)
    m, lo, _ = t_interval(x, level)
    if not np.isfinite(lo):  # no run, or one
        return m, np.nan, np.nan
    if (np.abs(x - m) <= _EQUAL_TOL * max(1.0, abs(m))).all():
        return m, m, m
    z, zm = _to_scale(x, stat), _to_scale(np.float64(m), stat)
    if not (np.isfinite(z).all() and np.isfinite(zm)):
        return m, np.nan, np.nan
    half = _t_half(z, level)
    return m, float(_from_scale(zm - half, stat)), float(_from_scale(zm + half, stat))


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
