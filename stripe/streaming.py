"""Streaming per-channel statistics of attention matrices, and their Parquet storage.

An attention tap yields, per probe batch, a matrix ``a`` of shape [N, C] (images x channels).
:func:`batch_moments` reduces one batch on its own device (no host sync); :class:`ChannelStats`
merges such moments exactly (Welford/Chan) in float64 on the CPU, so a recording can stream
any number of probe images through a tap and keep only O(C) numbers per tap.

The storage schema :data:`STATS_SCHEMA` is fixed: one Parquet file per checkpoint, one row per
(tap, kind, channel), written atomically by :func:`write_stats_parquet`.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .fsio import atomic_write

__all__ = [
    "KINDS",
    "MOMENT_KEYS",
    "STATS_SCHEMA",
    "ChannelStats",
    "batch_moments",
    "mean_cosine_from_moments",
    "read_stats_parquet",
    "stats_to_table",
    "stripe_index_from_moments",
    "table_to_stats",
    "write_stats_parquet",
]

#: the two recorded kinds of a tap: attention values, and the pooled input of the module
KINDS: tuple[str, str] = ("after", "before")

#: the per-channel float moments, in storage order
MOMENT_KEYS: tuple[str, ...] = ("mean", "m2", "min", "max", "unit_sum")

#: fixed Parquet schema of one checkpoint's statistics (column order matters)
STATS_SCHEMA: pa.Schema = pa.schema(
    [
        ("epoch", pa.int32()),
        ("tap", pa.string()),
        ("kind", pa.string()),
        ("channel", pa.int32()),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("m2", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("unit_sum", pa.float64()),
    ]
)


# --------------------------------------------------------------------------------------
# per-batch moments (on the tensor's device)
# --------------------------------------------------------------------------------------


def batch_moments(a: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel moments of one [N, C] batch, computed on its device without a host sync.

    Leading axes batch independent matrices: [*T, N, C] gives moments of shape [*T, C] (one
    reduction for many taps at once); ``count`` is the scalar N.
    """
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"batch_moments expects a torch.Tensor, got {type(a).__name__}")
    if a.ndim < 2:
        raise ValueError(f"batch_moments expects a [N, C] (or [*T, N, C]) tensor, got shape {tuple(a.shape)}")
    if a.is_complex():
        raise TypeError(f"batch_moments expects a real tensor, got {a.dtype}")
    a = a.detach()
    dtype = torch.promote_types(a.dtype, torch.float32) if a.is_floating_point() else torch.float64
    x = a.to(dtype)
    n = x.shape[-2]
    out_shape = (*x.shape[:-2], x.shape[-1])  # [*T, C]
    count = torch.full((), n, dtype=torch.int64, device=x.device)
    if n == 0:  # shapes are known on the host: no sync needed to take this branch
        zeros = x.new_zeros(out_shape)
        return {
            "count": count,
            "mean": zeros,
            "m2": zeros.clone(),
            "min": torch.full(out_shape, float("inf"), dtype=dtype, device=x.device),
            "max": torch.full(out_shape, float("-inf"), dtype=dtype, device=x.device),
            "unit_sum": zeros.clone(),
        }
    mean = x.mean(dim=-2)
    m2 = (x - mean.unsqueeze(-2)).square().sum(dim=-2)
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [*T, N, 1]
    # a row with zero norm is all zeros, so dividing it by 1 makes it contribute 0
    unit = x / torch.where(norms > 0, norms, torch.ones_like(norms))
    return {
        "count": count,
        "mean": mean,
        "m2": m2,
        "min": x.amin(dim=-2),
        "max": x.amax(dim=-2),
        "unit_sum": unit.sum(dim=-2),
    }


# --------------------------------------------------------------------------------------
# formulas on merged moments (vectorised over leading axes)
# --------------------------------------------------------------------------------------


