"""Tidy pandas tables of the Stripe Observation from a recording, every statistic with an interval.

Recordings are read through :mod:`stripe.record.format`. Only checkpoints listed in the manifest
count; epochs are the checkpoints' epoch numbers, never positions.

Tables (long format, tap metadata from the manifest merged in):

* ``channels``    -- per (epoch, tap, kind, channel): count, mean, std (+ interval), cv, min, max
* ``taps``        -- per (epoch, tap): spread, stripe index, cosine (each + interval), drift,
  settling distance, pattern distance, saturation, flags
* ``convergence`` -- per tap: the settling epoch (first epoch >= 1 from which μ stays settled)
* ``stages``      -- per (epoch, stage, asr): stripe index, spread and cosine per stage, with intervals

Definitions (A is N x C at one tap and checkpoint, N probe images, C channels):

* σ_c is the population standard deviation of A[:, c] (ddof = 0); ``std_*`` is its mean over
  channels; cv_c = σ_c / |μ_c|. A σ_c below 1e-12 of the channel's root mean square is the round-off
  of merging exact moments in float64 (recorded values are float32 or narrower, resolution ~1e-7) and
  is reported as 0;
* stripe index S = 1 − Σ(A[n,c] − μ_c)² / Σ(A[n,c] − μ̄)², the share of A's variance explained by
  the channel alone (1 = perfect stripes);
* ``cos_*``: mean over images of cos(A[n], μ);
* a stage's S (``stripe_after`` in ``stages``) is the **mean over its taps** of each tap's S, and its
  interval the jackknife of that mean (the folds are shared by every tap); ``stripe_after_pooled``
  is S of the stage's taps' channels taken together (needs equal channel counts, else NaN);
* a channel is *dead* when every recorded value is zero within ``dead_tol``; *saturated* when not
  dead and its mean is < ``saturation`` or > 1 − ``saturation`` (gates only, values in [0, 1]);
  flags ('asr', 'saturated', 'dead') are never findings.

Intervals (``*_lo``/``*_hi``, 95 %) stay inside their statistic's range: S in [0, 1], std >= 0,
cosine in [-1, 1]. Each is a jackknife over the recording's K folds of the probe set (fold k holds
probe images i with i mod K = k; every statistic is recomputed with one fold left out, from the same
exact moments) computed on a scale where the range is the whole real line, and mapped back:
logit(S), log(std), atanh(cos). With θ the statistic on every fold, θ_k without fold k and g the
transform, the interval is g⁻¹(g(θ) ± t_{K−1, 0.975} · SE) with
SE = sqrt((K−1)/K · Σ_k (g(θ_k) − mean g(θ_·))²).
Far from the range's ends this is the plain jackknife interval θ ± t · SE(θ) to first order (g is
nearly linear over the interval); near an end it is asymmetric and never crosses it. Stated cases:

* K = 1 (one fold): no interval (NaN);
* every θ_k equals θ (within 1e-12 · max(1, |θ|); e.g. S = 1 and std = 0 of an ASR tap or a dead
  channel, which are exact): the point interval [θ, θ];
* otherwise, θ or some θ_k exactly at an end of the range (S = 0 or 1, std = 0, cos = ±1): the
  transformed scale has no finite value there, so no interval (NaN);
* values outside the range by round-off are clipped into it first.

Across seeds (:func:`aggregate_seeds`) the same is done for the t-interval over runs: with x_i the
runs' values and m their mean (the reported value), g⁻¹(g(m) ± t_{n−1, 0.975} · sd(g(x_i)) / √n);
one run: NaN; every run equal: [m, m]; a run at an end of the range (others not): NaN.

Settling. At initialisation a gate is *not* ≈ 0.5 for every channel: the biases of its last layer
are random (PyTorch's default draws them from U(−1/√h, 1/√h), h the layer's fan-in), so an SE
gate's channel means μ_c already spread over roughly 0.2–0.75 at epoch 0 (a CIFAR ResNet-20's first
stage, h = 1), while its value varies little across images: S is close to 1 with no training.
Settling is therefore measured relative to how far the channel pattern moved since the start:

* c(v) = v − mean(v), the vector centred over channels (the offset all channels share removed);
* ``settle_dist`` (taps) = ||c(μ_t) − c(μ_T)|| / ||c(μ_T) − c(μ_0)||, with T the last checkpoint and
  0 the **first recorded checkpoint** (epoch 0, the initialisation, when it is recorded; else the
  earliest checkpoint, whose state then stands in for the start and is named by ``first_epoch``
  in ``convergence``). It is exactly 1 at the first checkpoint and 0 at the last. It is NaN for
  every checkpoint of a tap whose pattern did not move: ||c(μ_T) − c(μ_0)|| <= 1e-9 · the larger of
  ||c(μ_T)||, ||c(μ_0)|| (e.g. an ASR tap whose vector only shifted, or a dead tap), and with a
  single checkpoint;
* ``pattern_dist_final`` (taps) = ||c(μ_t) − c(μ_T)|| / ||c(μ_T)||: the same distance relative to
  the final pattern's size (NaN when c(μ_T) = 0); ``pattern_change`` (convergence) is its value at
  the first checkpoint: small means the final pattern was already there at initialisation;
* a tap has *settled* at the first checkpoint t with 1 <= t < T from which settle_dist < ``eps``
  holds at every later checkpoint (0 < eps < 1). The first checkpoint never counts (distance 1),
  nor does the last one alone (distance 0 by construction), so settling needs three checkpoints;
  a tap whose pattern never moved from the start has no settling epoch. It has *converged* when,
  in addition, S_after > ``threshold`` from then on. ``init_settled`` (kept for compatibility) is
  whether epoch 0 passes the settling test: False by construction (None without epoch 0).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..fsio import atomic_write
from ..record.format import ALL_KINDS, HIDDEN, KINDS, Recording
from ..record.moments import (MOMENT_KEYS, leave_one_out, mean_cosine_from_moments, merge_fold_arrays,
                              stripe_index_from_moments)

__all__ = [
    "RANGES", "TAP_META", "aggregate_seeds", "channel_table", "compute_tables", "convergence_table",
    "jackknife_interval", "pattern_distance", "seed_interval", "settle_distance", "settle_epoch", "stage_summary",
    "summary_text", "tap_table", "write_tables",
]

#: tap metadata merged from the manifest into every table (after the ``tap`` column)
TAP_META: tuple[str, ...] = ("module", "stage", "block", "depth", "call", "attn", "asr")
_CSV_TABLES = ("taps", "convergence", "stages", "seeds")


# --------------------------------------------------------------------------------------
# reading a recording into per-(tap, kind) arrays [E, K, C]
# --------------------------------------------------------------------------------------


def _as_recording(rec: Recording | str | os.PathLike[str]) -> Recording:
    return rec if isinstance(rec, Recording) else Recording.open(rec)


def _tap_meta(rec: Recording) -> pd.DataFrame:
    """Per tap, in manifest order: tap, TAP_META..., channels, hidden_width (None without a hidden layer)."""
    taps = rec.taps.rename(columns={"key": "tap", "hidden": "hidden_width"})
    if "hidden_width" not in taps.columns:  # recorded before hidden layers were
        taps["hidden_width"] = pd.array([pd.NA] * len(taps), dtype="Int64")
    return taps[["tap", *TAP_META, "channels", "hidden_width"]].reset_index(drop=True)


def _groups(rec: Recording) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """{(tap, kind): epoch [E], count [E, K], moments [E, K, C]} of every recorded checkpoint, in manifest order."""
    if not rec.epochs:
        raise UserError(f"{rec.path}: the recording has no checkpoints yet (run `stripe collect` first)")
    frame = rec.frame()
    known = set(rec.taps["key"])
    unknown = sorted(set(frame["tap"].unique()) - known)
    if unknown:
        raise UserError(f"stats hold taps not listed in {rec.path / 'manifest.json'}: {unknown[:5]}")
    out: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for (tap, kind), g in frame.groupby(["tap", "kind"], sort=True, observed=True):  # categorical: manifest order
        if kind not in ALL_KINDS:
            continue
        epochs = np.unique(g["epoch"].to_numpy())
        e, n = len(epochs), len(g)
        k = int(g["fold"].max()) + 1
        if n % (e * k):
            raise UserError(f"tap {tap!r} ({kind}): the number of channels differs between checkpoints or folds")
        c = n // (e * k)
        ch = g["channel"].to_numpy().reshape(e, k, c)
        if not (ch == np.arange(c)).all() or not (g["fold"].to_numpy().reshape(e, k, c) == np.arange(k)[:, None]).all():
            raise UserError(f"tap {tap!r} ({kind}): channels must be exactly 0..{c - 1} once per fold and checkpoint")
        cnt = g["count"].to_numpy().reshape(e, k, c)
        if not (cnt == cnt[..., :1]).all():
            raise UserError(f"tap {tap!r} ({kind}): counts differ across channels")
        arrays = {"epoch": epochs, "count": cnt[..., 0].astype(np.int64)}
        for m in MOMENT_KEYS:
            arrays[m] = g[m].to_numpy(dtype=np.float64).reshape(e, k, c)
        out[(str(tap), str(kind))] = arrays
    return out


def _total(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every fold merged: count [E], moments [E, C]."""
    return merge_fold_arrays(a["count"], *(a[m] for m in MOMENT_KEYS))


