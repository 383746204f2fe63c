"""The recording format: one module writes it and reads it.

A recording directory holds

* ``manifest.json`` (readable without torch): format, toolkit version, model config, where the
  weights came from (run id, and per checkpoint the file and its sha256), the probe set (split,
  size, seed, hash), the number of folds K, precision, the tap selection, the taps seen (key,
  module, attention type, ASR flag, stage, block, depth, call, channels) and the checkpoints done;
* ``stats/epoch_XXXX.parquet``: per (tap, kind, fold, channel) the exact moments count, mean, m2,
  min, max and unit_sum (:data:`STATS_SCHEMA`). The probe images are recorded in one seeded random
  order, kept in the manifest as ``probe_order`` (the probe set's indices, in recorded order): fold k
  holds the images at *positions* i of that order with i mod K = k (not probe index i);
* ``raw/epoch_XXXX.safetensors``: the first ``raw_n`` probe vectors of every (tap, kind), fp16.

A recording can be **thinned** (:func:`thin`) to travel light: only its last epoch's statistics and raw
vectors are kept, and its tables of every epoch, computed before thinning, travel in ``tables/``
(:data:`STORED_TABLES`); the manifest lists all epochs and the kept ones under ``thinned``, and
:meth:`Recording.stored_tables` reads those tables back.

Format ``stripe-recording/1`` (no fold column: one fold) still reads. Every file is written
atomically and the manifest last, so a killed sweep leaves no half-written checkpoint visible.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import __version__, fsio
from ..errors import MissingEntryError, NotAFolderError, NotFoundError, UserError
from .moments import MOMENT_KEYS, ChannelStats, FoldStats

__all__ = [
    "ALL_KINDS", "HIDDEN", "KINDS", "MANIFEST_NAME", "READABLE_FORMATS", "RECORDING_FORMAT", "STATS_SCHEMA",
    "STORED_TABLES", "TABLES_DIR", "Recording", "RecordingWriter", "RecordingMismatch", "Thinning",
    "read_stats_parquet", "stats_to_table", "table_to_stats", "thin", "write_stats_parquet",
]

MANIFEST_NAME = "manifest.json"
RECORDING_FORMAT = "stripe-recording/2"
READABLE_FORMATS = ("stripe-recording/1", RECORDING_FORMAT)

#: the two recorded kinds of a tap: the attention values, and the pooled input of the module
KINDS: tuple[str, str] = ("after", "before")
#: a third kind, for gates with a hidden (bottleneck) layer: its post-ReLU activations (dead units show as max 0)
HIDDEN = "hidden"
ALL_KINDS: tuple[str, ...] = (*KINDS, HIDDEN)

#: fixed Parquet schema of one checkpoint's statistics (column order matters)
STATS_SCHEMA: pa.Schema = pa.schema(
    [
        ("epoch", pa.int32()),
        ("tap", pa.string()),
        ("kind", pa.string()),
        ("fold", pa.int32()),
        ("channel", pa.int32()),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("m2", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("unit_sum", pa.float64()),
    ]
)
_V1_NAMES = [n for n in STATS_SCHEMA.names if n != "fold"]
#: the folder of a recording that holds its tables (``stripe stats`` writes them there by default)
TABLES_DIR = "tables"
#: the tables a thinned recording keeps for every epoch, as ``<name>.parquet`` in its tables folder
STORED_TABLES: tuple[str, ...] = ("taps", "stages")
_INT_META = ("stage", "block", "depth", "call", "channels")


def inside(root: Path, rel: str) -> Path:
    """``root / rel`` for a manifest path ``rel`` that stays inside ``root``; a path that leaves it is refused."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not (root / p).resolve().is_relative_to(root.resolve()):
        raise UserError(f"{root / MANIFEST_NAME}: the path {rel!r} points outside the recording")
    return root / p


def _digest(path: Path) -> tuple[int, str]:
    """(size in bytes, hex sha256) of a file."""
    from ..data.imageset import sha256_file

    return path.stat().st_size, sha256_file(path)


class RecordingMismatch(UserError):
    """A recording directory holds a recording of something else (model, probe, taps, run …)."""


# --------------------------------------------------------------------------------------
# statistics files
# --------------------------------------------------------------------------------------


