"""Streaming per-channel statistics of attention matrices: exact moments, merges, folds and the jackknife.

An attention tap yields, per probe batch, a matrix ``a`` of shape [N, C] (images x channels).
:func:`batch_moments` reduces one batch on its own device in float64 (no host sync; the mean of
equal values is then exact, so a constant channel has a standard deviation of exactly 0), per
fold of the probe set when fold ids are given; :class:`ChannelStats` and :class:`FoldStats`
merge such moments exactly (Welford/Chan) in float64 on the CPU, so a recording streams any
number of probe images through a tap and keeps O(K x C) numbers per tap. Folds are disjoint
subsets of the probe images; leaving one out at a time gives jackknife intervals of every
statistic from the same exact merge (:func:`jackknife`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Sequence

import numpy as np
import torch
from ..errors import UserError

__all__ = [
    "MOMENT_KEYS",
    "ChannelStats",
    "FoldStats",
    "batch_moments",
    "constant_moments",
    "fold_counts",
    "jackknife",
    "jackknife_stat",
    "leave_one_out",
    "mean_cosine_from_moments",
    "merge_fold_arrays",
    "stripe_index_from_moments",
]

#: the per-channel float moments, in storage order (with ``count`` these are what a recording keeps)
MOMENT_KEYS: tuple[str, ...] = ("mean", "m2", "min", "max", "unit_sum")

# --------------------------------------------------------------------------------------
# per-batch moments (on the tensor's device)
# --------------------------------------------------------------------------------------


def batch_moments(a: torch.Tensor, folds: torch.Tensor | None = None, k: int = 1,
                  segments: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Per-channel moments of one [N, C] batch in float64, computed on its device without a host sync.

    Leading axes batch independent matrices: [*T, N, C] gives moments of shape [*T, C] (one
    reduction for many taps at once) and ``count`` is the scalar N. With ``folds`` (int64 [N], values
    in 0..k-1) the moments are kept per fold: shapes [*T, k, C] and ``count`` [k]. Every sum is of
    float32 (or narrower) values in float64, so the mean of equal values is exact and a constant
    channel's ``m2`` is exactly 0. ``segments`` (channel counts summing to C) says that a row holds
    several taps side by side: each is normalised over its own channels for ``unit_sum``; by default
    each row of ``a`` is normalised as a whole.
    """
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"batch_moments expects a torch.Tensor, got {type(a).__name__}")
    if a.ndim < 2:
        raise UserError(f"batch_moments expects a [N, C] (or [*T, N, C]) tensor, got shape {tuple(a.shape)}")
    if a.is_complex():
        raise TypeError(f"batch_moments expects a real tensor, got {a.dtype}")
    x = a.detach().to(torch.float64)
    n, c = x.shape[-2], x.shape[-1]
    if folds is None:
        folds = torch.zeros(n, dtype=torch.int64, device=x.device)
        squeeze = True
    else:
        if folds.shape != (n,):
            raise UserError(f"folds must be [N] = [{n}], got {tuple(folds.shape)}")
        folds = folds.to(device=x.device, dtype=torch.int64)
        squeeze = False
    lead = x.shape[:-2]
    shape = (*lead, k, c)  # [*T, K, C]
    count = fold_counts(folds, k)  # [K]
    index = folds.view(*([1] * len(lead)), n, 1).expand(*lead, n, c)  # [*T, N, C]
    total = x.new_zeros(shape).scatter_add_(-2, index, x)
    mean = total / count.clamp(min=1).to(x.dtype)[:, None]  # exact for equal values
    m2 = x.new_zeros(shape).scatter_add_(-2, index, (x - mean.gather(-2, index)).square())
    if segments is not None and (sum(segments) != c or min(segments, default=0) < 1):
        raise UserError(f"segments must be positive channel counts summing to {c}, got {list(segments)}")
    parts = x.split(list(segments), dim=-1) if segments is not None else (x,)
    # a row with zero norm is all zeros, so dividing it by 1 makes it contribute 0
    unit = torch.cat([p / torch.where(n > 0, n, torch.ones_like(n))
                      for p, n in ((p, torch.linalg.vector_norm(p, dim=-1, keepdim=True)) for p in parts)], dim=-1)
    out = {
        "count": count,
        "mean": mean,
        "m2": m2,
        "min": x.new_full(shape, math.inf).scatter_reduce_(-2, index, x, "amin"),
        "max": x.new_full(shape, -math.inf).scatter_reduce_(-2, index, x, "amax"),
        "unit_sum": x.new_zeros(shape).scatter_add_(-2, index, unit),
    }
    if squeeze:
        out = {key: (v[0] if key == "count" else v.squeeze(-2)) for key, v in out.items()}
    return out