_STD_RTOL = 1e-12  # σ_c below this share of the channel's root mean square is round-off of the float64 merge


def _std_channels(c: np.ndarray, mu: np.ndarray, m2: np.ndarray, u: np.ndarray) -> np.ndarray:
    """σ_c (ddof = 0) per channel; round-off (σ_c <= 1e-12 sqrt(μ_c² + σ_c²)) is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = m2 / np.asarray(c, dtype=np.float64)[..., None]
        return np.where(var <= _STD_RTOL**2 * (np.square(mu) + var), 0.0, np.sqrt(var))


def _std_mean(c: np.ndarray, mu: np.ndarray, m2: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Mean over channels of σ_c (ddof = 0)."""
    std = _std_channels(c, mu, m2, u)
    return std.mean(axis=-1) if std.shape[-1] else np.full(std.shape[:-1], np.nan)


def _stripe(c, mu, m2, u) -> np.ndarray:
    return stripe_index_from_moments(c, mu, m2)


def _cos(c, mu, m2, u) -> np.ndarray:
    return mean_cosine_from_moments(c, mu, u)


# --------------------------------------------------------------------------------------
# intervals that stay inside their statistic's range (see the module docstring)
# --------------------------------------------------------------------------------------

#: the range of each statistic (its intervals never leave it)
RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({"stripe": (0.0, 1.0), "std": (0.0, np.inf),
                                                               "cos": (-1.0, 1.0)})
_EQUAL_TOL = 1e-12  # replicates this close to the value (times max(1, |value|)) give a point interval


