"""Checkpoint files: ``checkpoints/epoch_XXXX.pt``, written atomically with the config inside."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import fsio
from ..errors import UserError
from ..data.imageset import sha256_file
from ..nn.weights import CHECKPOINT_FORMAT, CheckpointError, read_weights

FORMAT = CHECKPOINT_FORMAT
_CHECKPOINT_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch_XXXX.pt``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.pt"


_EPOCH_IN_NAME = re.compile(r"epoch[_-]?(\d+)", re.IGNORECASE)


def epoch_from_name(path: str | Path, *, any_number: bool = False) -> int | None:
    """The epoch a checkpoint file's name gives: ``epoch_12.pt``, ``model-epoch7.pth``; with ``any_number`` (a
    list of checkpoint files) also a name's one number standing alone between ``_``/``-`` (``ckpt_12.pt``,
    ``model-3.pth``), not a number glued to a word (``resnet20_lr0.1_bs128.pth`` names no epoch); else None. A
    run's own files are ``epoch_XXXX.pt`` (:func:`checkpoint_path`)."""
    m = _EPOCH_IN_NAME.search(Path(path).name)
    if m:
        return int(m.group(1))
    if not any_number:
        return None
    alone = [t for t in re.split(r"[_\-\s]+", Path(path).name.split(".")[0]) if t.isdigit()]
    return int(alone[0]) if len(alone) == 1 else None


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint file of a run, by epoch (temporary files are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_FILE.match(p.name))]
    return sorted(found)


def save_checkpoint(path: str | Path, *, epoch: int, model: nn.Module, train_config: dict[str, Any] | None = None,
                    optimizer: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    run_id: str | None = None) -> None:
    """Write a checkpoint atomically: weights, model config, train config, optimizer state, metrics, run id."""
    fsio.torch_save({
        "format": FORMAT,
        "epoch": int(epoch),
        "run_id": run_id,
        "model_config": model.config.to_dict(),
        "train_config": train_config,
        "model": model.state_dict(),
        "optimizer": optimizer,
        "metrics": metrics,
    }, path)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one of this package's checkpoints (``weights_only``), whole: weights, configs, optimizer state, metrics;
    any problem raises :class:`CheckpointError` naming the file."""
    wf = read_weights(path, map_location=map_location)
    if wf.format != "stripe-checkpoint":
        raise CheckpointError(f"{path}: not a stripe checkpoint (no format {FORMAT!r})")
    return wf.raw


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a checkpoint file's bytes (what a recording ties each of its rows to)."""
    return sha256_file(Path(path))
