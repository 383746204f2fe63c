"""Tidy pandas tables of the Stripe Observation from a recording directory.

A recording directory holds ``manifest.json`` (readable without torch), one statistics Parquet
per checkpoint (``stats/epoch_XXXX.parquet``, schema :data:`stripe.streaming.STATS_SCHEMA`) and
a few raw fp16 probe vectors per checkpoint (``raw/epoch_XXXX.safetensors``). Only checkpoints
listed in the manifest count; epochs are the checkpoints' epoch numbers, never positions.

Tables (long format, tap metadata from the manifest merged in):

* ``channels``    -- per (epoch, tap, kind, channel): count, mean, std, cv, min, max
* ``taps``        -- per (epoch, tap): spread, stripe index, cosine, drift, saturation, flags
* ``convergence`` -- per tap: the first epoch >= 1 from which the attention has settled
* ``stages``      -- per (epoch, stage, asr): means over taps of the stripe index and spread

Rules (also in the docstrings of :func:`tap_table`):

* a channel is *dead* at a checkpoint when every recorded attention value of it is zero within
  ``dead_tol``: ``max(|min_c|, |max_c|) <= dead_tol``;
* a channel is *saturated* when it is not dead and its mean attention is ``< saturation`` or
  ``> 1 - saturation``; ``saturated_frac`` (saturated channels / channels) is only defined for
  gates, i.e. when every recorded value of the tap lies in [0, 1], and is NaN otherwise.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stripe.fsio import atomic_write
from stripe.streaming import (
    KINDS,
    STATS_SCHEMA,
    ChannelStats,
    mean_cosine_from_moments,
    read_stats_parquet,
    stripe_index_from_moments,
    table_to_stats,
)

__all__ = [
    "MANIFEST_NAME",
    "RECORDING_FORMAT",
    "TAP_META",
    "Recording",
    "channel_table",
    "compute_tables",
    "convergence_table",
    "stage_summary",
    "summary_text",
    "tap_table",
    "write_tables",
]

MANIFEST_NAME = "manifest.json"
RECORDING_FORMAT = "stripe-recording/1"

#: tap metadata merged from the manifest into every table (after the ``tap`` column)
TAP_META: tuple[str, ...] = ("module", "stage", "block", "depth", "call", "attn", "asr")

_INT_META = ("stage", "block", "depth", "call", "channels")
_CSV_TABLES = ("taps", "convergence", "stages")


# --------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------


def _int_column(values: pd.Series, always_nullable: bool = False) -> pd.Series:
    """Integers as int64, or nullable Int64 when some are missing (or when asked)."""
    s = pd.to_numeric(values, errors="raise")
    if always_nullable or s.isna().any():
        return s.astype("Int64")
    return s.astype(np.int64)


def _taps_frame(taps: list[dict[str, Any]]) -> pd.DataFrame:
    """The manifest's tap list as a DataFrame: key, module, attn, asr, stage, block, depth, call, channels, extras."""
    base = ["key", "module", "attn", "asr", "stage", "block", "depth", "call", "channels"]
    df = pd.DataFrame(taps)
    for col in base:
        if col not in df.columns:
            df[col] = None
    df = df[base + [c for c in df.columns if c not in base]].copy()
    df["key"] = df["key"].astype(str)
    df["asr"] = df["asr"].map(lambda v: bool(v) if v is not None and v == v else False).astype(bool)
    for col in _INT_META:
        df[col] = _int_column(df[col], always_nullable=(col == "call"))
    return df