def _to_scale(x: np.ndarray, stat: str) -> np.ndarray:
    """The transform g of ``stat``: logit for S, log for std, atanh for cos (±inf at the range's ends)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if stat == "stripe":
            return np.log(x) - np.log1p(-x)
        if stat == "std":
            return np.log(x)
        return np.arctanh(x)


def _from_scale(z: np.ndarray, stat: str) -> np.ndarray:
    """g⁻¹, the inverse of :func:`_to_scale`."""
    from scipy.special import expit

    with np.errstate(over="ignore"):
        if stat == "stripe":
            return expit(z)
        if stat == "std":
            return np.exp(z)
        return np.tanh(z)


def _check_stat(stat: str) -> tuple[float, float]:
    if stat not in RANGES:
        raise UserError(f"unknown statistic {stat!r}; known: {', '.join(RANGES)}")
    return RANGES[stat]


def jackknife_interval(value: Any, loo: Any, stat: str, level: float = 0.95) -> dict[str, np.ndarray]:
    """Jackknife interval of ``stat`` ('stripe', 'std' or 'cos') on its transformed scale, mapped back.

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


def seed_interval(values: Any, stat: str, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) over runs of ``stat``: the t-interval of the runs' transformed values, centred on the
    transformed mean and mapped back (module docstring); NaN values are left out; one run: NaN interval."""
    from scipy import stats

    low, high = _check_stat(stat)
    x = np.asarray(values, dtype=np.float64)
    x = np.clip(x[np.isfinite(x)], low, high)
    n = len(x)
    if n == 0:
        return np.nan, np.nan, np.nan
    m = float(x.mean())
    if n < 2:
        return m, np.nan, np.nan
    if (np.abs(x - m) <= _EQUAL_TOL * max(1.0, abs(m))).all():
        return m, m, m
    z, zm = _to_scale(x, stat), _to_scale(np.float64(m), stat)
    if not (np.isfinite(z).all() and np.isfinite(zm)):
        return m, np.nan, np.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * z.std(ddof=1) / np.sqrt(n)
    return m, float(_from_scale(zm - half, stat)), float(_from_scale(zm + half, stat))


def _loo_values(fn, a: dict[str, np.ndarray]) -> np.ndarray:
    """``fn`` on each leave-one-fold-out merge: [E, K] (or [E, K, C] for a per-channel statistic)."""
    loo = leave_one_out(a["count"], a["mean"], a["m2"], a["unit_sum"])
    return np.asarray(fn(loo["count"], loo["mean"], loo["m2"], loo["unit_sum"]), dtype=np.float64)


def _interval(fn, a: dict[str, np.ndarray], stat: str) -> dict[str, np.ndarray]:
    """``fn`` on every fold merged (value), with its range-respecting jackknife interval over folds (lo, hi)."""
    value = np.asarray(fn(*_tot4(a)), dtype=np.float64)
    loo = _loo_values(fn, a)  # [E, K] or [E, K, C]
    if value.ndim == a["count"].ndim:  # a per-channel statistic: [E, K, C] -> [E, C, K]
        loo = np.moveaxis(loo, -2, -1)
    return {"value": value, **jackknife_interval(value, loo, stat)}


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _channel_table(groups: dict[tuple[str, str], dict[str, np.ndarray]], meta: pd.DataFrame) -> pd.DataFrame:
    by_tap = meta.set_index("tap")
    parts = []
    for (tap, kind), a in groups.items():
        tot = _total(a)
        std = _interval(_std_channels, a, "std")  # [E, C]
        e, c = tot["mean"].shape
        with np.errstate(divide="ignore", invalid="ignore"):
            cv = np.where(np.abs(tot["mean"]) > 0, std["value"] / np.abs(tot["mean"]), np.nan)
        d: dict[str, Any] = {"epoch": np.repeat(a["epoch"], c), "tap": tap, "kind": kind,
                             "channel": np.tile(np.arange(c), e)}
        for col in TAP_META:
            d[col] = by_tap.at[tap, col]
        d.update(count=np.repeat(tot["count"], c), mean=tot["mean"].ravel(), std=std["value"].ravel(),
                 std_lo=std["lo"].ravel(), std_hi=std["hi"].ravel(), cv=cv.ravel(), min=tot["min"].ravel(),
                 max=tot["max"].ravel())
        parts.append(pd.DataFrame(d))
    df = pd.concat(parts, ignore_index=True)
    df["kind"] = pd.Categorical(df["kind"], categories=list(ALL_KINDS))
    df["tap"] = pd.Categorical(df["tap"], categories=list(meta["tap"]))
    df = df.sort_values(["epoch", "tap", "kind", "channel"], kind="stable", ignore_index=True)
    for col in ("stage", "block", "depth", "call"):
        df[col] = pd.array(df[col], dtype="Int64")
    df["asr"] = df["asr"].astype(bool)
    return df


def channel_table(rec: Recording | str | os.PathLike[str]) -> pd.DataFrame:
    """Per (epoch, tap, kind, channel): metadata, count, mean, std (ddof 0) with std_lo/std_hi, cv, min, max."""
    rec = _as_recording(rec)
    return _channel_table(_groups(rec), _tap_meta(rec))


def _rel_dist(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """||x - ref|| / ||ref|| row-wise; NaN where ||ref|| == 0."""
    num = np.linalg.norm(x - ref, axis=-1)
    den = np.linalg.norm(ref, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


_PATTERN_RTOL = 1e-9  # a pattern that moved by less than this (relative) since the first checkpoint did not move


def _centred(mu: np.ndarray) -> np.ndarray:
    """c(μ): each row [.., C] minus its mean over channels."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu - mu.mean(axis=-1, keepdims=True)


