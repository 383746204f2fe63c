"""Tidy pandas tables of the Stripe Observation from a recording, every statistic with an interval.

Recordings are read through :mod:`stripe.record.format`. Only checkpoints listed in the manifest
count; epochs are the checkpoints' epoch numbers, never positions.

Tables (long format, tap metadata from the manifest merged in):

* ``channels``    -- per (epoch, tap, kind, channel): count, mean, std (+ interval), cv, min, max
* ``taps``        -- per (epoch, tap): spread (absolute and scale-free), stripe index, cosine (each +
  interval), drift, settling distance, pattern distance, saturation, flags
* ``convergence`` -- per tap: the settling epoch (first epoch >= 1 from which μ stays settled)
* ``stages``      -- per (epoch, stage, asr): stripe index, spread (absolute and scale-free) and cosine per
  stage, with intervals
* ``trend``       -- per tap and per stage: the least-squares slope of the spread against epoch over the
  second half of training, with an interval (see "Trend" below)

Definitions (A is N x C at one tap and checkpoint, N probe images, C channels):

* σ_c is the population standard deviation of A[:, c] (ddof = 0); ``std_*`` is its mean over
  channels (the paper's statistic, Fig. 1b: how far each channel is from a constant, in A's units);
  cv_c = σ_c / |μ_c|. A σ_c below 1e-12 of the channel's root mean square is the round-off
  of merging exact moments in float64 (recorded values are float32 or narrower, resolution ~1e-7) and
  is reported as 0;
* ``rstd_*`` = ``std_*`` / RMS(A), RMS(A) = sqrt(mean over images and channels of A²): the same spread
  relative to the size of the values, scale-free (A and λA give the same rstd), so the attention
  ("after") compares with its pooled input ("before"). It lies in [0, 1] (mean σ_c <= sqrt(mean σ_c²)
  <= sqrt(mean (σ_c² + μ_c²)) = RMS), is 0 exactly when every channel is constant and NaN only when A
  is all zero. It is relative to the values' distance from 0, not to how far apart the channel means
  sit: a gate near 0.5 reads about twice its std, a pooled input centred near 0 reads near 1; compare
  its trend, not its level, between after and before. (The spread relative to the spread of the channel
  means, Σσ_c² / Σ(μ_c − μ̄)², adds nothing: it is (1 − S) / S, a function of S);
* stripe index S = 1 − Σ(A[n,c] − μ_c)² / Σ(A[n,c] − μ̄)², the share of A's variance explained by
  the channel alone (1 = perfect stripes). S measures stripes *relative to how far apart the channel
  means sit*: it can fall while every σ_c falls too (the means drawing together faster), so it does not
  say whether the attention approaches a constant; the spread (``std_*``, ``rstd_*``) and its trend do;
* a tap is *constant* (kind ``before``: its input; ``after``: its output) when A has no variance at all,
  within channels or across them: Σ(A[n,c] − μ̄)² <= (1e-12)² · ΣA[n,c]², i.e. A's standard deviation is
  below 1e-12 of its RMS (all zero included). That bound is the σ_c rule above applied to the whole tap:
  float64 merges of equal values leave at most ~1e-15 of RMS, while any real difference between float32
  values (one unit in the last place, 6e-8 relative, in one of N·C values) leaves at least
  6e-8 / sqrt(N·C) > 1e-12 for N·C < 3.6e9. S is then 0/0: it is reported NaN (never 1), with its
  interval, and so is S after of a tap whose input is constant (its attention, a function of a constant,
  is then constant across images by construction). Flags ``constant_input`` / ``constant_output``
  (ASR taps apart: their input ψ is constant by construction; they keep the flag 'asr' alone and their
  S as computed, 1 where 0/0);
* ``cos_*``: mean over images of cos(A[n], μ);
* a stage's S (``stripe_after`` in ``stages``) is the **mean over its taps** of each tap's S, and its
  interval the jackknife of that mean (the folds are shared by every tap); the same for std, rstd and
  cos. A tap whose statistic is NaN because it is constant (above) is left out of that mean (NaN when
  every tap is); a non-finite tap makes it NaN. ``stripe_after_pooled`` is S of the stage's taps'
  channels taken together (needs the same image count at every tap, else NaN; NaN too when constant);
* a channel is *dead* when every recorded value is zero within ``dead_tol``; *saturated* when not
  dead and its mean is < ``saturation`` or > 1 − ``saturation`` (gates only, values in [0, 1]);
* ``flag`` (taps): 'nonfinite' (values NaN or inf: every statistic NaN) or 'asr' alone; otherwise
  every flag that applies, ';'-joined in this order: 'constant_input', 'constant_output', 'saturated'
  (more than half the channels), 'dead' (every channel), 'hidden_dead' (every hidden unit); '' for
  none. Flags are never findings.

Intervals (``*_lo``/``*_hi``, 95 %; their maths in :mod:`stripe.analysis.intervals`) stay inside their
statistic's range: S and rstd in [0, 1], std >= 0, cosine in [-1, 1]. Each is a jackknife over the recording's K folds of the probe set (fold k
holds probe images i with i mod K = k; every statistic is recomputed with one fold left out, from the
same exact moments) computed on a scale where the range is the whole real line, and mapped back:
logit(S), logit(rstd), log(std), atanh(cos). With θ the statistic on every fold, θ_k without fold k and g the
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

Trend (the ``trend`` table). Does the spread fall during training, as the paper's Fig. 1b claims? Per tap
and per stage (the stage mean over taps, as above), for kinds after and before and for ``std`` and
``rstd``: the least-squares slope b of the statistic against epoch (units per epoch) over the *window*,
the recorded epochs e >= 1 with e >= (last epoch) / 2 (the second half of training; epoch 0, the
initialisation, never counts); when fewer than two epochs qualify, the last two recorded epochs >= 1
(``epoch_from``, ``epoch_to``, ``n_epochs``; NaN with fewer than two). Its 95 % interval is the plain
jackknife over the K probe folds (a slope has no bounded range): each fold left out in turn, the
statistic of every window epoch is recomputed from the same moments and its slope b_k taken;
b ± t_{K−1, 0.975} · sqrt((K−1)/K · Σ(b_k − mean b_·)²) (NaN with K = 1; [b, b] when every b_k equals
b). ``direction`` is 'falls' when the interval lies below 0, 'rises' above 0, 'unclear' when it
contains 0, '' without an interval. ``ratio`` = value at ``epoch_to`` / value at ``epoch_from`` (NaN
when the latter is 0). :func:`trend_from_tables` gives the same point slopes from written taps and stage
tables alone (no folds: no interval), for results whose recordings are gone; a thinned recording's trend
is that too.

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
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..fsio import atomic_write
from ..record.format import ALL_KINDS, HIDDEN, KINDS, Recording, check_layout
from .intervals import RANGES, jackknife_interval, seed_interval
from ..record.moments import (MOMENT_KEYS, jackknife, leave_one_out, mean_cosine_from_moments, merge_fold_arrays,
                              stripe_index_from_moments)

__all__ = [
    "RANGES", "TAP_META", "TREND_STATS", "aggregate_seeds", "channel_table", "compute_tables", "convergence_table",
    "jackknife_interval", "ols_slope", "pattern_distance", "seed_interval", "settle_distance", "settle_epoch",
    "stage_summary", "summary_text", "tap_table", "trend_from_tables", "trend_window", "write_tables",
]

#: tap metadata merged from the manifest into every table (after the ``tap`` column)
TAP_META: tuple[str, ...] = ("module", "stage", "block", "depth", "call", "attn", "asr")
#: the tables that are written as CSV beside their Parquet
CSV_TABLES = ("taps", "convergence", "stages", "trend", "seeds")


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
        cnt = g["count"].to_numpy().reshape(e, k, c)
        check_layout(tap, kind, g["channel"].to_numpy().reshape(e, k, c), g["fold"].to_numpy().reshape(e, k, c), cnt)
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


def _rms(c: np.ndarray, mu: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """RMS(A) = sqrt(mean over images and channels of A²) from the moments: sqrt(mean_c (m2_c / n + μ_c²))."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ms = (m2 / np.asarray(c, dtype=np.float64)[..., None] + np.square(mu)).mean(axis=-1)
    return np.sqrt(ms)