def stats_to_table(epoch: int, stats: Mapping[tuple[str, str], FoldStats | ChannelStats]) -> pa.Table:
    """One checkpoint's statistics {(tap, kind): FoldStats or ChannelStats (one fold)} as a :data:`STATS_SCHEMA` table."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in STATS_SCHEMA.names}
    for tap, kind in sorted(stats):
        if kind not in ALL_KINDS:
            raise UserError(f"kind must be one of {ALL_KINDS}, got {kind!r} for tap {tap!r}")
        s = stats[(tap, kind)]
        if isinstance(s, ChannelStats):
            s = FoldStats([s.count_], *(getattr(s, k + "_")[None] for k in MOMENT_KEYS))
        k, c = s.folds, s.channels
        cols["epoch"].append(np.full(k * c, epoch, dtype=np.int32))
        cols["tap"].append(np.full(k * c, tap, dtype=object))
        cols["kind"].append(np.full(k * c, kind, dtype=object))
        cols["fold"].append(np.repeat(np.arange(k, dtype=np.int32), c))
        cols["channel"].append(np.tile(np.arange(c, dtype=np.int32), k))
        cols["count"].append(np.repeat(s.count_, c))
        for m in MOMENT_KEYS:
            cols[m].append(getattr(s, m + "_").reshape(-1))
    arrays = []
    for field in STATS_SCHEMA:
        parts = cols[field.name]
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=field.type.to_pandas_dtype())
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=STATS_SCHEMA)


def write_stats_parquet(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write a stats table (exactly :data:`STATS_SCHEMA`) to Parquet atomically."""
    if not isinstance(table, pa.Table):
        raise TypeError(f"expected a pyarrow Table, got {type(table).__name__}")
    if not table.schema.equals(STATS_SCHEMA):
        raise UserError(f"table schema differs from STATS_SCHEMA: {table.schema.names} {table.schema.types}")
    return fsio.atomic_write(path, lambda f: pq.write_table(table, f))