def stripe_index_from_moments(count: Any, mean: Any, m2: Any) -> np.ndarray:
    """Stripe index S = between-channel / total sum of squares, over the last axis (C)."""
    count = np.asarray(count, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    m2 = np.asarray(m2, dtype=np.float64)
    if mean.shape[-1] == 0:
        return np.full(np.broadcast_shapes(count.shape, mean.shape[:-1]), np.nan)
    within = m2.sum(axis=-1)
    between = count * np.square(mean - mean.mean(axis=-1, keepdims=True)).sum(axis=-1)
    denom = within + between
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > 0, 1.0 - within / np.where(denom > 0, denom, 1.0), 1.0)
    return np.where(count > 0, s, np.nan)


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
            raise ValueError(f"moment arrays differ in length: {[v.shape[0] for v in arrays]}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
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
            raise ValueError(f"moments dict lacks keys {missing}")
        count = m["count"]
        count = int(count.item()) if isinstance(count, torch.Tensor) else int(np.asarray(count))
        other = self._from_arrays(count, *(_to_numpy64(m[k]) for k in MOMENT_KEYS))
        return self.merge(other)

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Merge another ChannelStats into this one in place (Chan's exact formula); returns self."""
        if not isinstance(other, ChannelStats):
            raise TypeError(f"can only merge ChannelStats, got {type(other).__name__}")
        if self.channels and other.channels and self.channels != other.channels:
            raise ValueError(f"channel count mismatch: {self.channels} != {other.channels}")
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

    @classmethod
    def from_moments_list(cls, moments: Iterable[Mapping[str, Any]]) -> ChannelStats:
        """Merge many :func:`batch_moments` dicts with one device-to-host transfer."""
        moments = list(moments)
        if not moments:
            return cls()
        tens = [{k: torch.as_tensor(m[k]) for k in ("count", *MOMENT_KEYS)} for m in moments]
        shapes = {tuple(t[k].shape) for t in tens for k in MOMENT_KEYS}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"moments must all be [C] vectors of one C, got shapes {sorted(shapes)}")
        c = next(iter(shapes))[0]
        b = len(tens)
        device = tens[0]["mean"].device
        fdtype = functools.reduce(
            torch.promote_types, (t[k].dtype for t in tens for k in MOMENT_KEYS), torch.float32
        )
        # pack counts (int64) and the stacked float moments as raw bytes: one exact transfer
        blocks = [torch.stack([t["count"].to(device=device, dtype=torch.int64).reshape(()) for t in tens])]
        blocks += [torch.stack([t[k].to(device=device, dtype=fdtype) for t in tens]) for k in MOMENT_KEYS]
        flat = torch.cat([blk.contiguous().reshape(-1).view(torch.uint8) for blk in blocks]).cpu().numpy()
        np_fdtype = torch.empty((), dtype=fdtype).numpy().dtype
        counts = np.frombuffer(flat, dtype=np.int64, count=b, offset=0)
        offset = 8 * b
        stacked = {}
        for k in MOMENT_KEYS:
            stacked[k] = np.frombuffer(flat, dtype=np_fdtype, count=b * c, offset=offset).reshape(b, c)
            stacked[k] = stacked[k].astype(np.float64)
            offset += b * c * np_fdtype.itemsize
        total = int(counts.sum())
        if total == 0:
            return cls._from_arrays(
                0, np.zeros(c), np.zeros(c), np.full(c, np.inf), np.full(c, -np.inf), np.zeros(c)
            )
        w = counts.astype(np.float64)[:, None]
        live = counts > 0
        mean = (w * stacked["mean"]).sum(axis=0) / total
        # exact multi-group (parallel) merge: M2 = sum_b M2_b + sum_b n_b (mean_b - mean)^2
        m2 = stacked["m2"][live].sum(axis=0) + (w * np.square(stacked["mean"] - mean))[live].sum(axis=0)
        return cls._from_arrays(
            total,
            mean,
            m2,
            stacked["min"][live].min(axis=0),
            stacked["max"][live].max(axis=0),
            stacked["unit_sum"][live].sum(axis=0),
        )

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

    # -- tables --------------------------------------------------------------------------

    def to_frame(self, **labels: Any) -> pd.DataFrame:
        """One row per channel: labels..., channel, count, mean, m2, min, max, unit_sum."""
        c = self.channels
        data: dict[str, Any] = {k: [v] * c for k, v in labels.items()}
        data["channel"] = np.arange(c, dtype=np.int32)
        data["count"] = np.full(c, self.count_, dtype=np.int64)
        for k in MOMENT_KEYS:
            data[k] = getattr(self, k + "_").copy()
        return pd.DataFrame(data)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> ChannelStats:
        """Stats from :meth:`to_frame`-like rows of one (tap, kind): the inverse of to_frame."""
        missing = [k for k in ("channel", "count", *MOMENT_KEYS) if k not in df.columns]
        if missing:
            raise ValueError(f"stats frame lacks columns {missing}")
        if len(df) == 0:
            return cls()
        df = df.sort_values("channel", kind="stable")
        channel = df["channel"].to_numpy()
        if not np.array_equal(channel, np.arange(len(df))):
            raise ValueError(f"stats frame channels must be exactly 0..{len(df) - 1}, each once")
        counts = np.unique(df["count"].to_numpy())
        if len(counts) != 1:
            raise ValueError(f"stats frame has differing counts across channels: {counts.tolist()}")
        return cls._from_arrays(int(counts[0]), *(df[k].to_numpy(dtype=np.float64) for k in MOMENT_KEYS))

    def __repr__(self) -> str:
        return f"ChannelStats(count_={self.count_}, channels={self.channels})"


# --------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------


def stats_to_table(epoch: int, stats: Mapping[tuple[str, str], ChannelStats]) -> pa.Table:
    """One checkpoint's stats {(tap, kind): ChannelStats} as a table in :data:`STATS_SCHEMA`."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in STATS_SCHEMA.names}
    for tap, kind in sorted(stats):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r} for tap {tap!r}")
        s = stats[(tap, kind)]
        c = s.channels
        cols["epoch"].append(np.full(c, epoch, dtype=np.int32))
        cols["tap"].append(np.full(c, tap, dtype=object))
        cols["kind"].append(np.full(c, kind, dtype=object))
        cols["channel"].append(np.arange(c, dtype=np.int32))
        cols["count"].append(np.full(c, s.count_, dtype=np.int64))
        for k in MOMENT_KEYS:
            cols[k].append(getattr(s, k + "_"))
    arrays = []
    for field in STATS_SCHEMA:
        parts = cols[field.name]
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=field.type.to_pandas_dtype())
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=STATS_SCHEMA)


def _as_stats_frame(table_or_df: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """A stats table as a DataFrame with the schema's columns, checked."""
    df = table_or_df.to_pandas() if isinstance(table_or_df, pa.Table) else table_or_df
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pyarrow Table or pandas DataFrame, got {type(table_or_df).__name__}")
    missing = [k for k in STATS_SCHEMA.names if k not in df.columns]
    if missing:
        raise ValueError(f"stats table lacks columns {missing}")
    return df


def table_to_stats(table_or_df: pa.Table | pd.DataFrame) -> dict[int, dict[tuple[str, str], ChannelStats]]:
    """Stats rows (Table or DataFrame in :data:`STATS_SCHEMA`) as {epoch: {(tap, kind): ChannelStats}}."""
    df = _as_stats_frame(table_or_df)
    out: dict[int, dict[tuple[str, str], ChannelStats]] = {}
    if len(df) == 0:
        return out
    df = df.sort_values(["epoch", "tap", "kind", "channel"], kind="stable")
    for (epoch, tap, kind), g in df.groupby(["epoch", "tap", "kind"], sort=False, observed=True):
        try:
            stats = ChannelStats.from_frame(g)
        except ValueError as e:
            raise ValueError(f"epoch {epoch}, tap {tap!r}, kind {kind!r}: {e}") from None
        out.setdefault(int(epoch), {})[(str(tap), str(kind))] = stats
    return out


def write_stats_parquet(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write a stats table (exactly :data:`STATS_SCHEMA`) to Parquet atomically."""
    if not isinstance(table, pa.Table):
        raise TypeError(f"expected a pyarrow Table, got {type(table).__name__}")
    if not table.schema.equals(STATS_SCHEMA):
        raise ValueError(f"table schema differs from STATS_SCHEMA: {table.schema.names} {table.schema.types}")
    return atomic_write(path, lambda f: pq.write_table(table, f))


def read_stats_parquet(path: str | os.PathLike[str]) -> pa.Table:
    """Read one stats Parquet file, checked against :data:`STATS_SCHEMA` (castable types accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stats file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"unreadable stats file {path}: {e}") from None
    if table.schema.names != STATS_SCHEMA.names:
        raise ValueError(f"stats file {path} has columns {table.schema.names}, expected {STATS_SCHEMA.names}")
    if not table.schema.equals(STATS_SCHEMA):
        try:
            table = table.cast(STATS_SCHEMA)
        except (pa.ArrowException, ValueError) as e:
            raise ValueError(f"stats file {path} has incompatible column types: {e}") from None
    return table