def _rstd(c: np.ndarray, mu: np.ndarray, m2: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Mean over channels of σ_c divided by RMS(A): in [0, 1], NaN where A is all zero (module docstring)."""
    std, rms = _std_mean(c, mu, m2, u), _rms(c, mu, m2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rms > 0, np.minimum(std / np.where(rms > 0, rms, 1.0), 1.0), np.nan)


def _constant(c: np.ndarray, mu: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Whether A has no variance within or across channels (its std <= 1e-12 of its RMS; all zero included).

    Σ(A − μ̄)² = Σ_c m2_c + n Σ_c (μ_c − μ̄)² and ΣA² = Σ_c (m2_c + n μ_c²); False where a moment is not finite.
    """
    n = np.asarray(c, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        total = (m2 + n * np.square(mu - mu.mean(axis=-1, keepdims=True))).sum(axis=-1)
        square = (m2 + n * np.square(mu)).sum(axis=-1)
        return np.isfinite(total) & np.isfinite(square) & (total <= _STD_RTOL**2 * square)


def _stripe(c, mu, m2, u) -> np.ndarray:
    """S as computed (1 where 0/0): the ASR taps' reporting."""
    return stripe_index_from_moments(c, mu, m2)


def _stripe_defined(c, mu, m2, u) -> np.ndarray:
    """S, NaN where A is constant (S is 0/0 there): every tap but ASR taps."""
    return np.where(_constant(c, mu, m2), np.nan, stripe_index_from_moments(c, mu, m2))


def _cos(c, mu, m2, u) -> np.ndarray:
    return mean_cosine_from_moments(c, mu, u)


# --------------------------------------------------------------------------------------
# intervals that stay inside their statistic's range (see the module docstring)
# --------------------------------------------------------------------------------------

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


def _stat_fns(asr: bool) -> tuple[tuple[str, Any], ...]:
    """(name, fn(count, mean, m2, unit_sum)) of every per-tap statistic; an ASR tap keeps S as computed."""
    return (("std", _std_mean), ("rstd", _rstd), ("stripe", _stripe if asr else _stripe_defined), ("cos", _cos))


def _kind_columns(a: dict[str, np.ndarray], kind: str, asr: bool) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"epoch": a["epoch"], f"count_{kind}": a["count"].sum(axis=1)}
    for name, fn in _stat_fns(asr):
        r = _interval(fn, a, name)
        cols[f"{name}_{kind}"] = r["value"]
        cols[f"{name}_{kind}_lo"], cols[f"{name}_{kind}_hi"] = r["lo"], r["hi"]
    cols[f"_constant_{kind}"] = _constant(*_tot4(a)[:3])
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
    "rstd_after", "rstd_after_lo", "rstd_after_hi", "rstd_before", "rstd_before_lo", "rstd_before_hi",
    "stripe_after", "stripe_after_lo", "stripe_after_hi", "stripe_before", "stripe_before_lo", "stripe_before_hi",
    "cos_after", "cos_after_lo", "cos_after_hi", "cos_before", "cos_before_lo", "cos_before_hi",
    "drift_prev", "dist_final", "settle_dist", "pattern_dist_final", "saturated_frac", "dead_channels",
    "hidden_width", "dead_hidden", "flag",
]  # fmt: skip


