"""Run directories: ``config.json``, ``metrics.csv``, ``checkpoints/``; locked while written.

A run directory holds ``config.json`` (format ``stripe-run/2``; ``stripe-run/1`` still reads),
``metrics.csv`` (one row per epoch; epoch 0 is the initialisation) and
``checkpoints/epoch_XXXX.pt``, plus what later stages write beside them (``recording/``,
``ablation/``). One process writes a run at a time (:class:`~stripe.fsio.DirLock`).
"""
from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path
from typing import Any

from .. import fsio
from ..errors import NotFoundError, StripeError, UserError
import numpy as np

from ..data import EvalSets, ImageSet, SubsetSpec, eval_sets, load_dataset, probe_hash, stratified_indices, take
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from .config import LEGACY_PROBE_SPLIT, TrainConfig

RUN_FORMAT = "stripe-run/2"
READABLE_RUN_FORMATS = ("stripe-run/1", RUN_FORMAT)
METRIC_COLUMNS = ["epoch", "lr", "lr_end", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds",
                  "train_seconds", "images_per_s"]
_INT_COLUMNS = ("epoch",)


class RunExistsError(StripeError, FileExistsError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


# --------------------------------------------------------------------------- metrics.csv
def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with numbers as int/float (empty cells: NaN)."""
    out: dict[str, Any] = {}
    for c in METRIC_COLUMNS:
        v = row.get(c)
        if v is None or v == "":
            out[c] = float("nan")
        elif c in _INT_COLUMNS:
            out[c] = int(float(v))
        else:
            out[c] = float(v)
    return out


def read_metrics_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv`` with numeric types (epoch int, the rest float)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        try:
            return [_typed(r) for r in csv.DictReader(f)]
        except ValueError as e:
            raise UserError(f"{path}: corrupt metrics file ({e})") from None


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write ``metrics.csv`` atomically (NaN as an empty cell)."""
    def cell(v: Any) -> str:
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = [",".join(METRIC_COLUMNS)] + [",".join(cell(r.get(c)) for c in METRIC_COLUMNS) for r in rows]
    fsio.write_text(path, "\n".join(lines) + "\n")


def read_metrics(run_dir: str | Path):
    """A run's ``metrics.csv`` as a DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "metrics.csv")


def restore_rows(run_dir: Path, start: int) -> list[dict[str, Any]]:
    """Metrics rows 0..``start`` of a run being resumed: ``metrics.csv``, completed from the checkpoints'
    own rows where a crash fell between writing a checkpoint and appending its row."""
    rows = {r["epoch"]: r for r in read_metrics_rows(run_dir / "metrics.csv") if r["epoch"] <= start}
    for epoch, path in list_checkpoints(run_dir):
        if epoch <= start and epoch not in rows:
            saved = load_checkpoint(path).get("metrics")
            if isinstance(saved, dict):
                rows[epoch] = _typed(saved)
    return [rows[e] for e in sorted(rows)]


# --------------------------------------------------------------------------- config.json
def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``config.json``; a clear one-line error when it is not a run directory."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise NotFoundError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise NotFoundError(f"{run_dir}: not a run directory (no config.json)")
    info = fsio.read_json(path)
    if not isinstance(info, dict) or info.get("format") not in READABLE_RUN_FORMATS:
        fmt = info.get("format") if isinstance(info, dict) else None
        raise UserError(f"{path}: not a stripe run (format {fmt!r})")
    return info


def run_config(info: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a run's ``config.json`` (either format)."""
    return TrainConfig.from_dict(info["train"])


def recipe_of(path: str | Path) -> TrainConfig:
    """The training recipe in ``path``: a run's ``config.json`` (or the run folder itself), or a JSON training config
    (``TrainConfig.to_dict()``); what ``stripe train --config`` reruns. Errors are one line naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise NotFoundError(f"--config {path}: no such file")
    obj = fsio.read_json(path, "--config")
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("stripe-run/"):
        obj = obj.get("train")
    if not isinstance(obj, dict):
        raise UserError(f"--config {path}: expected a run's config.json or a JSON training config")
    try:
        return TrainConfig.from_dict(obj)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"--config {path}: not a training config ({e})") from None


def run_info(cfg: TrainConfig, sets: "RunData", *, run_id: str, model_config: dict[str, Any],
             params: dict[str, int], world_size: int, device: str, version: str) -> dict[str, Any]:
    """The content of ``config.json`` for a new run: what was asked for and what was actually used."""
    return {
        "format": RUN_FORMAT,
        "run_id": run_id,
        "stripe_version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train": cfg.to_dict(),
        "model": model_config,
        "data": {"dataset": sets.train.name, "source": sets.train.source, "test_source": sets.eval.score.source,
                 "train_hash": sets.train.source_hash,
                 "test_hash": sets.eval.score.source_hash, "test_full_hash": sets.test_full.source_hash,
                 "train_n": len(sets.train), "test_n": len(sets.eval.score), "classes": list(sets.train.classes)},
        "probe": sets.eval.probe_spec.to_dict(),
        "score": sets.eval.score_spec.to_dict(),
        "distributed": {"world_size": world_size, "global_batch": cfg.batch_size,
                        "per_rank_batch": cfg.batch_size // world_size},
        "device": device,
        "params": params,
        "lr_milestone_epochs": cfg.milestone_epochs(),
    }


# --------------------------------------------------------------------------- data of a run
class RunData:
    """The images of a run: the training set (subset applied), the full test split, and the probe and
    scored sets (:func:`stripe.data.eval_sets`)."""

    def __init__(self, train: ImageSet, test_full: ImageSet, eval: EvalSets) -> None:
        self.train, self.test_full, self.eval = train, test_full, eval

    @property
    def test(self) -> ImageSet:
        """The scored test images."""
        return self.eval.score

    @property
    def probe(self) -> ImageSet:
        """The probe images (they estimate the attention statistics)."""
        return self.eval.probe


def _legacy_sets(cfg: TrainConfig, test_full: ImageSet) -> EvalSets:
    """Probe and scored sets of a ``stripe-run/1`` run. Its probe was drawn from the test split with the
    same key stream as its test subset, so the two overlapped; the scored set is now the whole test split
    *without* the probe images, so that images estimating μ never score (the run's own metrics were on
    its old test subset)."""
    probe_idx = stratified_indices(test_full.labels, min(cfg.probe_n, len(test_full)), cfg.probe_seed)
    score_idx = np.setdiff1d(np.arange(len(test_full)), probe_idx)
    return EvalSets(take(test_full, probe_idx), take(test_full, score_idx),
                    SubsetSpec("test", len(probe_idx), cfg.probe_seed, probe_hash(test_full.source_hash, probe_idx)),
                    SubsetSpec("test", len(score_idx), None, probe_hash(test_full.source_hash, score_idx),
                               excludes="probe"))


def load_run_data(cfg: TrainConfig, *, download: bool = False, need_train: bool = True) -> RunData:
    """The data of ``cfg``: sizes are checked against what the splits hold (nothing is clamped)."""
    test_full = load_dataset(cfg.dataset, "test", root=cfg.data_root, download=download)
    train_full = load_dataset(cfg.dataset, "train", root=cfg.data_root, download=download) \
        if need_train or cfg.probe_split == "train" else None
    if cfg.probe_split == LEGACY_PROBE_SPLIT:
        sets = _legacy_sets(cfg, test_full)
    else:
        sets = eval_sets(test_full, train_full=train_full, probe_split=cfg.probe_split, probe_n=cfg.probe_n,
                         probe_seed=cfg.probe_seed, test_subset=cfg.test_subset, seed=cfg.seed)
    train = train_full
    if train is not None and cfg.train_subset is not None:
        if cfg.train_subset > len(train):
            raise UserError(f"--train-subset {cfg.train_subset} is larger than the {len(train)} images of the "
                             "training split")
        train = take(train, stratified_indices(train.labels, cfg.train_subset, cfg.seed))
    return RunData(train, test_full, sets)


def run_eval_sets(info: dict[str, Any], *, data_root: str | None = None) -> tuple[TrainConfig, RunData]:
    """The config and the probe/scored sets of an existing run, checked against the hashes in its ``config.json``."""
    cfg = run_config(info)
    if data_root:
        from dataclasses import replace

        cfg = replace(cfg, data_root=data_root)
    data = load_run_data(cfg, need_train=False)
    probe_spec = info["probe"]
    if data.eval.probe_spec.hash != probe_spec["hash"]:
        raise UserError("the probe set differs from the one saved with the run (the data set's files changed?)")
    score_spec = info.get("score")  # stripe-run/1 has none: its scored set is rebuilt by the legacy rule
    if score_spec is not None and data.eval.score_spec.hash != score_spec["hash"]:
        raise UserError("the scored test set differs from the one saved with the run (the data set's files changed?)")
    return cfg, data


# --------------------------------------------------------------------------- preparing a run directory
def default_run_dir(cfg: TrainConfig) -> Path:
    """Where a run goes when no folder is given: ``<data dir>/runs/<model>-<block>-<variant>-seed<N>``."""
    from ..data import default_data_dir
    from ..nn.variants import slug, variant_of

    m = cfg.model.resolved()
    arch = slug(m.name) if m.is_source else f"{m.name}-{m.block}"
    return default_data_dir() / "runs" / f"{arch}-{slug(variant_of(m).label)}-seed{cfg.seed}"



def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    flat = lambda d: {**{k: v for k, v in d.items() if k != "model"}, **{f"model.{k}": v for k, v in d.get("model", {}).items()}}
    a, b = flat(a), flat(b)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def resume_epoch(run_dir: Path, cfg: TrainConfig) -> int | None:
    """The epoch a run resumes from (its last checkpoint), after checking the saved config matches ``cfg``."""
    config_file = run_dir / "config.json"
    saved = run_config(read_run(run_dir))
    diff = _config_diff(saved.to_dict(), cfg.to_dict())
    if diff:
        raise UserError(f"{config_file}: cannot resume with a different config ({'; '.join(diff)})")
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][0] if ckpts else None


def check_run_dir(run_dir: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> int | None:
    """Decide what to do with ``run_dir`` without changing anything: the epoch to resume from, or None to start anew.

    Raises :class:`RunExistsError` when it holds a run and neither resume nor overwrite was asked for.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory")
    has_run = (run_dir / "config.json").exists()
    if not has_run:
        if list_checkpoints(run_dir) and not overwrite:
            raise RunExistsError(f"{run_dir} holds checkpoints but no config.json; refusing to mix runs "
                                 "(--overwrite replaces them)")
        return None
    if overwrite:
        return None
    if not resume:
        raise RunExistsError(f"{run_dir} already holds a run (config.json); pass --resume to continue it "
                             "or --overwrite to start again")
    return resume_epoch(run_dir, cfg)


#: what a run directory holds that stripe wrote (``--overwrite`` moves these aside and nothing else)
RUN_ENTRIES = ("config.json", "metrics.csv", "checkpoints", "recording", "ablation", "predictions_final.npz")


def clear_run_dir(run_dir: Path) -> Path | None:
    """Move the old run's files (:data:`RUN_ENTRIES`; nothing else in ``run_dir``) into a hidden trash folder
    beside the new run; returns it.

    Each move is a rename, so nothing is lost if this is interrupted; :func:`empty_trash` deletes the
    old run once the new one has its first checkpoint.
    """
    entries = [run_dir / n for n in RUN_ENTRIES if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    if not entries:
        return None
    trash = run_dir / f".trash-{time.strftime('%Y%m%d-%H%M%S')}-{id(entries) & 0xFFFF:04x}"
    trash.mkdir()
    for p in entries:
        p.rename(trash / p.name)
    return trash


def restore_run_dir(run_dir: Path, trash: Path) -> None:
    """Undo :func:`clear_run_dir`: remove what the new run wrote and move the old run back."""
    for n in RUN_ENTRIES:  # while the old run is in the trash, these are the new run's
        new = run_dir / n
        if new.is_dir() and not new.is_symlink():
            shutil.rmtree(new)
        elif new.exists() or new.is_symlink():
            new.unlink()
    for p in trash.iterdir():
        p.rename(run_dir / p.name)
    trash.rmdir()


def empty_trash(run_dir: Path) -> None:
    """Delete the old runs moved aside by :func:`clear_run_dir`."""
    for p in run_dir.glob(".trash-*"):
        shutil.rmtree(p, ignore_errors=True)