def read_stats_parquet(path: str | os.PathLike[str]) -> pa.Table:
    """Read one stats Parquet file as a :data:`STATS_SCHEMA` table (format-1 files get fold 0)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"stats file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"unreadable stats file {path}: {e}") from None
    if table.schema.names == _V1_NAMES:
        table = table.add_column(3, "fold", pa.array(np.zeros(table.num_rows, dtype=np.int32)))
    if table.schema.names != STATS_SCHEMA.names:
        raise UserError(f"stats file {path} has columns {table.schema.names}, expected {STATS_SCHEMA.names}")
    if not table.schema.equals(STATS_SCHEMA):
        try:
            table = table.cast(STATS_SCHEMA)
        except (pa.ArrowException, ValueError) as e:
            raise UserError(f"stats file {path} has incompatible column types: {e}") from None
    return table


def check_layout(tap: Any, kind: Any, channel: np.ndarray, fold: np.ndarray, count: np.ndarray) -> None:
    """The one check of a tap's stats rows, each array shaped [..., K, C] (checkpoints, folds, channels): channels
    exactly 0..C-1 once per fold (and checkpoint), the same count in every channel; a one-line error otherwise."""
    k, c = channel.shape[-2:]
    if not (channel == np.arange(c)).all() or not (fold == np.arange(k)[:, None]).all():
        raise UserError(f"tap {tap!r} ({kind}): channels must be exactly 0..{c - 1} once per fold and checkpoint")
    if not (count == count[..., :1]).all():
        raise UserError(f"tap {tap!r} ({kind}): counts differ across channels")


def table_to_stats(table_or_df: pa.Table | pd.DataFrame) -> dict[int, dict[tuple[str, str], FoldStats]]:
    """Rows in :data:`STATS_SCHEMA` (a Table or DataFrame, any order) as {epoch: {(tap, kind): FoldStats}}."""
    df = table_or_df.to_pandas() if isinstance(table_or_df, pa.Table) else table_or_df
    missing = [k for k in STATS_SCHEMA.names if k not in df.columns]
    if missing:
        raise UserError(f"stats table lacks columns {missing}")
    out: dict[int, dict[tuple[str, str], FoldStats]] = {}
    df = df.sort_values(["epoch", "tap", "kind", "fold", "channel"], kind="stable")
    for (epoch, tap, kind), g in df.groupby(["epoch", "tap", "kind"], sort=False, observed=True):
        k = int(g["fold"].max()) + 1
        c = len(g) // k
        if k * c != len(g):
            raise UserError(f"tap {tap!r} ({kind}): channels must be exactly 0..{c - 1} once per fold and checkpoint")
        cnt = g["count"].to_numpy().reshape(k, c)
        check_layout(tap, kind, g["channel"].to_numpy().reshape(k, c), g["fold"].to_numpy().reshape(k, c), cnt)
        arr = lambda col: g[col].to_numpy(dtype=np.float64).reshape(k, c)
        out.setdefault(int(epoch), {})[(str(tap), str(kind))] = FoldStats(
            cnt[:, 0], arr("mean"), arr("m2"), arr("min"), arr("max"), arr("unit_sum"))
    return out


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save

    fsio.write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))


# --------------------------------------------------------------------------------------
# reading
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
    if "hidden" in df.columns:  # a gate's hidden width (None for gates without a hidden layer)
        df["hidden"] = _int_column(df["hidden"], always_nullable=True)
    return df


class Recording:
    """Light reader of a recording directory (manifest, per-checkpoint stats and raw vectors)."""

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        if not isinstance(manifest, dict):
            raise UserError(f"manifest must be a JSON object, got {type(manifest).__name__}")
        fmt = manifest.get("format")
        if fmt not in READABLE_FORMATS:
            raise UserError(f"unsupported format {fmt!r}, expected {RECORDING_FORMAT!r}")
        taps = manifest.get("taps")
        if not isinstance(taps, list) or not all(isinstance(t, dict) and "key" in t for t in taps):
            raise UserError("'taps' must be a list of objects with a 'key'")
        self.taps = _taps_frame(taps)
        if self.taps["key"].duplicated().any():
            dup = self.taps.loc[self.taps["key"].duplicated(), "key"].tolist()
            raise UserError(f"duplicate tap keys {dup}")
        ckpts = manifest.get("checkpoints")
        if not isinstance(ckpts, list):
            raise UserError("'checkpoints' must be a list")
        self._checkpoints: dict[int, dict[str, Any]] = {}
        for ck in ckpts:
            if not isinstance(ck, dict) or not isinstance(ck.get("epoch"), int) or not isinstance(ck.get("stats"), str):
                raise UserError(f"checkpoint entry needs an int 'epoch' and a str 'stats': {ck!r}")
            if ck["epoch"] in self._checkpoints:
                raise UserError(f"duplicate checkpoint epoch {ck['epoch']}")
            self._checkpoints[ck["epoch"]] = ck
        self.epochs: list[int] = sorted(self._checkpoints)
        self.folds: int = int(manifest.get("folds") or 1)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Recording:
        """Open a recording directory (or its manifest.json); one-line error naming the bad file."""
        path = Path(path)
        if path.is_file() and path.name == MANIFEST_NAME:
            path = path.parent
        if not path.exists():
            raise NotFoundError(f"recording directory not found: {path}")
        if not path.is_dir():
            raise NotAFolderError(f"not a recording directory: {path}")
        mpath = path / MANIFEST_NAME
        if not mpath.is_file():
            raise NotFoundError(f"recording manifest not found: {mpath}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"corrupt recording manifest {mpath}: {e}") from None
        try:
            return cls(path, manifest)
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"invalid recording manifest {mpath}: {e}") from None

    def __repr__(self) -> str:
        return f"Recording({str(self.path)!r}, taps={len(self.taps)}, epochs={len(self.epochs)})"

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        """The manifest entry of one checkpoint epoch."""
        try:
            return self._checkpoints[int(epoch)]
        except KeyError:
            raise MissingEntryError(f"epoch {epoch} is not a checkpoint of {self.path} (epochs {self.epochs})") from None

    def _file(self, rel: str) -> Path:
        """A path from the manifest, inside the recording directory (anything else is refused)."""
        return inside(self.path, rel)

    def _epochs(self, epoch: int | None) -> list[int]:
        """The requested checkpoint epochs (all when None)."""
        if epoch is None:
            return list(self.epochs)
        self._checkpoint(epoch)
        return [int(epoch)]

    def frame(self, epoch: int | None = None) -> pd.DataFrame:
        """Raw stats rows (STATS_SCHEMA columns) of one or all checkpoints, sorted by epoch, tap, kind, fold, channel.

        ``tap`` and ``kind`` are categoricals ordered as the manifest's taps (then any unlisted
        tap, by name) and ('after', 'before'), so the rows come in manifest order.
        """
        tables = []
        for e in self._epochs(epoch):
            f = self._file(self._checkpoint(e)["stats"])
            table = read_stats_parquet(f)
            bad = sorted(set(pc.unique(table["epoch"]).to_pylist()) - {e})
            if bad:
                raise UserError(f"stats file {f} holds epochs {bad}, but the manifest lists it for epoch {e}")
            tables.append(table)
        table = pa.concat_tables(tables) if tables else STATS_SCHEMA.empty_table()
        for name in ("tap", "kind"):
            table = table.set_column(
                table.schema.get_field_index(name), name, pc.dictionary_encode(table[name]).combine_chunks()
            )
        df = table.to_pandas()
        for name, first in (("tap", list(self.taps["key"])), ("kind", list(ALL_KINDS))):
            cat = df[name].astype("category")
            known = set(first)
            order = first + sorted(c for c in cat.cat.categories if c not in known)
            df[name] = cat.cat.set_categories(order)
        # np.lexsort sorts by the last key first
        idx = np.lexsort(
            [df["channel"].to_numpy(), df["fold"].to_numpy(), df["kind"].cat.codes.to_numpy(),
             df["tap"].cat.codes.to_numpy(), df["epoch"].to_numpy()]
        )  # fmt: skip
        return df.take(idx).reset_index(drop=True)

    def fold_stats(self, epoch: int) -> dict[tuple[str, str], FoldStats]:
        """{(tap, kind): FoldStats} of one checkpoint (format-1 recordings: one fold)."""
        try:
            return table_to_stats(self.frame(epoch)).get(int(epoch), {})
        except ValueError as e:
            raise UserError(f"{self.path}: epoch {epoch}: {e}") from None

    def stats(self, epoch: int | None = None) -> dict[int, dict[tuple[str, str], ChannelStats]]:
        """{epoch: {(tap, kind): ChannelStats}} (every fold merged) for one checkpoint or all of them."""
        return {e: {key: fs.total() for key, fs in self.fold_stats(e).items()} for e in self._epochs(epoch)}

    def raw(self, epoch: int, tap: str, kind: str = "after") -> np.ndarray:
        """Raw probe vectors of one tap at one checkpoint as float32 [n_raw, C]."""
        from safetensors import safe_open  # only needed here

        if kind not in ALL_KINDS:
            raise UserError(f"kind must be one of {ALL_KINDS}, got {kind!r}")
        rel = self._checkpoint(epoch).get("raw")
        if not rel:
            raise NotFoundError(f"epoch {epoch} has no raw file in {self.path / MANIFEST_NAME}")
        f = self._file(rel)
        if not f.is_file():
            raise NotFoundError(f"raw file not found: {f}")
        key = f"{tap}/{kind}"
        with safe_open(str(f), framework="numpy") as st:
            if key not in st.keys():
                raise MissingEntryError(f"raw file {f} has no tensor {key!r}")
            return np.asarray(st.get_tensor(key), dtype=np.float32)

    @property
    def thinned(self) -> dict[str, Any] | None:
        """A thinned recording's ``thinned`` entry (``epochs``: all, ``kept``: those whose statistics it holds,
        ``tables``: the folder of its stored tables); None for a whole recording."""
        entry = self.manifest.get("thinned")
        if not entry:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("epochs"), list):
            raise UserError(f"{self.path / MANIFEST_NAME}: 'thinned' must be an object with a list of 'epochs'")
        return entry

    def stored_tables(self) -> dict[str, pd.DataFrame]:
        """The tables of every epoch that a thinned recording holds ({name: table} for :data:`STORED_TABLES`),
        as they were computed before thinning; {} for a whole recording (its statistics give them)."""
        entry = self.thinned
        if entry is None:
            return {}
        folder = self._file(str(entry.get("tables", TABLES_DIR)))
        kept = f"epochs {entry.get('kept')} of {len(entry['epochs'])} kept"
        out = {}
        for name in STORED_TABLES:
            path = folder / f"{name}.parquet"
            if not path.is_file():
                raise NotFoundError(f"{self.path} is thinned ({kept}) but its table {path} is missing")
            try:
                out[name] = pd.read_parquet(path)
            except (pa.ArrowException, OSError) as e:
                raise UserError(f"unreadable table {path}: {e}") from None
        return out


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------

#: manifest fields that must match for a sweep to add checkpoints to an existing recording
_IDENTITY = ("model", "source_run_id", "probe", "folds", "precision", "taps_selector")


class RecordingWriter:
    """Write a recording: check an existing manifest is of the same thing, lock the folder, add checkpoints.

    ``header`` holds the identity of the recording (:data:`_IDENTITY`: model config, the run id of
    the weights, the probe set, folds, precision, tap selection) and descriptive fields. A folder
    that holds a recording of something else raises :class:`RecordingMismatch`. A checkpoint counts
    as done only when its statistics and raw files are there as written (size and sha256 kept in the
    manifest, paths inside the recording), the manifest lists taps, and its checkpoint file's sha256 is
    the one recorded; :meth:`check` says what is wrong otherwise, and a sweep records it anew.
    """

    def __init__(self, out: str | os.PathLike[str], header: dict[str, Any]) -> None:
        self.out = Path(out)
        self.path = self.out / MANIFEST_NAME
        self.manifest: dict[str, Any] = {"format": RECORDING_FORMAT, "stripe_version": __version__, **header,
                                         "taps": [], "checkpoints": []}
        self.done: dict[int, dict[str, Any]] = {}
        self.lock = fsio.DirLock(self.out, "--out")

    def open(self) -> "RecordingWriter":
        """Lock the folder and read what an earlier sweep recorded there (checking it is the same recording).

        A folder that holds files stripe did not write is refused (:func:`stripe.fsio.claim_dir`)."""
        self.created = not self.out.exists()
        fsio.claim_dir(self.out, "recording")
        self.lock.acquire()
        try:
            if self.path.exists():
                old = Recording.open(self.out).manifest
                for key in _IDENTITY:
                    if old.get(key) != self.manifest.get(key) and not (key == "folds" and old.get(key) is None
                                                                      and self.manifest.get(key) == 1):
                        raise RecordingMismatch(
                            f"{self.out} holds a recording with a different {key} ({_short(old.get(key))} vs "
                            f"{_short(self.manifest.get(key))}); choose another --out or delete it")
                if old.get("format") != RECORDING_FORMAT:
                    raise RecordingMismatch(f"{self.out} holds a recording of format {old.get('format')}; record "
                                            "into a new --out")
                self.manifest["taps"] = old.get("taps", [])
                self.done = {c["epoch"]: c for c in old.get("checkpoints", [])}
        except BaseException:
            self.lock.release()
            raise
        return self

    def close(self) -> None:
        """Release the folder's lock; a folder this writer created and recorded nothing into is removed again."""
        self.lock.release()
        if getattr(self, "created", False) and not self.done and not self.path.exists():
            for name in (fsio.DirLock.NAME, fsio.MARK):
                (self.out / name).unlink(missing_ok=True)
            try:
                self.out.rmdir()
            except OSError:  # something else appeared in it meanwhile: leave it
                pass

    def __enter__(self) -> "RecordingWriter":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def check(self, epoch: int, checkpoint_sha256: str | None) -> str | None:
        """None when ``epoch`` is recorded from this very checkpoint file and its files are intact; otherwise
        why not ('not recorded', 'stats file missing', 'raw file damaged (…)', 'checkpoint file changed' …)."""
        entry = self.done.get(epoch)
        if entry is None:
            return "not recorded"
        if not self.manifest.get("taps"):
            return "the manifest lists no taps"
        for kind in ("stats", "raw"):
            rel = entry.get(kind)
            if not rel:
                if kind == "stats":
                    return "no stats file in the manifest"
                continue
            try:
                path = inside(self.out, rel)
            except UserError:
                return f"{kind} path {rel!r} points outside the recording"
            if not path.is_file():
                return f"{kind} file missing"
            size, sha = entry.get(f"{kind}_bytes"), entry.get(f"{kind}_sha256")
            if size is not None and sha is not None:
                if _digest(path) != (size, sha):
                    return f"{kind} file damaged (its size or sha256 differs from the manifest's)"
            elif kind == "stats":  # written before the manifest kept hashes: the file must at least read back
                try:
                    epochs = set(pc.unique(read_stats_parquet(path)["epoch"]).to_pylist())
                except (ValueError, FileNotFoundError) as e:
                    return f"stats file unreadable ({e})"
                if epochs != {int(epoch)}:
                    return f"stats file holds epochs {sorted(epochs)}, not {epoch}"
        if checkpoint_sha256 is not None and not entry.get("checkpoint_sha256"):
            return "the manifest does not hold its checkpoint file's sha256"
        if checkpoint_sha256 is not None and entry.get("checkpoint_sha256") != checkpoint_sha256:
            return "checkpoint file changed"
        return None

    def is_done(self, epoch: int, checkpoint_sha256: str | None) -> bool:
        """Whether ``epoch`` is recorded from this very checkpoint file, its files intact (:meth:`check`)."""
        return self.check(epoch, checkpoint_sha256) is None

    def add(self, epoch: int, stats: Mapping[tuple[str, str], FoldStats], raw: Mapping[str, np.ndarray],
            taps: list[dict[str, Any]], *, checkpoint: str | None, checkpoint_sha256: str | None,
            write_manifest: bool = True) -> dict[str, Any]:
        """Write one checkpoint's statistics and raw vectors, then the manifest; returns the manifest entry."""
        stats_rel, raw_rel = f"stats/epoch_{epoch:04d}.parquet", f"raw/epoch_{epoch:04d}.safetensors"
        write_stats_parquet(self.out / stats_rel, stats_to_table(epoch, stats))
        _save_safetensors({str(k): v for k, v in raw.items()}, self.out / raw_rel)  # a Recorder key: "<tap>/<kind>"
        (sb, ss), (rb, rs) = _digest(self.out / stats_rel), _digest(self.out / raw_rel)
        entry = {"epoch": int(epoch), "stats": stats_rel, "raw": raw_rel, "checkpoint": checkpoint,
                 "checkpoint_sha256": checkpoint_sha256, "stats_bytes": sb, "stats_sha256": ss, "raw_bytes": rb,
                 "raw_sha256": rs}
        self.done[int(epoch)] = entry
        if not self.manifest["taps"]:
            self.manifest["taps"] = taps
        if write_manifest:
            self.write_manifest()
        return entry

    def write_manifest(self) -> None:
        """Write the manifest (atomically), its checkpoints sorted by epoch."""
        self.manifest["checkpoints"] = [self.done[e] for e in sorted(self.done)]
        fsio.write_json(self.path, self.manifest)