def fold_counts(folds: torch.Tensor, k: int) -> torch.Tensor:
    """Images per fold, int64 [K], on the device without a host sync (``bincount`` would sync on CUDA)."""
    return torch.zeros(k, dtype=torch.int64, device=folds.device).scatter_add_(0, folds, torch.ones_like(folds))


def constant_moments(v: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact per-fold moments of identical rows v [C], ``counts[k]`` rows in fold k ([K] int64)."""
    v = v.detach().to(torch.float64)
    norm = torch.linalg.vector_norm(v)
    unit = v / torch.where(norm > 0, norm, torch.ones_like(norm))
    k = counts.shape[0]
    rows = v.expand(k, -1)  # [K, C]
    present = (counts > 0)[:, None]
    return {"count": counts, "mean": torch.where(present, rows, torch.zeros_like(rows)), "m2": torch.zeros_like(rows),
            "min": torch.where(present, rows, torch.full_like(rows, math.inf)),
            "max": torch.where(present, rows, torch.full_like(rows, -math.inf)),
            "unit_sum": unit * counts.to(v.dtype)[:, None]}


# --------------------------------------------------------------------------------------
# formulas on merged moments (vectorised over leading axes)
# --------------------------------------------------------------------------------------


def stripe_index_from_moments(count: Any, mean: Any, m2: Any) -> np.ndarray:
    """Stripe index S = between-channel / total sum of squares, over the last axis (C); 1.0 where both are 0 (a
    constant vector), nan where a channel's moments are not finite (a diverged model) or nothing was counted."""
    count = np.asarray(count, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    m2 = np.asarray(m2, dtype=np.float64)
    if mean.shape[-1] == 0:
        return np.full(np.broadcast_shapes(count.shape, mean.shape[:-1]), np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite moments give nan
        within = m2.sum(axis=-1)
        between = count * np.square(mean - mean.mean(axis=-1, keepdims=True)).sum(axis=-1)
        denom = within + between
        s = np.where(denom > 0, 1.0 - within / np.where(denom > 0, denom, 1.0), 1.0)
    return np.where((count > 0) & np.isfinite(denom), s, np.nan)


def mean_cosine_from_moments(count: Any, mean: Any, unit_sum: Any) -> np.ndarray:
    """Mean over images of cos(a_n, mu) = (unit_sum . mu) / (count * ||mu||), over the last axis."""
    count = np.asarray(count, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    unit_sum = np.asarray(unit_sum, dtype=np.float64)
    norm = np.sqrt(np.square(mean).sum(axis=-1))
    dot = (unit_sum * mean).sum(axis=-1)
    denom = count * norm
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), np.nan)


# --------------------------------------------------------------------------------------
# streaming accumulator
# --------------------------------------------------------------------------------------


def _to_numpy64(x: Any) -> np.ndarray:
    """A tensor/array as a float64 numpy array on the CPU."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.array(x, dtype=np.float64)  # copies: the stats own their arrays


class ChannelStats:
    """Streaming per-channel statistics of an [N, C] matrix: exact (Welford/Chan) merge, float64 on the CPU.

    A fresh object is the empty state (``count_ == 0``, zero channels), the identity of
    :meth:`merge`. Fitted attributes: ``count_`` (int) and the float64 [C] arrays ``mean_``,
    ``m2_`` (sum of squared deviations from the mean), ``min_``, ``max_`` and ``unit_sum_``
    (sum over images of a_n / ||a_n||).
    """

    def __init__(self) -> None:
        self.count_: int = 0
        self.mean_: np.ndarray = np.zeros(0)
        self.m2_: np.ndarray = np.zeros(0)
        self.min_: np.ndarray = np.zeros(0)
        self.max_: np.ndarray = np.zeros(0)
        self.unit_sum_: np.ndarray = np.zeros(0)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def _from_arrays(
        cls,
        count: int,
        mean: np.ndarray,
        m2: np.ndarray,
        min: np.ndarray,  # noqa: A002 - mirrors the column name
        max: np.ndarray,  # noqa: A002
        unit_sum: np.ndarray,
    ) -> ChannelStats:
        """Stats holding the given (already merged) moments."""
        arrays = [np.array(v, dtype=np.float64).reshape(-1) for v in (mean, m2, min, max, unit_sum)]
        if len({v.shape[0] for v in arrays}) != 1:
            raise UserError(f"moment arrays differ in length: {[v.shape[0] for v in arrays]}")
        if count < 0:
            raise UserError(f"count must be >= 0, got {count}")
        self = cls()
        self.count_ = int(count)
        self.mean_, self.m2_, self.min_, self.max_, self.unit_sum_ = arrays
        return self

    def update(self, a: torch.Tensor | np.ndarray) -> ChannelStats:
        """Add the rows of an [N, C] tensor or array; returns self."""
        if not isinstance(a, torch.Tensor):
            arr = np.asarray(a)
            if not np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float64)
            a = torch.from_numpy(np.ascontiguousarray(arr))
        return self.merge_moments(batch_moments(a))

    def merge_moments(self, m: Mapping[str, Any]) -> ChannelStats:
        """Merge one :func:`batch_moments` dict (moved to the CPU as float64); returns self."""
        missing = [k for k in ("count", *MOMENT_KEYS) if k not in m]
        if missing:
            raise UserError(f"moments dict lacks keys {missing}")
        count = m["count"]
        count = int(count.item()) if isinstance(count, torch.Tensor) else int(np.asarray(count))
        other = self._from_arrays(count, *(_to_numpy64(m[k]) for k in MOMENT_KEYS))
        return self.merge(other)

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Merge another ChannelStats into this one in place (Chan's exact formula); returns self."""
        if not isinstance(other, ChannelStats):
            raise TypeError(f"can only merge ChannelStats, got {type(other).__name__}")
        if self.channels and other.channels and self.channels != other.channels:
            raise UserError(f"channel count mismatch: {self.channels} != {other.channels}")
        if other.count_ == 0:
            if not self.channels and other.channels:  # adopt the channel count, stay empty
                self.mean_, self.m2_, self.min_, self.max_, self.unit_sum_ = (
                    other.mean_.copy(), other.m2_.copy(), other.min_.copy(),
                    other.max_.copy(), other.unit_sum_.copy(),
                )  # fmt: skip
            return self
        if self.count_ == 0:
            self.count_ = other.count_
            self.mean_, self.m2_, self.min_, self.max_, self.unit_sum_ = (
                other.mean_.copy(), other.m2_.copy(), other.min_.copy(),
                other.max_.copy(), other.unit_sum_.copy(),
            )  # fmt: skip
            return self
        na, nb = self.count_, other.count_
        n = na + nb
        delta = other.mean_ - self.mean_
        self.mean_ = self.mean_ + delta * (nb / n)
        self.m2_ = self.m2_ + other.m2_ + np.square(delta) * (na * nb / n)
        self.min_ = np.minimum(self.min_, other.min_)
        self.max_ = np.maximum(self.max_, other.max_)
        self.unit_sum_ = self.unit_sum_ + other.unit_sum_
        self.count_ = n
        return self

    # -- derived quantities ------------------------------------------------------------

    @property
    def channels(self) -> int:
        """Number of channels C (0 while unknown)."""
        return int(self.mean_.shape[0])

    @property
    def var_(self) -> np.ndarray:
        """Population variance per channel (ddof=0); nan when empty."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.m2_ / self.count_ if self.count_ else np.full(self.channels, np.nan)

    @property
    def std_(self) -> np.ndarray:
        """Population standard deviation per channel (ddof=0)."""
        return np.sqrt(self.var_)

    @property
    def cv_(self) -> np.ndarray:
        """Coefficient of variation std / |mean| per channel; nan where mean == 0."""
        absmean = np.abs(self.mean_)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(absmean > 0, self.std_ / np.where(absmean > 0, absmean, 1.0), np.nan)

    def stripe_index(self) -> float:
        """S = 1 - sum M2 / (sum M2 + count * sum (mean_c - mean_bar)^2); 1.0 if that is 0/0, nan if empty."""
        return float(stripe_index_from_moments(self.count_, self.mean_, self.m2_))

    def mean_cosine(self) -> float:
        """Mean over images of cos(a_n, mu) for the mean vector mu; nan if ||mu|| == 0 or empty."""
        return float(mean_cosine_from_moments(self.count_, self.mean_, self.unit_sum_))

    def __repr__(self) -> str:
        return f"ChannelStats(count_={self.count_}, channels={self.channels})"


# --------------------------------------------------------------------------------------
# folds: exact merges over a fold axis, leave-one-fold-out, the jackknife
# --------------------------------------------------------------------------------------


def merge_fold_arrays(count: np.ndarray, mean: np.ndarray, m2: np.ndarray, min: np.ndarray,  # noqa: A002
                      max: np.ndarray, unit_sum: np.ndarray) -> dict[str, np.ndarray]:  # noqa: A002
    """Exact merge over the group axis: count [..., G], moments [..., G, C] -> count [...], moments [..., C].

    M2 = sum_g M2_g + sum_g n_g (mean_g - mean)^2 (the multi-group form of Chan's merge); empty
    groups contribute nothing.
    """
    count = np.asarray(count, dtype=np.int64)
    n = count.sum(axis=-1)  # [...]
    w = count.astype(np.float64)[..., None]  # [..., G, 1]
    live = w > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite moments stay NaN/inf
        mu = np.where(n[..., None] > 0, (w * mean).sum(axis=-2) / np.maximum(n, 1)[..., None], 0.0)  # [..., C]
        dev = np.where(live, np.square(mean - mu[..., None, :]), 0.0)
    return {
        "count": n,
        "mean": mu,
        "m2": np.where(live, m2, 0.0).sum(axis=-2) + (w * dev).sum(axis=-2),
        "min": np.where(live, min, np.inf).min(axis=-2),
        "max": np.where(live, max, -np.inf).max(axis=-2),
        "unit_sum": np.where(live, unit_sum, 0.0).sum(axis=-2),
    }


def leave_one_out(count: np.ndarray, mean: np.ndarray, m2: np.ndarray,
                  unit_sum: np.ndarray) -> dict[str, np.ndarray]:
    """Moments of all folds but one, for each fold left out: count [..., K] and moments [..., K, C] in, the same
    shapes out (index k = every fold except k), each an exact merge of the K - 1 others."""
    k = count.shape[-1]
    keep = ~np.eye(k, dtype=bool)  # [K(left out), K(kept)]
    c = np.where(keep, np.asarray(count)[..., None, :], 0)  # [..., K, K]
    expand = lambda a: np.broadcast_to(a[..., None, :, :], (*a.shape[:-2], k, k, a.shape[-1]))  # [..., K, K, C]
    inf = np.full_like(np.asarray(mean, dtype=np.float64), np.inf)
    merged = merge_fold_arrays(c, expand(mean), expand(m2), expand(inf), expand(-inf), expand(unit_sum))
    return {key: merged[key] for key in ("count", "mean", "m2", "unit_sum")}


def jackknife(full: np.ndarray, loo: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Jackknife standard error and interval of a statistic over K leave-one-fold-out values.

    ``full`` [...]: the statistic on all folds; ``loo`` [..., K]: on all folds but k. SE =
    sqrt((K-1)/K sum_k (θ_k - mean θ)^2); interval full ± t_{(1+level)/2, K-1} SE. NaN when K < 2.
    """
    from scipy import stats

    loo = np.asarray(loo, dtype=np.float64)
    k = loo.shape[-1]
    full = np.asarray(full, dtype=np.float64)
    if k < 2:
        nan = np.full(full.shape, np.nan)
        return {"se": nan, "lo": nan, "hi": nan}
    with np.errstate(invalid="ignore"):
        se = np.sqrt((k - 1) / k * np.square(loo - loo.mean(axis=-1, keepdims=True)).sum(axis=-1))
    t = float(stats.t.ppf(0.5 + level / 2, k - 1))
    return {"se": se, "lo": full - t * se, "hi": full + t * se}


class FoldStats:
    """Per-fold streaming statistics of an [N, C] matrix: count_ [K] and float64 [K, C] moments.

    Folds are disjoint subsets of the rows (a recording assigns the image at position i of its recorded order
    to fold i mod K; the order is the manifest's ``probe_order``).
    :meth:`total` is the exact merge over folds (identical to :class:`ChannelStats` of all rows).
    """

    def __init__(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray, min: np.ndarray,  # noqa: A002
                 max: np.ndarray, unit_sum: np.ndarray) -> None:  # noqa: A002
        self.count_ = np.asarray(count, dtype=np.int64).reshape(-1)
        arrays = [np.asarray(v, dtype=np.float64) for v in (mean, m2, min, max, unit_sum)]
        if any(a.ndim != 2 or a.shape[0] != self.count_.shape[0] for a in arrays):
            raise UserError(f"fold moments must be [K, C] with K = {self.count_.shape[0]}, got "
                             f"{[a.shape for a in arrays]}")
        self.mean_, self.m2_, self.min_, self.max_, self.unit_sum_ = arrays

    @property
    def folds(self) -> int:
        """Number of folds K."""
        return int(self.count_.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return int(self.mean_.shape[1])

    @classmethod
    def from_moments_list(cls, moments: Iterable[Mapping[str, Any]]) -> "FoldStats":
        """Merge per-batch :func:`batch_moments` dicts with fold axes (count [K], moments [K, C]) exactly."""
        moments = list(moments)
        if not moments:
            raise UserError("no moments to merge")
        keys = ("count", *MOMENT_KEYS)
        # one device-to-host transfer per key: stack on the device, then move
        stacked = {k: torch.stack([torch.as_tensor(m[k]) for m in moments]).cpu().numpy() for k in keys}
        count = stacked["count"].astype(np.int64)  # [B, K]
        merged = merge_fold_arrays(np.moveaxis(count, 0, -1), *(np.moveaxis(stacked[k], 0, -2) for k in MOMENT_KEYS))
        return cls(merged["count"], merged["mean"], merged["m2"], merged["min"], merged["max"], merged["unit_sum"])

    def total(self) -> ChannelStats:
        """The exact merge over every fold."""
        m = merge_fold_arrays(self.count_, self.mean_, self.m2_, self.min_, self.max_, self.unit_sum_)
        return ChannelStats._from_arrays(int(m["count"]), m["mean"], m["m2"], m["min"], m["max"], m["unit_sum"])

    def __repr__(self) -> str:
        return f"FoldStats(folds={self.folds}, count_={int(self.count_.sum())}, channels={self.channels})"


def jackknife_stat(fn: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray], count: np.ndarray,
                   mean: np.ndarray, m2: np.ndarray, unit_sum: np.ndarray,
                   level: float = 0.95) -> dict[str, np.ndarray]:
    """``fn(count, mean, m2, unit_sum)`` on all folds (value) and its jackknife se/lo/hi over the fold axis.

    Inputs: count [..., K], moments [..., K, C]; ``fn`` maps count [...] and moments [..., C] to [...]
    (or [..., C]) and is applied to the total and to each leave-one-out merge.
    """
    inf = np.full_like(np.asarray(mean, dtype=np.float64), np.inf)
    tot = merge_fold_arrays(count, mean, m2, inf, -inf, unit_sum)
    value = np.asarray(fn(tot["count"], tot["mean"], tot["m2"], tot["unit_sum"]), dtype=np.float64)
    loo = leave_one_out(count, mean, m2, unit_sum)
    theta = np.asarray(fn(loo["count"], loo["mean"], loo["m2"], loo["unit_sum"]), dtype=np.float64)  # [..., K(, C)]
    if value.ndim == np.ndim(count):  # a per-channel statistic: [..., K, C] -> [..., C, K]
        theta = np.moveaxis(theta, -2, -1)
    return {"value": value, **jackknife(value, theta, level)}
