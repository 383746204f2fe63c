"""``stripe stats`` as one library call: the tables of one recording, or several runs of one variant aggregated.

Several recordings aggregate only when they are distinct runs of the same thing: each from a training run
(a run id), no two from the same run or with the same seed, and all of the same model, data set, probe
set and taps. Anything else (the same recording twice, one run recorded twice with different tap
selections, different variants) is refused with the reason, because it would pass for seed-to-seed
agreement.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import fsio
from ..errors import NotFoundError, UserError
from ..nn.variants import config_label
from ..record.format import Recording
from .tables import SETTLE_EPS, STRIPE_THRESHOLD, aggregate_seeds, compute_tables, write_tables


@dataclass
class StatsResult:
    """What :func:`stats` computed and wrote."""

    tables: dict[str, pd.DataFrame]
    out: Path
    written: list[Path] = field(default_factory=list)
    recordings: list[Path] = field(default_factory=list)

    @property
    def aggregated(self) -> bool:
        """Whether several runs were aggregated (``tables`` holds ``seeds``)."""
        return "seeds" in self.tables


def _seed_of(rec: Recording) -> int | None:
    """The training seed of the run a recording came from (its ``config.json``), when the run is at hand."""
    run_dir = rec.manifest.get("run_dir")
    for cand in ([Path(run_dir)] if run_dir else []) + [rec.path.parent]:
        cfg = cand / "config.json"
        if cfg.is_file():
            try:
                info = json.loads(cfg.read_text())
                if info.get("run_id") == rec.manifest.get("source_run_id"):
                    return int(info["train"]["seed"])
            except (ValueError, KeyError, TypeError):
                continue
    return None


def check_seed_recordings(recs: Sequence[Recording]) -> None:
    """Refuse (one-line :class:`~stripe.errors.UserError`) recordings that are not distinct runs of one variant."""
    paths = [r.path.resolve() for r in recs]
    dup = sorted({str(p) for p in paths if paths.count(p) > 1})
    if dup:
        raise UserError(f"the same recording is given twice ({dup[0]}); seeds must be distinct runs")
    ids = [r.manifest.get("source_run_id") for r in recs]
    for r, rid in zip(recs, ids):
        if not rid:
            raise UserError(f"{r.path}: not the recording of a training run (no run id); only runs aggregate as seeds")
    for i, rid in enumerate(ids):
        if ids.index(rid) != i:
            raise UserError(f"{recs[ids.index(rid)].path} and {recs[i].path} record the same run ({rid}); seeds must "
                            "be distinct runs")
    first = recs[0]  # what the runs are comes before their seeds: two models are refused as two models
    for r in recs[1:]:
        for what, get in (("model", lambda m: m.manifest.get("model")),
                          ("data set", lambda m: m.manifest.get("dataset")),
                          ("probe set", lambda m: (m.manifest.get("probe") or {}).get("hash")),
                          ("taps", lambda m: list(m.taps["key"]))):
            if get(r) != get(first):
                shown = ""
                if what == "model":
                    try:
                        a, b = config_label(get(r)), config_label(get(first))
                        shown = f" ({a} and {b})" if a != b else ""
                    except (TypeError, ValueError, KeyError, AttributeError):
                        shown = ""
                raise UserError(f"{r.path} and {first.path} differ in their {what}{shown}; only runs of one variant "
                                "with the same taps aggregate")
    seeds = [_seed_of(r) for r in recs]
    known = [s for s in seeds if s is not None]
    if len(known) != len(set(known)):
        s = next(x for x in known if known.count(x) > 1)
        twins = [str(r.path) for r, x in zip(recs, seeds) if x == s]
        raise UserError(f"{twins[0]} and {twins[1]} are runs with the same seed ({s}); seeds must differ")


def find_recording(path: str | os.PathLike[str]) -> Path:
    """The recording ``path`` names: the folder itself, or the ``recording/`` inside a training run."""
    p = Path(path)
    if not p.is_dir() or (p / "manifest.json").is_file():
        return p
    if (p / "recording" / "manifest.json").is_file():
        return p / "recording"
    if (p / "config.json").is_file():
        if not has_attention(p):
            raise NotFoundError(f"{p}: a training run of a model without attention: it has no taps to record")
        raise NotFoundError(f"{p}: a training run without a recording (no {p / 'recording'}); record it with "
                            f"`stripe collect {p}` (or train with --record)")
    return p


def has_attention(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the model of a training run has attention to record (a baseline has none; a model from elsewhere
    may have gates, found when it is recorded)."""
    try:
        model = json.loads((Path(run_dir) / "config.json").read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return True  # unknown: let the recording say
    return bool(model.get("attn")) or ":" in str(model.get("name", ""))


def stats(recordings: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, out: str | os.PathLike[str] | None = None,
          eps: float = SETTLE_EPS, threshold: float = STRIPE_THRESHOLD) -> StatsResult:
    """The stripe tables of a recording, written to ``out`` (default ``REC/tables``); or, for several
    recordings (runs of one variant, checked by :func:`check_seed_recordings`), their stage tables aggregated
    per (epoch, stage) with t-intervals over runs, written as ``seeds`` (default next to the first recording,
    ``tables_seeds``)."""
    recs_in = [recordings] if isinstance(recordings, (str, os.PathLike)) else list(recordings)
    if not recs_in:
        raise UserError("give at least one recording")
    recs = [Recording.open(find_recording(r)) for r in recs_in]
    if len(recs) > 1:
        check_seed_recordings(recs)
        per_run = [compute_tables(r, eps=eps, threshold=threshold) for r in recs]
        tables: dict[str, Any] = {"seeds": aggregate_seeds([t["stages"] for t in per_run])}
        dest = Path(out) if out else recs[0].path.parent / "tables_seeds"
    else:
        tables = compute_tables(recs[0], eps=eps, threshold=threshold)
        dest = Path(out) if out else recs[0].path / "tables"
    dest = fsio.claim_dir(dest, "tables")
    written = write_tables(tables, dest)
    return StatsResult(tables, dest, written, [r.path for r in recs])
