"""The one reader of weights files: this package's checkpoints, plain state dicts, checkpoints that hold one
under a key, and the official ASR code's files, always with ``torch.load(weights_only=True)`` (no code in a
data file ever runs). Every problem is one line naming the file (:class:`CheckpointError`).

Building a model from what was read is :func:`stripe.train.load_model`'s job (it maps the official names
and infers the config); loading into a model built elsewhere is :func:`stripe.nn.load_weights_file`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UserError
from ..fsio import require_file

#: the format tag of this package's checkpoint files (written by :func:`stripe.train.save_checkpoint`)
CHECKPOINT_FORMAT = "stripe-checkpoint/1"
#: keys under which other checkpoints keep their state dict
CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")
#: prefixes a wrapper adds to every key: DataParallel/DDP and torch.compile
PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, truncated, or does not match its model config."""


@dataclass
class WeightsFile:
    """What a weights file holds: the state dict (prefixes stripped), its format, and what else it says.

    ``format`` is ``stripe-checkpoint``, ``official-checkpoint`` (``{'epoch', 'state_dict', 'acc', 'best_acc',
    'optimizer'}``) or ``state-dict``; ``meta`` the rest (epoch, run id, model config, metrics, acc …);
    ``raw`` the loaded object itself (a stripe checkpoint's optimizer state lives there).
    """

    path: Path
    state: dict[str, torch.Tensor]
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    stripped: list[str] = field(default_factory=list)
    raw: Any = field(default=None, repr=False)


def strip_prefix(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict without the ``module.`` / ``_orig_mod.`` prefixes every key shares, and the prefixes removed."""
    out, removed = dict(state), []
    while out:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix):]: v for k, v in out.items()}
        removed.append(prefix)
    return out, removed


def _tensors(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_weights(path: str | Path, *, map_location: str | torch.device = "cpu", option: str | None = None
                 ) -> WeightsFile:
    """Read a weights file with ``weights_only=True``: any problem raises :class:`CheckpointError` naming the file
    (and ``option``, e.g. ``--weights``, when given)."""
    path = Path(path)
    name = f"{option} {path}" if option else str(path)
    require_file(path, name, "a weights file", CheckpointError)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad pickle, code in the file: one line
        msg = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{name}: corrupt or truncated checkpoint, or not readable with weights_only=True "
                              f"({type(e).__name__}: {msg})") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state, fmt, key = obj["model"], "stripe-checkpoint", "model"
        meta = {k: obj.get(k) for k in ("epoch", "run_id", "model_config", "train_config", "metrics")}
    elif isinstance(obj, dict) and _tensors(obj.get("state_dict")) and {"epoch", "best_acc"} <= set(obj):
        state, fmt, key = obj["state_dict"], "official-checkpoint", "state_dict"
        meta = {"epoch": obj["epoch"] if isinstance(obj["epoch"], int) else None,
                **{k: obj[k] for k in ("acc", "best_acc") if isinstance(obj.get(k), (int, float))}}
    elif _tensors(obj):
        state, fmt, key, meta = obj, "state-dict", None, {}
    elif isinstance(obj, dict):
        key = next((k for k in CHECKPOINT_KEYS if _tensors(obj.get(k))), None)
        if key is None:
            raise CheckpointError(f"{name}: a dict that is not a state dict and holds none of the keys "
                                  f"{', '.join(CHECKPOINT_KEYS)} (keys: {', '.join(map(str, list(obj)[:8]))})")
        state, fmt = obj[key], "state-dict"
        meta = {"epoch": obj.get("epoch") if isinstance(obj.get("epoch"), int) else None}
    else:
        raise CheckpointError(f"{name}: holds no state dict of tensors (got {type(obj).__name__})")
    state, stripped = strip_prefix(state)
    return WeightsFile(path, state, fmt, meta, key, stripped, obj)