def settle_distance(mu: np.ndarray) -> np.ndarray:
    """||c(μ_t) − c(μ_T)|| / ||c(μ_T) − c(μ_0)|| for each row t of mu [E, C] (rows in checkpoint order), c
    centring over channels, T the last row, 0 the first: 1 at the first row, 0 at the last; all NaN when the
    pattern did not move from the first row to the last (relative 1e-9) and for a single row."""
    centred = _centred(mu)
    if len(centred) < 2:
        return np.full(len(centred), np.nan)
    dist = np.linalg.norm(centred - centred[-1:], axis=-1)  # [E]
    moved = dist[0]  # so that the first row is exactly 1
    size = np.linalg.norm(centred[[0, -1]], axis=-1).max()
    if not moved > _PATTERN_RTOL * size:
        return np.full(len(centred), np.nan)
    return dist / moved


def pattern_distance(mu: np.ndarray) -> np.ndarray:
    """||c(μ_t) − c(μ_T)|| / ||c(μ_T)|| for each row t of mu [E, C], T the last row (NaN when c(μ_T) = 0)."""
    centred = _centred(mu)
    return _rel_dist(centred, centred[-1:])


def _kind_columns(a: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"epoch": a["epoch"], f"count_{kind}": a["count"].sum(axis=1)}
    for name, fn in (("std", _std_mean), ("stripe", _stripe), ("cos", _cos)):
        r = _interval(fn, a, name)
        cols[f"{name}_{kind}"] = r["value"]
        cols[f"{name}_{kind}_lo"], cols[f"{name}_{kind}_hi"] = r["lo"], r["hi"]
    return cols


def _after_extras(a: dict[str, np.ndarray], saturation: float, dead_tol: float) -> dict[str, np.ndarray]:
    tot = _total(a)
    mu = tot["mean"]
    e, c = mu.shape
    drift = np.full(e, np.nan)
    if e > 1:
        drift[1:] = _rel_dist(mu[1:], mu[:-1])
    dead = np.maximum(np.abs(tot["min"]), np.abs(tot["max"])) <= dead_tol
    sat = ((mu < saturation) | (mu > 1.0 - saturation)) & ~dead
    is_gate = (tot["min"].min(axis=1, initial=np.inf) >= 0.0) & (tot["max"].max(axis=1, initial=-np.inf) <= 1.0)
    frac = np.where(is_gate & (c > 0), sat.sum(axis=1) / max(c, 1), np.nan)
    return {"channels": np.full(e, c, dtype=np.int64), "drift_prev": drift, "dist_final": _rel_dist(mu, mu[-1:]),
            "settle_dist": settle_distance(mu), "pattern_dist_final": pattern_distance(mu), "saturated_frac": frac,
            "dead_channels": dead.sum(axis=1).astype(np.int64)}


_TAP_COLUMNS = [
    "epoch", "tap", *TAP_META, "channels", "count",
    "std_after", "std_after_lo", "std_after_hi", "std_before", "std_before_lo", "std_before_hi",
    "stripe_after", "stripe_after_lo", "stripe_after_hi", "stripe_before", "stripe_before_lo", "stripe_before_hi",
    "cos_after", "cos_after_lo", "cos_after_hi", "cos_before", "cos_before_lo", "cos_before_hi",
    "drift_prev", "dist_final", "settle_dist", "pattern_dist_final", "saturated_frac", "dead_channels",
    "hidden_width", "dead_hidden", "flag",
]  # fmt: skip


def _tap_table(groups: dict[tuple[str, str], dict[str, np.ndarray]], meta: pd.DataFrame, saturation: float,
               dead_tol: float) -> pd.DataFrame:
    per_tap: dict[str, pd.DataFrame] = {}
    manifest_channels = dict(zip(meta["tap"], meta["channels"]))
    for (tap, kind), a in groups.items():
        if kind == HIDDEN:  # a unit is dead when it is zero for every probe image (post-ReLU: max <= dead_tol)
            d = {"epoch": a["epoch"], "dead_hidden": (a["max"].max(axis=1) <= dead_tol).sum(axis=1)}
            df = pd.DataFrame(d)
            per_tap[tap] = df if tap not in per_tap else per_tap[tap].merge(df, on="epoch", how="outer")
            continue
        d = _kind_columns(a, kind)
        if kind == "after":
            c = a["mean"].shape[-1]
            want = manifest_channels.get(tap)
            if want is not None and not pd.isna(want) and int(want) != c:
                raise UserError(f"tap {tap!r} (after): {c} channels in the stats, {int(want)} in the manifest")
            d.update(_after_extras(a, saturation, dead_tol))
        df = pd.DataFrame(d)
        per_tap[tap] = df if tap not in per_tap else per_tap[tap].merge(df, on="epoch", how="outer")
    parts = []
    for tap, df in per_tap.items():
        df.insert(1, "tap", tap)
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    for col in _TAP_COLUMNS:
        if col not in df.columns and col not in TAP_META and col not in ("flag", "count", "hidden_width"):
            df[col] = np.nan
    count = df.get("count_after", pd.Series(np.nan, index=df.index)).fillna(df.get("count_before"))
    df["count"] = count.astype("Int64")
    df = df.drop(columns=[c for c in ("count_after", "count_before") if c in df.columns])
    df = df.rename(columns={"channels": "_channels"})
    df = df.merge(meta.assign(_order=np.arange(len(meta))), on="tap", how="left", validate="many_to_one")
    df["channels"] = pd.array(df["_channels"].fillna(df["channels"]), dtype="Int64")
    channels = pd.to_numeric(df["channels"]).to_numpy(dtype=np.float64, na_value=np.nan)
    dead = pd.to_numeric(df["dead_channels"]).to_numpy(dtype=np.float64, na_value=np.nan)
    sat = df["saturated_frac"].to_numpy(dtype=np.float64)
    width = pd.to_numeric(df["hidden_width"]).to_numpy(dtype=np.float64, na_value=np.nan)
    dead_h = pd.to_numeric(df["dead_hidden"]).to_numpy(dtype=np.float64, na_value=np.nan)
    # every hidden unit dead: the gate is exactly constant across images, by the dead units, not by learning
    # values that are not finite (NaN or inf: a diverged model) leave S undefined, not 1
    nonfinite = df["stripe_after"].isna().to_numpy() & (pd.to_numeric(df["count"]).fillna(0).to_numpy() > 0)
    df["flag"] = np.select([nonfinite, df["asr"].to_numpy(dtype=bool), sat > 0.5, (dead == channels) & (channels > 0),
                            (dead_h == width) & (width > 0)],
                           ["nonfinite", "asr", "saturated", "dead", "hidden_dead"], default="")
    df["dead_channels"] = pd.array(df["dead_channels"], dtype="Int64")
    df["dead_hidden"] = pd.array(df["dead_hidden"], dtype="Int64")
    df["epoch"] = df["epoch"].astype(np.int64)
    for col in ("stage", "block", "depth", "call"):
        df[col] = pd.array(df[col], dtype="Int64")
    df["asr"] = df["asr"].astype(bool)
    df = df.sort_values(["epoch", "_order"], kind="stable", ignore_index=True)
    return df[_TAP_COLUMNS]