def _tap_table(groups: dict[tuple[str, str], dict[str, np.ndarray]], meta: pd.DataFrame, saturation: float,
               dead_tol: float) -> pd.DataFrame:
    per_tap: dict[str, pd.DataFrame] = {}
    manifest_channels = dict(zip(meta["tap"], meta["channels"]))
    is_asr = {t: bool(x) for t, x in zip(meta["tap"], meta["asr"])}
    for (tap, kind), a in groups.items():
        if kind == HIDDEN:  # a unit is dead when it is zero for every probe image (post-ReLU: max <= dead_tol)
            d = {"epoch": a["epoch"], "dead_hidden": (a["max"].max(axis=1) <= dead_tol).sum(axis=1)}
            df = pd.DataFrame(d)
            per_tap[tap] = df if tap not in per_tap else per_tap[tap].merge(df, on="epoch", how="outer")
            continue
        d = _kind_columns(a, kind, is_asr.get(tap, False))
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
    asr = df["asr"].to_numpy(dtype=bool)
    const_in, const_out = (df[c].fillna(False).to_numpy(dtype=bool) if c in df.columns else np.zeros(len(df), bool)
                           for c in ("_constant_before", "_constant_after"))
    # values that are not finite (NaN or inf: a diverged model) leave S undefined, not 1 (a constant tap's S is
    # NaN for another reason: it is 0/0)
    nonfinite = (df["stripe_after"].isna().to_numpy() & (pd.to_numeric(df["count"]).fillna(0).to_numpy() > 0)
                 & ~const_in & ~const_out)
    # a constant input makes the attention constant across images by construction: its S says nothing
    df.loc[const_in & ~asr, ["stripe_after", "stripe_after_lo", "stripe_after_hi"]] = np.nan
    # every hidden unit dead: the gate is exactly constant across images, by the dead units, not by learning
    named = [(const_in, "constant_input"), (const_out, "constant_output"), (sat > 0.5, "saturated"),
             ((dead == channels) & (channels > 0), "dead"), ((dead_h == width) & (width > 0), "hidden_dead")]
    joined = [";".join(name for mask, name in named if mask[i]) for i in range(len(df))]
    df["flag"] = np.where(nonfinite, "nonfinite", np.where(asr, "asr", np.asarray(joined, dtype=object)))
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