class Recording:
    """Light reader of a recording directory (manifest, per-checkpoint stats and raw vectors)."""

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        if not isinstance(manifest, dict):
            raise ValueError(f"manifest must be a JSON object, got {type(manifest).__name__}")
        fmt = manifest.get("format")
        if fmt != RECORDING_FORMAT:
            raise ValueError(f"unsupported format {fmt!r}, expected {RECORDING_FORMAT!r}")
        taps = manifest.get("taps")
        if not isinstance(taps, list) or not all(isinstance(t, dict) and "key" in t for t in taps):
            raise ValueError("'taps' must be a list of objects with a 'key'")
        self.taps = _taps_frame(taps)
        if self.taps["key"].duplicated().any():
            dup = self.taps.loc[self.taps["key"].duplicated(), "key"].tolist()
            raise ValueError(f"duplicate tap keys {dup}")
        ckpts = manifest.get("checkpoints")
        if not isinstance(ckpts, list):
            raise ValueError("'checkpoints' must be a list")
        self._checkpoints: dict[int, dict[str, Any]] = {}
        for ck in ckpts:
            if not isinstance(ck, dict) or not isinstance(ck.get("epoch"), int) or not isinstance(ck.get("stats"), str):
                raise ValueError(f"checkpoint entry needs an int 'epoch' and a str 'stats': {ck!r}")
            if ck["epoch"] in self._checkpoints:
                raise ValueError(f"duplicate checkpoint epoch {ck['epoch']}")
            self._checkpoints[ck["epoch"]] = ck
        self.epochs: list[int] = sorted(self._checkpoints)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Recording:
        """Open a recording directory (or its manifest.json); one-line error naming the bad file."""
        path = Path(path)
        if path.is_file() and path.name == MANIFEST_NAME:
            path = path.parent
        if not path.exists():
            raise FileNotFoundError(f"recording directory not found: {path}")
        if not path.is_dir():
            raise NotADirectoryError(f"not a recording directory: {path}")
        mpath = path / MANIFEST_NAME
        if not mpath.is_file():
            raise FileNotFoundError(f"recording manifest not found: {mpath}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt recording manifest {mpath}: {e}") from None
        try:
            return cls(path, manifest)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"invalid recording manifest {mpath}: {e}") from None

    def __repr__(self) -> str:
        return f"Recording({str(self.path)!r}, taps={len(self.taps)}, epochs={len(self.epochs)})"

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        """The manifest entry of one checkpoint epoch."""
        try:
            return self._checkpoints[int(epoch)]
        except KeyError:
            raise KeyError(f"epoch {epoch} is not a checkpoint of {self.path} (epochs {self.epochs})") from None

    def _file(self, rel: str) -> Path:
        """A path from the manifest, relative to the recording directory."""
        p = Path(rel)
        return p if p.is_absolute() else self.path / p

    def _epochs(self, epoch: int | None) -> list[int]:
        """The requested checkpoint epochs (all when None)."""
        if epoch is None:
            return list(self.epochs)
        self._checkpoint(epoch)
        return [int(epoch)]

    def frame(self, epoch: int | None = None) -> pd.DataFrame:
        """Raw stats rows (STATS_SCHEMA columns) of one or all checkpoints, sorted by epoch, tap, kind, channel.

        ``tap`` and ``kind`` are categoricals ordered as the manifest's taps (then any unlisted
        tap, by name) and ('after', 'before'), so the rows come in manifest order.
        """
        tables = []
        for e in self._epochs(epoch):
            f = self._file(self._checkpoint(e)["stats"])
            table = read_stats_parquet(f)
            bad = sorted(set(pc.unique(table["epoch"]).to_pylist()) - {e})
            if bad:
                raise ValueError(f"stats file {f} holds epochs {bad}, but the manifest lists it for epoch {e}")
            tables.append(table)
        table = pa.concat_tables(tables) if tables else STATS_SCHEMA.empty_table()
        for name in ("tap", "kind"):
            table = table.set_column(
                table.schema.get_field_index(name), name, pc.dictionary_encode(table[name]).combine_chunks()
            )
        df = table.to_pandas()
        for name, first in (("tap", list(self.taps["key"])), ("kind", list(KINDS))):
            cat = df[name].astype("category")
            known = set(first)
            order = first + sorted(c for c in cat.cat.categories if c not in known)
            df[name] = cat.cat.set_categories(order)
        # np.lexsort sorts by the last key first
        idx = np.lexsort(
            [df["channel"].to_numpy(), df["kind"].cat.codes.to_numpy(), df["tap"].cat.codes.to_numpy(),
             df["epoch"].to_numpy()]
        )  # fmt: skip
        return df.take(idx).reset_index(drop=True)

    def stats(self, epoch: int | None = None) -> dict[int, dict[tuple[str, str], ChannelStats]]:
        """{epoch: {(tap, kind): ChannelStats}} for one checkpoint or all of them."""
        out: dict[int, dict[tuple[str, str], ChannelStats]] = {}
        for e in self._epochs(epoch):
            out[e] = table_to_stats(self.frame(e)).get(e, {})
        return out

    def raw(self, epoch: int, tap: str, kind: str = "after") -> np.ndarray:
        """Raw probe vectors of one tap at one checkpoint as float32 [n_raw, C]."""
        from safetensors import safe_open  # only needed here

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        rel = self._checkpoint(epoch).get("raw")
        if not rel:
            raise FileNotFoundError(f"epoch {epoch} has no raw file in {self.path / MANIFEST_NAME}")
        f = self._file(rel)
        if not f.is_file():
            raise FileNotFoundError(f"raw file not found: {f}")
        key = f"{tap}/{kind}"
        with safe_open(str(f), framework="numpy") as st:
            if key not in st.keys():
                raise KeyError(f"raw file {f} has no tensor {key!r}")
            return np.asarray(st.get_tensor(key), dtype=np.float32)


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _as_recording(rec: Recording | str | os.PathLike[str]) -> Recording:
    """A Recording, opening a path if needed."""
    return rec if isinstance(rec, Recording) else Recording.open(rec)