def _check_tap_params(saturation: float, dead_tol: float) -> None:
    if not 0.0 <= saturation < 0.5:
        raise UserError(f"saturation must be in [0, 0.5), got {saturation}")
    if dead_tol < 0:
        raise UserError(f"dead_tol must be >= 0, got {dead_tol}")


# the tables' default parameters (a thinned recording's stored tables were computed with these)
SATURATION, DEAD_TOL, SETTLE_EPS, STRIPE_THRESHOLD = 0.02, 1e-6, 0.1, 0.9


def tap_table(rec: Recording | str | os.PathLike[str], *, saturation: float = SATURATION,
              dead_tol: float = DEAD_TOL) -> pd.DataFrame:
    """Per (epoch, tap): metadata, std/stripe/cos of after and before with jackknife intervals, drift_prev
    (||μ_t − μ_prev|| / ||μ_prev||), dist_final (||μ_t − μ_T|| / ||μ_T||), settle_dist and pattern_dist_final
    (μ centred over channels: see the module docstring), saturated_frac, dead_channels and flag."""
    _check_tap_params(saturation, dead_tol)
    rec = _as_recording(rec)
    return _tap_table(_groups(rec), _tap_meta(rec), saturation, dead_tol)


def require_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    """Raise a one-line :class:`~stripe.errors.UserError` if a table lacks columns."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{what} lacks columns {missing}")


def settle_epoch(epochs: np.ndarray, ok: np.ndarray) -> float:
    """The first epoch t >= 1 before the last checkpoint from which ``ok`` holds at every later checkpoint; NaN if
    none (epoch 0 never counts, nor does the last checkpoint alone)."""
    epochs, ok = np.asarray(epochs), np.asarray(ok, dtype=bool)
    if not len(epochs):
        return np.nan
    later = epochs >= 1
    e1, ok1 = epochs[later], ok[later]
    bad = np.flatnonzero(~ok1)
    start = int(bad[-1]) + 1 if len(bad) else 0
    return float(e1[start]) if start < len(e1) and e1[start] < epochs.max() else np.nan


def _check_eps(eps: float) -> None:
    if not 0.0 < eps < 1.0:
        raise UserError(f"eps must be in (0, 1) (the settling distance is 1 at the first checkpoint), got {eps}")


def convergence_table(taps: pd.DataFrame, *, eps: float = SETTLE_EPS, threshold: float = STRIPE_THRESHOLD) -> pd.DataFrame:
    """Per tap: settle_epoch (settle_dist < eps for good, from an epoch >= 1 before the last), convergence_epoch
    (settled and stripe_after > threshold for good), the stripe index at init / first trained / final checkpoint,
    pattern_change (pattern_dist_final at the first checkpoint) and ``init_settled`` (epoch 0 passing the settling
    test: False by construction; None without epoch 0). See the module docstring."""
    require_columns(taps, ["epoch", "tap", "settle_dist", "stripe_after", "flag"], "taps table")
    _check_eps(eps)
    meta_cols = [c for c in (*TAP_META, "channels") if c in taps.columns]
    rows = []
    for tap, g in taps.groupby("tap", sort=False, observed=True):
        g = g.sort_values("epoch", kind="stable")
        epochs = g["epoch"].to_numpy(dtype=np.int64)
        stripe = g["stripe_after"].to_numpy(dtype=np.float64)
        settle = g["settle_dist"].to_numpy(dtype=np.float64) < eps
        pattern = g["pattern_dist_final"].to_numpy(dtype=np.float64) if "pattern_dist_final" in g else [np.nan]
        init, first = stripe[epochs == 0], stripe[epochs >= 1]
        row = {"tap": tap, **{c: g[c].iloc[-1] for c in meta_cols}}
        row.update(
            first_epoch=int(epochs[0]), final_epoch=int(epochs[-1]),
            stripe_init=float(init[0]) if len(init) else np.nan,
            stripe_first=float(first[0]) if len(first) else np.nan,
            stripe_final=float(stripe[-1]), pattern_change=float(pattern[0]),
            init_settled=bool(settle[epochs == 0][0]) if (epochs == 0).any() else None,
            settle_epoch=settle_epoch(epochs, settle),
            convergence_epoch=settle_epoch(epochs, settle & (stripe > threshold)),
            eps=float(eps), threshold=float(threshold), flag=g["flag"].iloc[-1])
        row["settled"] = not np.isnan(row["settle_epoch"])
        row["converged"] = not np.isnan(row["convergence_epoch"])
        rows.append(row)
    cols = ["tap", *meta_cols, "first_epoch", "final_epoch", "stripe_init", "stripe_first", "stripe_final",
            "pattern_change", "init_settled", "settle_epoch", "settled", "convergence_epoch", "converged", "eps",
            "threshold", "flag"]
    out = pd.DataFrame(rows, columns=cols)
    for c in meta_cols:
        if len(out):
            out[c] = out[c].astype(taps[c].dtype)
    return out


_STAGE_STATS = ("stripe", "std", "cos")


def _stage_table(groups: dict[tuple[str, str], dict[str, np.ndarray]], meta: pd.DataFrame) -> pd.DataFrame:
    """Per (epoch, stage, asr): mean over taps of S/std/cos (after, before) with jackknife intervals of the mean."""
    by_tap = meta.set_index("tap")
    keys: dict[tuple[Any, bool], list[str]] = {}
    for tap in meta["tap"]:
        stage = by_tap.at[tap, "stage"]
        keys.setdefault((None if pd.isna(stage) else int(stage), bool(by_tap.at[tap, "asr"])), []).append(tap)
    rows = []
    for (stage, asr), tap_list in keys.items():
        cols: dict[str, Any] = {}
        epochs = None
        for kind in KINDS:
            arrays = [groups[(t, kind)] for t in tap_list if (t, kind) in groups]
            if not arrays:
                continue
            common = sorted(set.intersection(*(set(a["epoch"].tolist()) for a in arrays)))
            pick = [np.isin(a["epoch"], common) for a in arrays]
            epochs = np.asarray(common)
            k = min(a["count"].shape[1] for a in arrays)
            for name, fn in (("stripe", _stripe), ("std", _std_mean), ("cos", _cos)):
                full, loo = [], []
                for a, m in zip(arrays, pick):
                    sub = {key: (v[m] if key != "epoch" else v[m]) for key, v in a.items()}
                    full.append(np.asarray(fn(*_tot4(sub)), dtype=np.float64))
                    if k >= 2:
                        loo.append(_loo_values(fn, sub))
                value = np.mean(full, axis=0)
                cols[f"{name}_{kind}"] = value
                if k >= 2 and all(x.shape == loo[0].shape for x in loo):
                    jk = jackknife_interval(value, np.mean(loo, axis=0), name)
                    cols[f"{name}_{kind}_lo"], cols[f"{name}_{kind}_hi"] = jk["lo"], jk["hi"]
                else:
                    cols[f"{name}_{kind}_lo"] = cols[f"{name}_{kind}_hi"] = np.full(len(value), np.nan)
            if kind == "after":
                cols["stripe_after_pooled"] = _pooled_stripe([{key: v[m] for key, v in a.items()}
                                                              for a, m in zip(arrays, pick)])
        if epochs is None:
            continue
        frame = pd.DataFrame({"epoch": epochs, "stage": stage, "asr": asr, "n_taps": len(tap_list), **cols})
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out["stage"] = pd.array(out["stage"], dtype="Int64")
    return out.sort_values(["epoch", "stage", "asr"], kind="stable", ignore_index=True)


def _tot4(a: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    t = _total(a)
    return t["count"], t["mean"], t["m2"], t["unit_sum"]


def _pooled_stripe(arrays: list[dict[str, np.ndarray]]) -> np.ndarray:
    """S of the stage's taps' channels taken together (equal channel counts only; else NaN)."""
    totals = [_total(a) for a in arrays]
    n = {int(x) for t in totals for x in t["count"]}
    if len(n) != 1:
        return np.full(len(totals[0]["count"]), np.nan)
    mean = np.concatenate([t["mean"] for t in totals], axis=-1)
    m2 = np.concatenate([t["m2"] for t in totals], axis=-1)
    return stripe_index_from_moments(totals[0]["count"], mean, m2)


def stage_summary(rec: Recording | str | os.PathLike[str]) -> pd.DataFrame:
    """Per (epoch, stage, asr): n_taps; stripe/std/cos after and before as means over the stage's taps, each
    with a jackknife interval; stripe_after_pooled. ASR taps (constant by construction) are kept apart."""
    rec = _as_recording(rec)
    return _stage_table(_groups(rec), _tap_meta(rec))


def compute_tables(rec_or_path: Recording | str | os.PathLike[str], *, saturation: float = SATURATION,
                   dead_tol: float = DEAD_TOL, eps: float = SETTLE_EPS,
                   threshold: float = STRIPE_THRESHOLD) -> dict[str, pd.DataFrame]:
    """All tables of a recording: {'channels', 'taps', 'convergence', 'stages'} (statistics read once).

    The taps and stage tables of epochs whose statistics a recording no longer holds (a thinned recording) are
    the ones it stored (:meth:`~stripe.record.Recording.stored_tables`; computed with the default ``saturation``
    and ``dead_tol``); convergence follows the taps table with any ``eps`` and ``threshold``; the channel table
    holds the epochs whose statistics are there.
    """
    _check_tap_params(saturation, dead_tol)
    _check_eps(eps)
    rec = _as_recording(rec_or_path)
    groups, meta = _groups(rec), _tap_meta(rec)
    stored = rec.stored_tables()  # {} unless the recording is thinned: then its tables of every epoch
    if stored:
        if (saturation, dead_tol) != (SATURATION, DEAD_TOL):
            raise UserError(f"{rec.path} is thinned (epochs {rec.thinned.get('kept')} of {len(rec.thinned['epochs'])} "
                            f"kept): its tables were computed with saturation {SATURATION:g} and dead_tol "
                            f"{DEAD_TOL:g} before thinning")
        if "pattern_dist_final" not in stored["taps"].columns:
            stored = _upgrade_saved_tables(stored)
        taps, stages = stored["taps"], stored["stages"]
    else:
        taps, stages = _tap_table(groups, meta, saturation, dead_tol), _stage_table(groups, meta)
    return {"channels": _channel_table(groups, meta), "taps": taps,
            "convergence": convergence_table(taps, eps=eps, threshold=threshold), "stages": stages}


def _upgrade_saved_tables(saved: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Taps and stage tables stored by an earlier version (settle_dist relative to ||c(μ_T)||, plain intervals)
    in today's terms.

    The earlier settle_dist is today's ``pattern_dist_final``; today's settle_dist is it divided by its value at
    the first checkpoint (exactly the module docstring's definition). The earlier plain intervals cannot be
    recomputed (the folds' moments of the dropped epochs are gone): they are clipped into their statistic's range.
    """
    taps = saved["taps"].copy()
    taps = taps.sort_values(["epoch"], kind="stable")
    old = taps["settle_dist"].to_numpy(dtype=np.float64)
    first = taps.groupby("tap", sort=False, observed=True)["settle_dist"].transform("first").to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.where(first > _PATTERN_RTOL, old / np.where(first > 0, first, 1.0), np.nan)
    taps.insert(taps.columns.get_loc("settle_dist") + 1, "pattern_dist_final", old)
    taps["settle_dist"] = new
    taps = taps.sort_index()
    out = dict(saved)
    for name in ("taps", "stages"):
        df = taps if name == "taps" else saved[name].copy()
        for stat, (low, high) in RANGES.items():
            for col in [c for c in df.columns if c.startswith(f"{stat}_") and c.endswith(("_lo", "_hi"))]:
                df[col] = df[col].clip(low, high)
        out[name] = df
    return out