_STAGE_STATS = ("stripe", "std", "rstd", "cos")


def _stage_keys(meta: pd.DataFrame) -> dict[tuple[Any, bool], list[str]]:
    """{(stage, asr): taps in manifest order}: a stage's ASR taps are kept apart (constant by construction)."""
    by_tap = meta.set_index("tap")
    keys: dict[tuple[Any, bool], list[str]] = {}
    for tap in meta["tap"]:
        stage = by_tap.at[tap, "stage"]
        keys.setdefault((None if pd.isna(stage) else int(stage), bool(by_tap.at[tap, "asr"])), []).append(tap)
    return keys


def _constant_at(groups: dict[tuple[str, str], dict[str, np.ndarray]], tap: str, kind: str,
                 epochs: np.ndarray) -> np.ndarray:
    """Whether (tap, kind) is constant at each of ``epochs`` (False where it was not recorded)."""
    a = groups.get((tap, kind))
    if a is None:
        return np.zeros(len(epochs), dtype=bool)
    const = dict(zip(a["epoch"].tolist(), _constant(*_tot4(a)[:3]).tolist()))
    return np.array([bool(const.get(e, False)) for e in np.asarray(epochs).tolist()], dtype=bool)


def _stage_series(groups: dict[tuple[str, str], dict[str, np.ndarray]],
                  meta: pd.DataFrame) -> dict[tuple[Any, bool], dict[str, Any]]:
    """Per (stage, asr): n_taps and, per kind, the epochs its taps share, each statistic's stage mean over taps
    [E] and its leave-one-fold-out values [E, K] (None with one fold), and pooled S (kind after).

    A tap whose statistic is NaN because it is constant (S after also when its input is) is left out of the
    mean at that epoch; a NaN for any other reason (non-finite values) makes the mean NaN.
    """
    out: dict[tuple[Any, bool], dict[str, Any]] = {}
    for (stage, asr), tap_list in _stage_keys(meta).items():
        entry: dict[str, Any] = {"n_taps": len(tap_list), "kinds": {}}
        for kind in KINDS:
            present = [t for t in tap_list if (t, kind) in groups]
            if not present:
                continue
            arrays = [groups[(t, kind)] for t in present]
            common = np.asarray(sorted(set.intersection(*(set(a["epoch"].tolist()) for a in arrays))))
            subs = [{key: v[np.isin(a["epoch"], common)] for key, v in a.items()} for a in arrays]
            k = min(a["count"].shape[1] for a in arrays)
            folds = k >= 2 and len({a["count"].shape[1] for a in arrays}) == 1
            const = [_constant_at(groups, t, kind, common) for t in present]
            const_in = [_constant_at(groups, t, "before", common) for t in present]
            stats: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
            fns = dict(_stat_fns(asr))
            for name in _STAGE_STATS:  # the stage table's column order
                fn, full, loo, skip = fns[name], [], [], []
                for sub, c_out, c_in in zip(subs, const, const_in):
                    v = np.asarray(fn(*_tot4(sub)), dtype=np.float64)
                    cause = c_out | (c_in if (name == "stripe" and kind == "after" and not asr) else False)
                    if name == "stripe" and kind == "after" and not asr:
                        v = np.where(c_in, np.nan, v)
                    skip.append(np.isnan(v) & cause)
                    full.append(v)
                    if folds:
                        loo.append(_loo_values(fn, sub))
                stats[name] = _mean_over_taps(full, loo if folds else None, skip)
            kind_entry: dict[str, Any] = {"epochs": common, "stats": stats}
            if kind == "after":
                kind_entry["pooled"] = _pooled_stripe(subs, defined=not asr)
            entry["kinds"][kind] = kind_entry
        if entry["kinds"]:
            out[(stage, asr)] = entry
    return out