def _tap_meta(rec: Recording) -> pd.DataFrame:
    """Per tap, in manifest order: tap, TAP_META..., channels."""
    return rec.taps.rename(columns={"key": "tap"})[["tap", *TAP_META, "channels"]].reset_index(drop=True)


def _check_taps_known(frame: pd.DataFrame, meta: pd.DataFrame, rec: Recording) -> None:
    """Every tap in the stats must be listed in the manifest."""
    present = frame["tap"].cat.categories if isinstance(frame["tap"].dtype, pd.CategoricalDtype) else frame["tap"]
    unknown = sorted(set(present) - set(meta["tap"]))
    if unknown:
        raise ValueError(f"stats hold taps not listed in {rec.path / MANIFEST_NAME}: {unknown[:5]}")


def _channel_table(frame: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """channel_table from a (sorted, categorical) stats frame and tap metadata."""
    count = frame["count"].to_numpy(dtype=np.float64)
    mean = frame["mean"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        std = np.where(count > 0, np.sqrt(frame["m2"].to_numpy(dtype=np.float64) / count), np.nan)
        cv = np.where(np.abs(mean) > 0, std / np.abs(mean), np.nan)
    by_code = meta.set_index("tap").reindex(frame["tap"].cat.categories)
    codes = frame["tap"].cat.codes.to_numpy()
    data: dict[str, Any] = {
        "epoch": frame["epoch"].to_numpy(dtype=np.int64),
        "tap": frame["tap"].reset_index(drop=True),
        "kind": frame["kind"].reset_index(drop=True),
        "channel": frame["channel"].to_numpy(dtype=np.int64),
    }
    for col in TAP_META:
        data[col] = pd.Series(by_code[col].array.take(codes))
    data.update(
        count=frame["count"].to_numpy(dtype=np.int64),
        mean=mean,
        std=std,
        cv=cv,
        min=frame["min"].to_numpy(dtype=np.float64),
        max=frame["max"].to_numpy(dtype=np.float64),
    )
    return pd.DataFrame(data)


def channel_table(rec: Recording | str | os.PathLike[str]) -> pd.DataFrame:
    """Per (epoch, tap, kind, channel): tap metadata, count, mean, std (ddof=0), cv (std/|mean|), min, max."""
    rec = _as_recording(rec)
    frame, meta = rec.frame(), _tap_meta(rec)
    _check_taps_known(frame, meta, rec)
    return _channel_table(frame, meta)


def _group_arrays(cols: dict[str, np.ndarray], idx: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """Rows idx (one (tap, kind), sorted by epoch then channel) as epochs [E], count [E] and [E, C] moments."""
    epoch = cols["epoch"][idx]
    epochs = np.unique(epoch)
    e, n = len(epochs), len(idx)
    if n % e:
        raise ValueError(f"{where}: the number of channels differs between checkpoints")
    c = n // e
    ch = cols["channel"][idx].reshape(e, c)
    if not (ch == np.arange(c)).all() or not (epoch.reshape(e, c) == epochs[:, None]).all():
        raise ValueError(f"{where}: channels must be exactly 0..{c - 1} once per checkpoint")
    cnt = cols["count"][idx].reshape(e, c)
    if not (cnt == cnt[:, :1]).all():
        raise ValueError(f"{where}: counts differ across channels")
    out = {"epoch": epochs, "count": cnt[:, 0]}
    for k in ("mean", "m2", "min", "max", "unit_sum"):
        out[k] = cols[k][idx].reshape(e, c)
    return out


def _rel_dist(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """||x - ref|| / ||ref|| row-wise; NaN where ||ref|| == 0."""
    num = np.linalg.norm(x - ref, axis=-1)
    den = np.linalg.norm(ref, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _kind_metrics(a: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """Spread, stripe index and mean cosine of one (tap, kind) over its checkpoints."""
    cnt = a["count"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        std = np.sqrt(a["m2"] / cnt[:, None])
    std = np.where(cnt[:, None] > 0, std, np.nan)
    return {
        "epoch": a["epoch"],
        f"count_{kind}": a["count"],
        f"std_{kind}": std.mean(axis=1) if std.shape[1] else np.full(len(cnt), np.nan),
        f"stripe_{kind}": stripe_index_from_moments(cnt, a["mean"], a["m2"]),
        f"cos_{kind}": mean_cosine_from_moments(cnt, a["mean"], a["unit_sum"]),
    }


def _after_extras(a: dict[str, np.ndarray], saturation: float, dead_tol: float) -> dict[str, np.ndarray]:
    """Drift, distance to the final mean, saturation and dead channels of the 'after' side."""
    mu = a["mean"]
    e, c = mu.shape
    drift = np.full(e, np.nan)
    if e > 1:
        drift[1:] = _rel_dist(mu[1:], mu[:-1])
    dead = np.maximum(np.abs(a["min"]), np.abs(a["max"])) <= dead_tol
    sat = ((mu < saturation) | (mu > 1.0 - saturation)) & ~dead
    is_gate = (a["min"].min(axis=1, initial=np.inf) >= 0.0) & (a["max"].max(axis=1, initial=-np.inf) <= 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(is_gate & (c > 0), sat.sum(axis=1) / max(c, 1), np.nan)
    return {
        "channels": np.full(e, c, dtype=np.int64),
        "drift_prev": drift,
        "dist_final": _rel_dist(mu, mu[-1:]),
        "saturated_frac": frac,
        "dead_channels": dead.sum(axis=1).astype(np.int64),
    }


_TAP_COLUMNS = [
    "epoch", "tap", *TAP_META, "channels", "count",
    "std_after", "std_before", "stripe_after", "stripe_before", "cos_after", "cos_before",
    "drift_prev", "dist_final", "saturated_frac", "dead_channels", "flag",
]  # fmt: skip


def _tap_table(frame: pd.DataFrame, meta: pd.DataFrame, saturation: float, dead_tol: float) -> pd.DataFrame:
    """tap_table from a stats frame and tap metadata."""
    cols = {k: frame[k].to_numpy() for k in ("epoch", "channel", "count", "mean", "m2", "min", "max", "unit_sum")}
    taps_cat, kinds_cat = frame["tap"].cat.categories, frame["kind"].cat.categories
    group = frame["tap"].cat.codes.to_numpy().astype(np.int64) * len(kinds_cat) + frame["kind"].cat.codes.to_numpy()
    order = np.argsort(group, kind="stable")  # keeps the (epoch, channel) order inside each group
    codes, starts = np.unique(group[order], return_index=True)
    manifest_channels = dict(zip(meta["tap"], meta["channels"], strict=True))
    per_tap: dict[str, dict[str, pd.DataFrame]] = {}
    for code, idx in zip(codes, np.split(order, starts[1:]), strict=True):
        tap, kind = str(taps_cat[code // len(kinds_cat)]), str(kinds_cat[code % len(kinds_cat)])
        if kind not in KINDS:
            continue
        where = f"tap {tap!r} ({kind})"
        a = _group_arrays(cols, idx, where)
        d = _kind_metrics(a, kind)
        if kind == "after":
            want = manifest_channels.get(tap)
            c = a["mean"].shape[1]
            if want is not None and not pd.isna(want) and int(want) != c:
                raise ValueError(f"{where}: {c} channels in the stats, {int(want)} in the manifest")
            d.update(_after_extras(a, saturation, dead_tol))
        per_tap.setdefault(tap, {})[kind] = pd.DataFrame(d)
    parts = []
    for tap, kinds in per_tap.items():
        after = kinds.get("after")
        before = kinds.get("before")
        if after is None:
            after = pd.DataFrame({"epoch": before["epoch"]})
        df = after if before is None else after.merge(before, on="epoch", how="outer")
        df.insert(1, "tap", tap)
        parts.append(df)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _TAP_COLUMNS})
    df = pd.concat(parts, ignore_index=True)
    for col in _TAP_COLUMNS:
        if col not in df.columns and col not in TAP_META and col != "flag":
            df[col] = np.nan
    for col in ("count_after", "count_before"):
        if col not in df.columns:
            df[col] = np.nan
    df["count"] = df["count_after"].fillna(df["count_before"]).astype("Int64")
    if df["count"].notna().all():
        df["count"] = df["count"].astype(np.int64)
    df = df.drop(columns=["count_after", "count_before"]).rename(columns={"channels": "_channels"})
    meta = meta.assign(_order=np.arange(len(meta)))
    df = df.merge(meta, on="tap", how="left", validate="many_to_one")
    df["channels"] = _int_column(df["_channels"].fillna(df["channels"]))
    channels = pd.to_numeric(df["channels"]).to_numpy(dtype=np.float64, na_value=np.nan)
    dead = pd.to_numeric(df["dead_channels"]).to_numpy(dtype=np.float64, na_value=np.nan)
    sat = df["saturated_frac"].to_numpy(dtype=np.float64)
    df["flag"] = np.select(
        [df["asr"].to_numpy(dtype=bool), sat > 0.5, (dead == channels) & (channels > 0)],
        ["asr", "saturated", "dead"],
        default="",
    )
    df["dead_channels"] = pd.to_numeric(df["dead_channels"]).astype("Int64")
    if df["dead_channels"].notna().all():
        df["dead_channels"] = df["dead_channels"].astype(np.int64)
    df["epoch"] = df["epoch"].astype(np.int64)
    df = df.sort_values(["epoch", "_order"], kind="stable", ignore_index=True)
    return df[_TAP_COLUMNS]


def _check_tap_params(saturation: float, dead_tol: float) -> None:
    """Validate the saturation margin and the dead tolerance."""
    if not 0.0 <= saturation < 0.5:
        raise ValueError(f"saturation must be in [0, 0.5), got {saturation}")
    if dead_tol < 0:
        raise ValueError(f"dead_tol must be >= 0, got {dead_tol}")


def tap_table(
    rec: Recording | str | os.PathLike[str], *, saturation: float = 0.02, dead_tol: float = 1e-6
) -> pd.DataFrame:
    """Per (epoch, tap): tap metadata, spread, stripe index, cosine, drift, saturation, dead channels, flag.

    Columns: epoch, tap, module, stage, block, depth, call, attn, asr, channels, count,
    std_after, std_before (mean over channels of the population std), stripe_after,
    stripe_before (stripe index), cos_after, cos_before (mean cosine to the mean vector),
    drift_prev (||mu_t - mu_prev|| / ||mu_prev||, NaN at the tap's first checkpoint),
    dist_final (||mu_t - mu_last|| / ||mu_last||), saturated_frac, dead_channels, flag; mu is
    the 'after' mean vector, and a relative distance to a zero vector is NaN.

    Rules: a channel is dead when all its recorded attention values are zero within dead_tol,
    ``max(|min|, |max|) <= dead_tol``. A channel is saturated when it is not dead and its mean
    attention is below ``saturation`` or above ``1 - saturation``; saturated_frac is the
    fraction of channels that are saturated, defined only for gates (every recorded value of
    the tap in [0, 1]) and NaN otherwise. flag is 'asr' for ASR taps (constant over images by
    construction, never a finding), else 'saturated' if saturated_frac > 0.5, else 'dead' if
    every channel is dead, else ''.
    """
    _check_tap_params(saturation, dead_tol)
    rec = _as_recording(rec)
    frame, meta = rec.frame(), _tap_meta(rec)
    _check_taps_known(frame, meta, rec)
    return _tap_table(frame, meta, saturation, dead_tol)


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    """Raise a one-line error if a table lacks columns."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def convergence_table(taps: pd.DataFrame, *, eps: float = 0.05, threshold: float = 0.9) -> pd.DataFrame:
    """Per tap: the first checkpoint epoch >= 1 from which dist_final < eps and stripe_after > threshold hold for good.

    Columns: tap, module, stage, block, depth, call, attn, asr, channels, first_epoch,
    final_epoch, stripe_init (stripe_after at epoch 0, NaN without an epoch-0 checkpoint),
    stripe_final, convergence_epoch (NaN if none), converged, eps, threshold, flag (the tap's
    flag at its last checkpoint). Epoch 0 (initialisation) never counts: a sigmoid gate near
    0.5 for every image gives a trivial S close to 1 there.
    """
    _require(taps, ["epoch", "tap", "dist_final", "stripe_after", "flag"], "taps table")
    meta_cols = [c for c in (*TAP_META, "channels") if c in taps.columns]
    rows = []
    for tap, g in taps.groupby("tap", sort=False, observed=True):
        g = g.sort_values("epoch", kind="stable")
        epochs = g["epoch"].to_numpy(dtype=np.int64)
        stripe = g["stripe_after"].to_numpy(dtype=np.float64)
        ok = (g["dist_final"].to_numpy(dtype=np.float64) < eps) & (stripe > threshold)
        later = epochs >= 1
        e1, ok1 = epochs[later], ok[later]
        bad = np.flatnonzero(~ok1)
        start = int(bad[-1]) + 1 if len(bad) else 0
        conv = float(e1[start]) if start < len(e1) else np.nan
        init = stripe[epochs == 0]
        row = {"tap": tap}
        row.update({c: g[c].iloc[-1] for c in meta_cols})
        row.update(
            first_epoch=int(epochs[0]),
            final_epoch=int(epochs[-1]),
            stripe_init=float(init[0]) if len(init) else np.nan,
            stripe_final=float(stripe[-1]),
            convergence_epoch=conv,
            converged=not np.isnan(conv),
            eps=float(eps),
            threshold=float(threshold),
            flag=g["flag"].iloc[-1],
        )
        rows.append(row)
    cols = ["tap", *meta_cols, "first_epoch", "final_epoch", "stripe_init", "stripe_final",
            "convergence_epoch", "converged", "eps", "threshold", "flag"]  # fmt: skip
    out = pd.DataFrame(rows, columns=cols)
    for c in meta_cols:
        if c in taps.columns and len(out):
            out[c] = out[c].astype(taps[c].dtype)
    return out


def stage_summary(taps: pd.DataFrame) -> pd.DataFrame:
    """Per (epoch, stage, asr): n_taps and the means over taps of stripe/std/cos after and before.

    Non-ASR taps (asr False) and ASR taps (asr True, constant by construction) are kept apart.
    """
    _require(taps, ["epoch", "tap", "stage", "asr", "stripe_after", "stripe_before", "std_after", "std_before"],
             "taps table")  # fmt: skip
    values = [c for c in ("stripe_after", "stripe_before", "std_after", "std_before", "cos_after", "cos_before")
              if c in taps.columns]  # fmt: skip
    g = taps.groupby(["epoch", "stage", "asr"], sort=True, dropna=False, observed=True)
    out = g[values].mean()
    out.insert(0, "n_taps", g["tap"].nunique())
    return out.reset_index()


def compute_tables(
    rec_or_path: Recording | str | os.PathLike[str],
    *,
    saturation: float = 0.02,
    dead_tol: float = 1e-6,
    eps: float = 0.05,
    threshold: float = 0.9,
) -> dict[str, pd.DataFrame]:
    """All tables of a recording: {'channels', 'taps', 'convergence', 'stages'} (stats read once)."""
    _check_tap_params(saturation, dead_tol)
    rec = _as_recording(rec_or_path)
    frame, meta = rec.frame(), _tap_meta(rec)
    _check_taps_known(frame, meta, rec)
    taps = _tap_table(frame, meta, saturation, dead_tol)
    return {
        "channels": _channel_table(frame, meta),
        "taps": taps,
        "convergence": convergence_table(taps, eps=eps, threshold=threshold),
        "stages": stage_summary(taps),
    }


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each table as <name>.parquet, plus <name>.csv for taps/convergence/stages; atomic writes."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for name, df in tables.items():
        if not name or Path(name).name != name:
            raise ValueError(f"table name must be a plain file stem, got {name!r}")
        written.append(atomic_write(out_dir / f"{name}.parquet", lambda f, df=df: df.to_parquet(f, index=False)))
        if name in _CSV_TABLES:
            text = df.to_csv(index=False, float_format="%.6g")
            written.append(atomic_write(out_dir / f"{name}.csv", lambda f, t=text: f.write(t.encode("utf-8"))))
    return written


def _fmt(x: Any) -> str:
    """A number for the summary, 'nan' when missing."""
    return "nan" if x is None or pd.isna(x) else f"{float(x):.3f}"


def summary_text(tables: Mapping[str, pd.DataFrame]) -> str:
    """A short human summary: stripe index after vs before per stage, ASR taps, convergence counts."""
    stages = tables["stages"]
    conv = tables.get("convergence")
    taps = tables.get("taps")
    lines: list[str] = []
    if len(stages) == 0:
        return "no checkpoints recorded\n"
    epochs = sorted(stages["epoch"].unique().tolist())
    first, last = epochs[0], epochs[-1]
    span = f"epoch {first}" if first == last else f"epoch {first} -> {last}"
    lines.append(f"Stripe index S (mean over non-ASR taps), after (attention) vs before (pooled input), {span}:")
    attn = stages[~stages["asr"].astype(bool)]
    for stage, g in attn.groupby("stage", sort=True, dropna=False):
        g0 = g[g["epoch"] == first]
        g1 = g[g["epoch"] == last]
        n = int(g1["n_taps"].iloc[0]) if len(g1) else int(g["n_taps"].max())
        label = "?" if pd.isna(stage) else str(int(stage))

        def pair(col: str, g0: pd.DataFrame = g0, g1: pd.DataFrame = g1) -> str:
            a = _fmt(g0[col].iloc[0]) if len(g0) else "nan"
            b = _fmt(g1[col].iloc[0]) if len(g1) else "nan"
            return a if first == last else f"{a} -> {b}"

        lines.append(f"  stage {label} ({n} taps): after {pair('stripe_after')} | before {pair('stripe_before')}")
    asr_last = stages[stages["asr"].astype(bool) & (stages["epoch"] == last)]
    if len(asr_last):
        n_asr = int(asr_last["n_taps"].sum())
        s_asr = (asr_last["stripe_after"] * asr_last["n_taps"]).sum() / n_asr
        lines.append(
            f"ASR taps: {n_asr} (S_after {_fmt(s_asr)} at epoch {last}), constant over images by construction; "
            "not a finding."
        )
    if conv is not None and len(conv):
        c = conv[~conv["asr"].astype(bool)] if "asr" in conv.columns else conv
        done = c["convergence_epoch"].dropna()
        eps, thr = conv["eps"].iloc[0], conv["threshold"].iloc[0]
        text = (f"Convergence (dist_final < {eps:g} and S_after > {thr:g} from an epoch >= 1 on): "
                f"{len(done)} of {len(c)} non-ASR taps")  # fmt: skip
        if len(done):
            text += f"; median epoch {done.median():g} (range {done.min():g}-{done.max():g})"
        lines.append(text + ".")
    if taps is not None and len(taps):
        final = taps[taps["epoch"] == taps["epoch"].max()]
        counts = final.loc[final["flag"].isin(["saturated", "dead"]), "flag"].value_counts()
        lines.append(
            f"Flags at epoch {last}: saturated {int(counts.get('saturated', 0))}, dead {int(counts.get('dead', 0))}."
        )
    return "\n".join(lines) + "\n"
