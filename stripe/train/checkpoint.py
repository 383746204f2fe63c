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
from ..nn import ModelConfig, build_model

FORMAT = "stripe-checkpoint/1"
_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, truncated, or does not match its model config."""


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch_XXXX.pt``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.pt"


_EPOCH_IN_NAME = re.compile(r"epoch[_-]?(\d+)", re.IGNORECASE)


def epoch_from_name(path: str | Path, *, any_number: bool = False) -> int | None:
    """The epoch a checkpoint file's name gives: ``epoch_12.pt``, ``model-epoch7.pth``; with ``any_number`` (a
    list of checkpoint files) also the last number in the name (``ckpt_12.pt``); else None. A run's own files
    are ``epoch_XXXX.pt`` (:func:`checkpoint_path`)."""
    m = _EPOCH_IN_NAME.search(Path(path).name)
    if m:
        return int(m.group(1))
    m = re.search(r"(\d+)(?!.*\d)", Path(path).stem) if any_number else None
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint file of a run, by epoch (temporary files are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
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
    """Read a checkpoint (``weights_only``); any problem raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, wrong file type …
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a stripe checkpoint (no format {FORMAT!r})")
    return ckpt


def load_weights(path: str | Path, model_config: ModelConfig | dict[str, Any] | None = None, *,
                 map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model built from a checkpoint and its weights; returns (model, checkpoint dict).

    ``path`` may be a stripe checkpoint (its own model config is used unless ``model_config`` is
    given) or a plain ``state_dict`` file (optionally under a ``state_dict``/``model`` key) from
    elsewhere, which needs ``model_config``. Weights that do not fit the config raise
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt, state = obj, obj["model"]
        model_config = model_config or obj["model_config"]
    else:
        if model_config is None:
            raise CheckpointError(f"{path}: not a stripe checkpoint; give the model config to read a plain state_dict")
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: holds no state_dict of tensors")
        ckpt = {"format": None, "epoch": None, "model": state}
    try:
        cfg = ModelConfig.from_dict(model_config) if isinstance(model_config, dict) else model_config
        model = build_model(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model config cannot be built ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:200]
        raise CheckpointError(f"{path}: weights do not match the model {cfg.name} attn={cfg.attn} asr={cfg.asr} "
                              f"both={cfg.both} ({detail})") from None
    return model, ckpt


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a checkpoint file's bytes (what a recording ties each of its rows to)."""
    return sha256_file(Path(path))