def _mean_over_taps(full: list[np.ndarray], loo: list[np.ndarray] | None,
                    skip: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over taps of full [E] (and of loo [E, K]) leaving out, per epoch, the taps marked in skip [E]."""
    f, keep = np.stack(full), ~np.stack(skip)  # [T, E]
    n = keep.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n > 0, np.where(keep, f, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
        if loo is None:
            return value, None
        rep = np.where(keep[..., None], np.stack(loo), 0.0).sum(axis=0) / np.maximum(n, 1)[:, None]  # [E, K]
    return value, np.where((n > 0)[:, None], rep, np.nan)


def _stage_table(groups: dict[tuple[str, str], dict[str, np.ndarray]], meta: pd.DataFrame,
                 series: dict[tuple[Any, bool], dict[str, Any]] | None = None) -> pd.DataFrame:
    """Per (epoch, stage, asr): mean over taps of S/std/rstd/cos (after, before) with jackknife intervals of the
    mean, and pooled S."""
    series = _stage_series(groups, meta) if series is None else series
    rows = []
    for (stage, asr), entry in series.items():
        cols: dict[str, Any] = {}
        epochs = None
        for kind, ke in entry["kinds"].items():
            epochs = ke["epochs"]
            for name, (value, loo) in ke["stats"].items():
                cols[f"{name}_{kind}"] = value
                if loo is not None:
                    jk = jackknife_interval(value, loo, name)
                    cols[f"{name}_{kind}_lo"], cols[f"{name}_{kind}_hi"] = jk["lo"], jk["hi"]
                else:
                    cols[f"{name}_{kind}_lo"] = cols[f"{name}_{kind}_hi"] = np.full(len(value), np.nan)
            if kind == "after":
                cols["stripe_after_pooled"] = ke["pooled"]
        frame = pd.DataFrame({"epoch": epochs, "stage": stage, "asr": asr, "n_taps": entry["n_taps"], **cols})
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out["stage"] = pd.array(out["stage"], dtype="Int64")
    return out.sort_values(["epoch", "stage", "asr"], kind="stable", ignore_index=True)


def _tot4(a: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    t = _total(a)
    return t["count"], t["mean"], t["m2"], t["unit_sum"]


def _pooled_stripe(arrays: list[dict[str, np.ndarray]], defined: bool = True) -> np.ndarray:
    """S of the stage's taps' channels taken together (equal image counts only; else NaN); with ``defined``, NaN
    where they are constant (0/0)."""
    totals = [_total(a) for a in arrays]
    n = {int(x) for t in totals for x in t["count"]}
    if len(n) != 1:
        return np.full(len(totals[0]["count"]), np.nan)
    mean = np.concatenate([t["mean"] for t in totals], axis=-1)
    m2 = np.concatenate([t["m2"] for t in totals], axis=-1)
    s = stripe_index_from_moments(totals[0]["count"], mean, m2)
    return np.where(_constant(totals[0]["count"], mean, m2), np.nan, s) if defined else s


# --------------------------------------------------------------------------------------
# trend of the spread over the second half of training
# --------------------------------------------------------------------------------------

#: the statistics whose trend is taken, and the kinds
TREND_STATS: tuple[str, ...] = ("std", "rstd")
_TREND_COLUMNS = ["scope", "tap", *TAP_META, "n_taps", "kind", "stat", "epoch_from", "epoch_to", "n_epochs", "slope",
                  "slope_lo", "slope_hi", "direction", "value_from", "value_to", "ratio", "flag"]


def trend_window(epochs: Any) -> np.ndarray:
    """Which of ``epochs`` the trend uses: those >= 1 and >= half the last epoch, else the last two >= 1 (a
    boolean mask in the given order; all False with fewer than two epochs >= 1)."""
    e = np.asarray(epochs, dtype=np.float64)
    mask = np.zeros(len(e), dtype=bool)
    trained = np.flatnonzero(e >= 1)
    if len(trained) < 2:
        return mask
    mask[trained] = e[trained] >= e.max() / 2
    if mask.sum() < 2:
        mask[:] = False
        mask[trained[np.argsort(e[trained], kind="stable")[-2:]]] = True
    return mask


def ols_slope(x: Any, y: Any) -> np.ndarray:
    """Least-squares slope of y [..., W] against x [W] (NaN where a y is NaN)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean()
    return (xc * (y - y.mean(axis=-1, keepdims=True))).sum(axis=-1) / np.square(xc).sum()


def _trend_values(epochs: np.ndarray, value: np.ndarray, loo: np.ndarray | None, level: float) -> dict[str, Any]:
    """The trend columns of one series: value [E] at ``epochs`` [E], leave-one-fold-out values loo [E, K] or None."""
    w = trend_window(epochs)
    row: dict[str, Any] = {"epoch_from": np.nan, "epoch_to": np.nan, "n_epochs": int(w.sum()), "slope": np.nan,
                           "slope_lo": np.nan, "slope_hi": np.nan, "direction": "", "value_from": np.nan,
                           "value_to": np.nan, "ratio": np.nan}
    if w.sum() < 2:
        return row
    order = np.argsort(np.asarray(epochs, dtype=np.float64)[w], kind="stable")
    x = np.asarray(epochs, dtype=np.float64)[w][order]
    y = np.asarray(value, dtype=np.float64)[w][order]
    b = float(ols_slope(x, y))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = y[-1] / y[0] if y[0] != 0 else np.nan
    row.update(epoch_from=x[0], epoch_to=x[-1], slope=b, value_from=y[0], value_to=y[-1], ratio=ratio)
    if loo is not None and loo.shape[-1] >= 2:
        bk = ols_slope(x, np.asarray(loo, dtype=np.float64)[w][order].T)  # [K]: the slope without fold k
        jk = jackknife(np.float64(b), bk, level)
        lo, hi = float(jk["lo"]), float(jk["hi"])
        if np.isfinite(lo) and np.isfinite(hi):
            row.update(slope_lo=lo, slope_hi=hi,
                       direction="falls" if hi < 0 else ("rises" if lo > 0 else "unclear"))
    return row


def _trend_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The trend table of rows, with its columns and dtypes."""
    out = pd.DataFrame(rows, columns=_TREND_COLUMNS)
    for col in ("stage", "block", "depth", "call", "n_taps", "n_epochs"):
        out[col] = pd.array(pd.to_numeric(out[col]), dtype="Int64")
    out["asr"] = out["asr"].astype(bool)
    out["flag"] = out["flag"].fillna("").astype(str)
    return out


def _last_flags(taps: pd.DataFrame | None) -> dict[str, str]:
    """Each tap's flag at its last epoch."""
    if taps is None or "flag" not in taps.columns or not len(taps):
        return {}
    last = taps.sort_values("epoch", kind="stable").groupby("tap", sort=False, observed=True).tail(1)
    return {str(t): ("" if pd.isna(f) else str(f)) for t, f in zip(last["tap"], last["flag"])}


def _trend_table(groups: dict[tuple[str, str], dict[str, np.ndarray]], meta: pd.DataFrame,
                 series: dict[tuple[Any, bool], dict[str, Any]], taps: pd.DataFrame | None,
                 level: float = 0.95) -> pd.DataFrame:
    """The trend table from a recording's moments: slopes with jackknife intervals (module docstring)."""
    fns = {"std": _std_mean, "rstd": _rstd}
    rows: list[dict[str, Any]] = []
    for (stage, asr), entry in series.items():
        for kind in KINDS:
            ke = entry["kinds"].get(kind)
            for stat in TREND_STATS if ke is not None else ():
                value, loo = ke["stats"][stat]
                rows.append({"scope": "stage", "tap": None, "stage": stage, "asr": asr, "n_taps": entry["n_taps"],
                             "kind": kind, "stat": stat, "flag": "", **_trend_values(ke["epochs"], value, loo, level)})
    flags = _last_flags(taps)
    by_tap = meta.set_index("tap")
    for tap in meta["tap"]:
        for kind in KINDS:
            a = groups.get((tap, kind))
            if a is None:
                continue
            folds = a["count"].shape[1] >= 2
            for stat in TREND_STATS:
                value = np.asarray(fns[stat](*_tot4(a)), dtype=np.float64)
                loo = _loo_values(fns[stat], a) if folds else None
                rows.append({"scope": "tap", "tap": tap, **{c: by_tap.at[tap, c] for c in TAP_META}, "n_taps": 1,
                             "kind": kind, "stat": stat, "flag": flags.get(tap, ""),
                             **_trend_values(a["epoch"], value, loo, level)})
    return _trend_frame(rows)


def trend_from_tables(taps: pd.DataFrame, stages: pd.DataFrame) -> pd.DataFrame:
    """The trend table's point slopes from written taps and stage tables (e.g. their CSVs) alone: no folds, so no
    interval (``slope_lo``/``slope_hi`` NaN, ``direction`` ''); statistics whose columns a table lacks (``rstd``
    in tables written before it existed) are left out."""
    require_columns(taps, ["epoch", "tap"], "taps table")
    require_columns(stages, ["epoch", "stage", "asr", "n_taps"], "stage table")
    rows: list[dict[str, Any]] = []
    st = stages.assign(_stage=pd.to_numeric(stages["stage"]), _asr=stages["asr"].astype(bool))
    for (stage, asr), g in st.groupby(["_stage", "_asr"], sort=True, dropna=False):
        g = g.sort_values("epoch", kind="stable")
        for kind in KINDS:
            for stat in TREND_STATS:
                col = f"{stat}_{kind}"
                if col not in g.columns:
                    continue
                rows.append({"scope": "stage", "tap": None, "stage": None if pd.isna(stage) else int(stage),
                             "asr": bool(asr), "n_taps": int(g["n_taps"].iloc[0]), "kind": kind, "stat": stat,
                             "flag": "", **_trend_values(g["epoch"].to_numpy(), g[col].to_numpy(dtype=np.float64),
                                                         None, 0.95)})
    flags = _last_flags(taps)
    for tap, g in taps.groupby("tap", sort=False, observed=True):
        g = g.sort_values("epoch", kind="stable")
        meta = {c: g[c].iloc[0] if c in g.columns else None for c in TAP_META}
        meta["asr"] = bool(meta["asr"]) if meta["asr"] is not None and not pd.isna(meta["asr"]) else False
        for kind in KINDS:
            for stat in TREND_STATS:
                col = f"{stat}_{kind}"
                if col not in g.columns:
                    continue
                rows.append({"scope": "tap", "tap": str(tap), **meta, "n_taps": 1, "kind": kind, "stat": stat,
                             "flag": flags.get(str(tap), ""),
                             **_trend_values(g["epoch"].to_numpy(), g[col].to_numpy(dtype=np.float64), None, 0.95)})
    return _trend_frame(rows)


def stage_summary(rec: Recording | str | os.PathLike[str]) -> pd.DataFrame:
    """Per (epoch, stage, asr): n_taps; stripe/std/cos after and before as means over the stage's taps, each
    with a jackknife interval; stripe_after_pooled. ASR taps (constant by construction) are kept apart."""
    rec = _as_recording(rec)
    return _stage_table(_groups(rec), _tap_meta(rec))


def compute_tables(rec_or_path: Recording | str | os.PathLike[str], *, saturation: float = SATURATION,
                   dead_tol: float = DEAD_TOL, eps: float = SETTLE_EPS,
                   threshold: float = STRIPE_THRESHOLD) -> dict[str, pd.DataFrame]:
    """All tables of a recording: {'channels', 'taps', 'convergence', 'stages', 'trend'} (statistics read once).

    The taps and stage tables of epochs whose statistics a recording no longer holds (a thinned recording) are
    the ones it stored (:meth:`~stripe.record.Recording.stored_tables`; computed with the default ``saturation``
    and ``dead_tol``; ``rstd`` columns an earlier version did not store are NaN at those epochs); convergence
    follows the taps table with any ``eps`` and ``threshold``; the trend is then :func:`trend_from_tables`
    (no intervals); the channel table holds the epochs whose statistics are there.
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
        if "rstd_after" not in stored["taps"].columns or "rstd_after" not in stored["stages"].columns:
            stored = _add_rstd(stored, groups, meta)
        taps, stages = stored["taps"], stored["stages"]
        trend = trend_from_tables(taps, stages)
    else:
        series = _stage_series(groups, meta)
        taps, stages = _tap_table(groups, meta, saturation, dead_tol), _stage_table(groups, meta, series)
        trend = _trend_table(groups, meta, series, taps)
    return {"channels": _channel_table(groups, meta), "taps": taps,
            "convergence": convergence_table(taps, eps=eps, threshold=threshold), "stages": stages, "trend": trend}


def _add_rstd(saved: dict[str, pd.DataFrame], groups: dict[tuple[str, str], dict[str, np.ndarray]],
              meta: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Stored taps and stage tables of an earlier version (no ``rstd``) with today's columns: rstd computed at the
    epochs whose statistics the recording holds, NaN at the others (their moments are gone)."""
    now_taps = _tap_table(groups, meta, SATURATION, DEAD_TOL)
    now_stages = _stage_table(groups, meta)
    out = dict(saved)
    for name, now, keys in (("taps", now_taps, ["epoch", "tap"]), ("stages", now_stages, ["epoch", "stage", "asr"])):
        df = saved[name].copy()
        add = [c for c in now.columns if c.startswith("rstd_") and c not in df.columns]
        if not add:
            continue
        right = now[keys + add].copy()
        if name == "taps":
            df["_key"], right["_key"] = df["tap"].astype(str), right["tap"].astype(str)
            on = ["epoch", "_key"]
            right = right.drop(columns=["tap"])
        else:
            df["_key"] = [-1 if pd.isna(x) else int(x) for x in df["stage"]]
            right["_key"] = [-1 if pd.isna(x) else int(x) for x in right["stage"]]
            df["asr"], right["asr"] = df["asr"].astype(bool), right["asr"].astype(bool)
            on = ["epoch", "_key", "asr"]
            right = right.drop(columns=["stage"])
        merged = df.merge(right, on=on, how="left", validate="one_to_one").drop(columns=["_key"])
        order = [c for c in now.columns if c in merged.columns] + [c for c in merged.columns if c not in now.columns]
        out[name] = merged[order]
    return out


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
        if name in CSV_TABLES:
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


def _epoch_ranges(epochs: Sequence[int]) -> str:
    """'0-3, 5, 7-9' for sorted distinct epochs."""
    es = sorted({int(e) for e in epochs})
    parts, i = [], 0
    while i < len(es):
        j = i
        while j + 1 < len(es) and es[j + 1] == es[j] + 1:
            j += 1
        parts.append(str(es[i]) if i == j else f"{es[i]}-{es[j]}")
        i = j + 1
    return ", ".join(parts)


def _tap_list(rows: pd.DataFrame, most: int = 8) -> str:
    """'3 taps (a, b, c) at epochs 0-2': the taps named (the first ``most``), with the epochs where they are."""
    taps = list(dict.fromkeys(str(t) for t in rows["tap"]))
    named = ", ".join(taps[:most]) + (f" and {len(taps) - most} more" if len(taps) > most else "")
    epochs = sorted(set(rows["epoch"]))
    return (f"{len(taps)} tap{'s' if len(taps) != 1 else ''} ({named}) at epoch{'s' if len(epochs) != 1 else ''} "
            f"{_epoch_ranges(epochs)}")


def _trend_line(trend: pd.DataFrame | None) -> str:
    """One line: the slope of the mean per-channel std after per stage (non-ASR) over the trend window ('' if none)."""
    if trend is None or not len(trend):
        return ""
    t = trend[(trend["scope"] == "stage") & (trend["kind"] == "after") & (trend["stat"] == "std")
              & ~trend["asr"].astype(bool) & trend["slope"].notna()]
    if not len(t):
        return ""
    spans = {(int(a), int(b)) for a, b in zip(t["epoch_from"], t["epoch_to"])}
    span = f"epochs {min(a for a, _ in spans)}-{max(b for _, b in spans)}"
    folds = t["slope_lo"].notna().any()
    parts = []
    for r in t.itertuples():
        ci = f" [{r.slope_lo:+.3g}, {r.slope_hi:+.3g}] {r.direction}" if pd.notna(r.slope_lo) else ""
        label = ("all taps" if len(t) == 1 and pd.isna(r.stage)
                 else _stage_label(r.stage, int(r.n_taps), False).split(" (")[0])
        parts.append(f"{label} {r.slope:+.3g}{ci} (x{r.ratio:.2f})")
    return (f"Mean per-channel std after (the paper's statistic), slope per epoch over {span}"
            f"{' (95% jackknife interval)' if folds else ''} and last/first ratio: " + " | ".join(parts))


def summary_text(tables: Mapping[str, pd.DataFrame]) -> str:
    """A short human summary of what applies: constant taps first (when any), stripe index after vs before per stage
    from the first trained epoch on (the initialisation apart), ASR taps, settling (with three checkpoints or
    more), flags (when any)."""
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
    trend_line = _trend_line(tables.get("trend"))
    if trend_line:
        lines.append(trend_line)
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
        flags = taps["flag"].fillna("").astype(str).str.split(";")
        has = lambda name: flags.map(lambda f: name in f).to_numpy(dtype=bool)  # noqa: E731
        bad = taps[has("nonfinite")]
        if len(bad):
            lines.insert(0, f"Attention values not finite (NaN or inf: a diverged model) in {bad['tap'].nunique()} tap(s) at "
                            f"epoch(s) {', '.join(str(e) for e in sorted(set(bad['epoch'])))}: their statistics are NaN.")
        const = [(what, taps[has(f"constant_{what}")]) for what in ("input", "output")]
        if any(len(d) for _, d in const):
            lines.insert(0, "Constant across the probe images (no variance at all: S is 0/0, reported NaN; not a "
                            "finding): " + "; ".join(f"the {what} of {_tap_list(d)}" for what, d in const if len(d))
                         + ".")
        final = taps[taps["epoch"] == taps["epoch"].max()]
        names = {"saturated": "saturated", "dead": "dead", "hidden_dead": "every hidden unit dead (a constant gate)"}
        last_flags = final["flag"].fillna("").astype(str).str.split(";")
        counts = {n: int(last_flags.map(lambda f, n=n: n in f).sum()) for n in names}
        found = [f"{names[n]} {counts[n]}" for n in names if counts[n]]
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
