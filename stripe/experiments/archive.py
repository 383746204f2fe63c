"""A preset's output packed into one file: ``results.tar.gz`` holds every file under the output folder except
checkpoints (and stripe's hidden marker and lock files). With a size limit, the biggest recordings travel
thinned (:func:`stripe.record.format.thin`) until the archive fits."""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Sequence

from .. import fsio


def _members(out: Path, archive: Path, only: Sequence[str] | None = None) -> list[Path]:
    """The files that travel: everything under ``out`` (under its entries ``only`` when given) but the archive,
    hidden files and checkpoints (looked for inside ``out``, wherever ``out`` itself lies)."""
    return [p for p in sorted(out.rglob("*")) if p.is_file() and p != archive and not p.name.startswith(".")
            and "checkpoints" not in p.relative_to(out).parts
            and (only is None or p.relative_to(out).parts[0] in only)]


def _thinned(out: Path, size: int, limit: float) -> tuple[set[Path], dict[Path, bytes], list[str]]:
    """Thin the biggest recordings under ``out`` until ``size`` bytes fit under ``limit``: the files left out,
    the manifests replaced, the recordings thinned. A recording whose tables are not written gets them first."""
    from ..record.format import MANIFEST_NAME, STORED_TABLES, TABLES_DIR, thin

    recs = [m.parent for m in out.rglob(MANIFEST_NAME) if "checkpoints" not in m.relative_to(out).parts]
    drop: set[Path] = set()
    replaced: dict[Path, bytes] = {}
    thinned: list[str] = []
    for rec in sorted(recs, key=lambda r: sum(p.stat().st_size for p in r.rglob("*") if p.is_file()), reverse=True):
        if size <= limit:
            break
        try:
            if not all((rec / TABLES_DIR / f"{n}.parquet").is_file() for n in STORED_TABLES):
                from ..analysis import compute_tables, write_tables  # a stage stopped before its tables

                size += sum(p.stat().st_size for p in write_tables(compute_tables(rec), rec / TABLES_DIR))
            t = thin(rec)
        except Exception as e:  # noqa: BLE001 - packing goes on; the recording travels whole
            print(f"archive: {rec} is not thinned ({type(e).__name__}: {e})")
            continue
        if t is None:
            continue
        size -= sum(p.stat().st_size for p in t.leave_out if p.is_file())
        size += len(t.manifest) - (rec / MANIFEST_NAME).stat().st_size
        drop |= t.leave_out
        replaced[rec / MANIFEST_NAME] = t.manifest
        thinned.append(str(rec.relative_to(out)))
    return drop, replaced, thinned


def pack(out: Path, limit_mib: float | None = None, *, only: Sequence[str] | None = None) -> Path:
    """Everything under ``out`` except checkpoints, as ``out/results.tar.gz``; with ``limit_mib``, kept under it;
    with ``only``, just those entries of ``out`` (a preset whose results are small files beside its runs).

    When the files would weigh more than ``limit_mib``, the largest recordings travel thinned until they fit:
    only their last epoch's statistics and raw vectors, with their tables of every epoch (computed first where a
    stage did not write them); :func:`stripe.analysis.compute_tables` gives a thinned recording's tables as it
    gives any recording's. What was thinned is listed in ``PACKING.json`` inside the archive.
    """
    archive = out / "results.tar.gz"
    drop: set[Path] = set()
    replaced: dict[Path, bytes] = {}
    thinned: list[str] = []
    if limit_mib is not None:
        size = sum(p.stat().st_size for p in _members(out, archive, only))
        drop, replaced, thinned = _thinned(out, size, limit_mib * 2**20)

    def write(f) -> None:  # into a temporary file renamed over the old archive: a full disk keeps the old one
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for p in _members(out, archive, only):  # again: tables written while thinning travel too
                if p in drop:
                    continue
                if p in replaced:
                    _add_bytes(tar, str(p.relative_to(out)), replaced[p])
                else:
                    tar.add(p, arcname=str(p.relative_to(out)))
            if thinned:
                _add_bytes(tar, "PACKING.json", (json.dumps({"limit_mib": limit_mib, "thinned_recordings": thinned,
                                                             "left_out_files": len(drop)}, indent=1) + "\n").encode())

    fsio.atomic_write(archive, write)
    if thinned:
        print(f"archive: thinned {len(thinned)} recording(s) to their last epoch to stay under {limit_mib:g} MiB: "
              f"{', '.join(thinned)}")
    if limit_mib is not None and archive.stat().st_size > limit_mib * 2**20:
        print(f"warning: {archive} is {archive.stat().st_size / 2**20:.1f} MiB, over the {limit_mib:g} MiB limit")
    return archive


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``data`` to ``tar`` as the file ``name``."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))