# --------------------------------------------------------------------------------------
# thinning
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thinning:
    """How a recording travels thinned: the files it leaves out, and the manifest (bytes) that replaces its own."""

    path: Path
    leave_out: frozenset[Path]
    manifest: bytes


def thin(path: str | os.PathLike[str]) -> Thinning | None:
    """How recording ``path`` travels thinned: every epoch's statistics and raw vectors left out but the last
    one's (and the per-channel table), its stored tables of every epoch (:data:`STORED_TABLES`, written before:
    :func:`stripe.analysis.write_tables` into ``tables/``) kept, and a manifest listing the kept epoch, with
    ``thinned`` saying what the recording held. None when it has fewer than two epochs (nothing to leave out).
    The recording itself is not changed."""
    rec = Recording.open(path)
    if rec.thinned is not None or len(rec.epochs) < 2:
        return None
    tables = rec.path / TABLES_DIR
    missing = [n for n in STORED_TABLES if not (tables / f"{n}.parquet").is_file()]
    if missing:
        raise NotFoundError(f"{rec.path} cannot be thinned before its tables are written: {', '.join(missing)} "
                            f"missing in {tables} (stripe stats {rec.path})")
    ckpts = [rec._checkpoint(e) for e in rec.epochs]
    leave_out = {rec._file(c[k]) for c in ckpts[:-1] for k in ("stats", "raw") if c.get(k)}
    leave_out.add(tables / "channels.parquet")
    manifest = {**rec.manifest, "checkpoints": ckpts[-1:],
                "thinned": {"epochs": list(rec.epochs), "kept": [rec.epochs[-1]], "tables": TABLES_DIR}}
    return Thinning(rec.path, frozenset(leave_out), (json.dumps(manifest, indent=1) + "\n").encode())


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
