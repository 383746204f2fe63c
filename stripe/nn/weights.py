"""The one reader of weights files: this package's checkpoints, plain state dicts, checkpoints that hold one
under a key, and the official ASR code's files, always with ``torch.load(weights_only=True)`` (no code in a
data file ever runs). Every problem is one line naming the file (:class:`CheckpointError`).

The wrapper prefixes (DataParallel/DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``) are stripped here and
nowhere else. Building a model from what was read is :func:`stripe.train.load_model`'s job (it maps the official
names, and :func:`stripe.nn.infer_config` infers the config); loading into a model built elsewhere is
:func:`stripe.nn.load_weights_file`'s.
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


def _not_tensors(obj: Any) -> str:
    """Why ``obj`` is not a state dict (a non-empty dict of tensors), in a few words."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not a dict of tensors"
    if not obj:
        return "empty (no tensors)"
    k, v = next((k, v) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    return f"not all tensors ({k!r} is a {type(v).__name__})"


#: the largest epoch number a file may give (a run's files are epoch_XXXX.pt; larger is a damaged field)
MAX_EPOCH = 10 ** 7


def checked_epoch(value: Any, name: str, *, strict: bool) -> int | None:
    """The ``epoch`` field of a file as an epoch number: a whole number 0 … :data:`MAX_EPOCH`. Anything else is a
    one-line :class:`CheckpointError` naming ``name`` (a bool or an out-of-range number always; any non-number when
    ``strict``, else None: other code's files may keep something else there)."""
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and not 0 <= value <= MAX_EPOCH):
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "…"
        raise CheckpointError(f"{name}: its epoch {shown} is not an epoch number (a whole number from 0 to "
                              f"{MAX_EPOCH:,}); the file is damaged or not a checkpoint")
    if isinstance(value, int):
        return value
    if strict:
        raise CheckpointError(f"{name}: its epoch is a {type(value).__name__}, not a whole number; the file is damaged")
    return None


def _load_failure(e: BaseException) -> str:
    """What ``torch.load`` said, in one line: for a file refused by ``weights_only=True`` the reason itself (the
    refused global or instruction), without torch's advice to load it unsafely."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
        why = [ln.replace("WeightsUnpickler error:", "").strip() for ln in lines if not ln.startswith(skip)]
        why = [w for w in why if w]
        return ("refused by weights_only=True, which runs no code from the file: "
                + ("; ".join(why) or "an object it does not allow"))[:600]
    return f"{type(e).__name__}: {(lines or [''])[0][:300]}"


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
        raise CheckpointError(f"{name}: corrupt or truncated checkpoint, or not readable with weights_only=True "
                              f"({_load_failure(e)})") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        # the tag says what the file should hold; a damaged or forged one is told apart here, in one line
        if not _tensors(obj.get("model")):
            raise CheckpointError(f"{name}: a {CHECKPOINT_FORMAT} file whose 'model' is "
                                  f"{'missing' if 'model' not in obj else _not_tensors(obj['model'])}; the file is damaged")
        for k in ("model_config", "train_config", "metrics"):
            if obj.get(k) is not None and not isinstance(obj[k], dict):
                raise CheckpointError(f"{name}: a {CHECKPOINT_FORMAT} file whose {k!r} is a {type(obj[k]).__name__}, "
                                      "not a dict; the file is damaged")
        state, fmt, key = obj["model"], "stripe-checkpoint", "model"
        meta = {k: obj.get(k) for k in ("epoch", "run_id", "model_config", "train_config", "metrics")}
        meta["epoch"] = checked_epoch(obj.get("epoch"), name, strict=True)
    elif isinstance(obj, dict) and _tensors(obj.get("state_dict")) and {"epoch", "best_acc"} <= set(obj):
        state, fmt, key = obj["state_dict"], "official-checkpoint", "state_dict"
        meta = {"epoch": checked_epoch(obj["epoch"], name, strict=False),
                **{k: obj[k] for k in ("acc", "best_acc") if isinstance(obj.get(k), (int, float))}}
    elif _tensors(obj):
        state, fmt, key, meta = obj, "state-dict", None, {}
    elif isinstance(obj, dict):
        key = next((k for k in CHECKPOINT_KEYS if _tensors(obj.get(k))), None)
        if key is None:
            held = next((k for k in CHECKPOINT_KEYS if k in obj), None)
            if held is not None:
                raise CheckpointError(f"{name}: its {held!r} is {_not_tensors(obj[held])}, so the file holds no "
                                      "weights to load")
            if any(isinstance(v, torch.Tensor) for v in obj.values()):
                raise CheckpointError(f"{name}: a state dict whose values are {_not_tensors(obj)}")
            raise CheckpointError(f"{name}: a dict that is not a state dict and holds none of the keys "
                                  f"{', '.join(CHECKPOINT_KEYS)} (keys: {', '.join(map(str, list(obj)[:8]))})")
        state, fmt = obj[key], "state-dict"
        meta = {"epoch": checked_epoch(obj.get("epoch"), name, strict=False)}
    else:
        raise CheckpointError(f"{name}: holds no state dict of tensors (got {type(obj).__name__})")
    state, stripped = strip_prefix(state)
    return WeightsFile(path, state, fmt, meta, key, stripped, obj)