def aggregate_seeds(stages: Sequence[pd.DataFrame], level: float = 0.95) -> pd.DataFrame:
    """Stage tables of several runs (seeds) of one variant: per (epoch, stage, asr) the mean over runs and a
    t-interval over runs on the statistic's transformed scale (``*_lo``/``*_hi``, inside its range; NaN with
    one run: :func:`seed_interval`) of every stage statistic; ``n_runs``."""
    if not stages:
        raise UserError("no stage tables to aggregate")
    values = [c for c in stages[0].columns if any(c == f"{s}_{k}" for s in _STAGE_STATS for k in KINDS)]
    long = pd.concat([s.assign(_run=i) for i, s in enumerate(stages)], ignore_index=True)
    rows = []
    for (epoch, stage, asr), g in long.groupby(["epoch", "stage", "asr"], sort=True, dropna=False):
        row: dict[str, Any] = {"epoch": epoch, "stage": stage, "asr": asr, "n_runs": g["_run"].nunique()}
        for c in values:
            m, lo, hi = seed_interval(g[c].to_numpy(dtype=np.float64), c.split("_")[0], level)
            row.update({c: m, f"{c}_lo": lo, f"{c}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each table as <name>.parquet, plus <name>.csv for taps/convergence/stages/seeds; atomic writes."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for name, df in tables.items():
        if not name or Path(name).name != name:
            raise UserError(f"table name must be a plain file stem, got {name!r}")
        written.append(atomic_write(out_dir / f"{name}.parquet", lambda f, df=df: df.to_parquet(f, index=False)))
        if name in _CSV_TABLES:
            text = df.to_csv(index=False, float_format="%.6g")
            written.append(atomic_write(out_dir / f"{name}.csv", lambda f, t=text: f.write(t.encode("utf-8"))))
    return written


def _fmt(x: Any) -> str:
    return "nan" if x is None or pd.isna(x) else f"{float(x):.3f}"


def _ci(row: pd.Series, col: str) -> str:
    """'0.512 [0.498, 0.526]' (value and 95 % interval, when there is one)."""
    v, lo, hi = row.get(col), row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if lo is None or pd.isna(lo):
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _stage_label(stage: Any, n: int, only: bool) -> str:
    """'stage 2 (3 taps)'; taps without a stage (a model without stages): 'all 9 taps' or 'taps without a stage'."""
    taps = f"{n} tap{'s' if n != 1 else ''}"
    if stage is None or pd.isna(stage):
        return f"all {taps}" if only else f"taps without a stage ({taps})"
    return f"stage {int(stage)} ({taps})"


def summary_text(tables: Mapping[str, pd.DataFrame]) -> str:
    """A short human summary of what applies: stripe index after vs before per stage from the first trained epoch
    on (the initialisation apart), ASR taps, settling (with three checkpoints or more), flags (when any)."""
    stages, conv, taps = tables["stages"], tables.get("convergence"), tables.get("taps")
    if len(stages) == 0:
        return "no checkpoints recorded\n"
    epochs = sorted(stages["epoch"].unique().tolist())
    trained = [e for e in epochs if e >= 1]
    last = epochs[-1]
    first = trained[0] if trained else last
    lines: list[str] = []
    attn = stages[~stages["asr"].astype(bool)]
    if len(attn):
        if not trained:
            span = f"epoch {last} (the initialisation only: untrained, not a finding)"
        else:
            span = f"epoch {first}" if first == last else f"epoch {first} -> {last}"
        folds = any(attn[f"stripe_{k}_lo"].notna().any() for k in KINDS if f"stripe_{k}_lo" in attn.columns)
        how = "; 95% jackknife interval over probe folds" if folds else ""
        groups = list(attn.groupby("stage", sort=True, dropna=False))
        staged = not (len(groups) == 1 and pd.isna(groups[0][0]))
        over = ("a stage's " if staged else "the ") + ("non-ASR taps" if stages["asr"].astype(bool).any() else "taps")
        lines.append(f"Stripe index S (mean over {over}{how}), after (attention) vs before (its pooled input), "
                     f"{span}:")
        for stage, g in groups:
            at = lambda e, g=g: g[g["epoch"] == e].iloc[0] if (g["epoch"] == e).any() else None
            parts = []
            for col, name in (("stripe_after", "after"), ("stripe_before", "before")):
                a, b = at(first), at(last)
                if b is None or col not in b or pd.isna(b[col]):
                    continue
                text = _ci(b, col)
                if a is not None and first != last:
                    text = f"{_ci(a, col)} -> {text}"
                parts.append(f"{name} {text}")
            label = _stage_label(stage, int(g["n_taps"].iloc[0]), len(groups) == 1)
            lines.append(f"  {label}: " + (" | ".join(parts) if parts else "no values"))
        init = attn[attn["epoch"] == 0]
        if len(init) and trained:
            lines.append("  initialisation (epoch 0, untrained: its channel pattern comes from random biases, "
                         "not a finding): "
                         + ", ".join(f"{_stage_label(r.stage, int(r.n_taps), len(init) == 1).split(' (')[0]} "
                                     f"after {_fmt(r.stripe_after)}" for r in init.itertuples()))
    asr_last = stages[stages["asr"].astype(bool) & (stages["epoch"] == last)]
    if len(asr_last):
        n_asr = int(asr_last["n_taps"].sum())
        lines.append(f"ASR taps: {n_asr}, constant over images by construction (their input ψ is a learned "
                     f"constant; S_after = {_fmt((asr_last['stripe_after'] * asr_last['n_taps']).sum() / n_asr)}); "
                     "not a finding.")
    if conv is not None and len(conv) and len(epochs) >= 3:
        c = conv[~conv["asr"].astype(bool)] if "asr" in conv.columns else conv
        if len(c):
            done = c["settle_epoch"].dropna()
            ref = int(c["first_epoch"].min())
            eps = float(conv["eps"].iloc[0])
            start = "since the initialisation" if ref == 0 else f"since epoch {ref}, the first recorded"
            text = (f"Settling (μ's channel pattern within {eps:g} of the final one, relative to how far it moved "
                    f"{start}; from an epoch >= 1 before the last): {len(done)} of {len(c)} non-ASR taps")
            if len(done):
                text += f"; median epoch {done.median():g} (range {done.min():g}-{done.max():g})"
            if "pattern_change" in c.columns:
                kept = c["pattern_change"].to_numpy(dtype=np.float64) < eps
                if kept.any():
                    text += (f"; {int(kept.sum())} kept the pattern they started with (change < {eps:g} of the "
                             "final pattern)")
            lines.append(text + ".")
    if taps is not None and len(taps):
        bad = taps[taps["flag"] == "nonfinite"]
        if len(bad):
            lines.insert(0, f"Attention values not finite (NaN or inf: a diverged model) in {bad['tap'].nunique()} tap(s) at "
                            f"epoch(s) {', '.join(str(e) for e in sorted(set(bad['epoch'])))}: their statistics are NaN.")
        final = taps[taps["epoch"] == taps["epoch"].max()]
        counts = final.loc[final["flag"].isin(["saturated", "dead", "hidden_dead"]), "flag"].value_counts()
        names = {"saturated": "saturated", "dead": "dead", "hidden_dead": "every hidden unit dead (a constant gate)"}
        found = [f"{names[n]} {int(counts[n])}" for n in names if counts.get(n, 0)]
        if found:
            lines.append(f"Flags at epoch {last}: {', '.join(found)} tap(s).")
        if "dead_hidden" in final.columns and final["hidden_width"].notna().any():
            h = final[final["hidden_width"].notna() & ~final["asr"].astype(bool)]
            if len(h):
                parts = [f"{t.tap.rsplit('.tap', 1)[0]} {int(t.dead_hidden)}/{int(t.hidden_width)}"
                         for t in h.itertuples() if pd.notna(t.dead_hidden)]
                widths = sorted({int(w) for w in h["hidden_width"]})
                lines.append(f"Hidden layers at epoch {last} (widths {', '.join(map(str, widths))}): dead units "
                             + ", ".join(parts) + ".")
            a = final[final["hidden_width"].notna() & final["asr"].astype(bool)]
            a = a[(a["dead_hidden"] == a["hidden_width"]).fillna(False).astype(bool)]
            if len(a):  # ψ is one input: a dead unit stays dead, and only an output bias can still move the vector
                lines.append(f"ASR taps with every hidden unit dead at epoch {last}: {len(a)} "
                             f"({', '.join(t.rsplit('.tap', 1)[0] for t in a['tap'])}); each vector can change only "
                             "through the module's output bias, and is frozen at sigmoid(0) = 0.5 where it has none "
                             "(CBAM, SPA).")
    return "\n".join(lines) + "\n"
