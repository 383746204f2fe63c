"""Load a model from any checkpoint this package reads: its own, a plain state dict, or the official ASR code's.

The official code (zhongshsh/ASR, on bearpaw/pytorch-classification) saves ``{'epoch', 'state_dict',
'acc', 'best_acc', 'optimizer'}`` with DataParallel's ``module.`` prefix and its own module names;
:mod:`stripe.train.official` maps them. Every file is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import NotFoundError, UserError
from ..gates import reparameterize
from ..nn import ModelConfig, build_model, variant_label
from .official import (deployed_state, infer_config, normalize_names, official_input, stale_fused,
                           state_mismatch, state_shapes)
from ..nn.weights import read_weights
from .checkpoint import FORMAT, CheckpointError
from .rundir import METRIC_COLUMNS

#: the official log's columns, in the order its Logger writes them, and their metrics.csv names
OFFICIAL_LOG_COLUMNS = {"Learning Rate": "lr", "Train Loss": "train_loss", "Valid Loss": "test_loss",
                        "Train Acc.": "train_acc", "Valid Acc.": "test_acc"}
#: the files of an official run folder
OFFICIAL_CHECKPOINTS = ("checkpoint.pth.tar", "model_best.pth.tar")


@dataclass
class LoadInfo:
    """What :func:`load_model` read and did: the file's format and naming, the config and where it came from,
    the epoch, the key mapping, and how the deployed model was made (``model.load_info``)."""

    path: str
    format: str  # "stripe-checkpoint", "official-checkpoint" or "state-dict"
    naming: str  # "stripe" or "official" (a baseline's names are the same in both)
    config: ModelConfig  # the file's model (before any fold)
    config_from: str  # "given", "file" or "inferred"
    epoch: int | None = None
    stripped_prefix: str | None = None
    renamed: int = 0  # keys renamed from the official names
    fused: int = 0  # official ASR norms whose fused_bn (the official fold) was set aside
    deployed: str | None = None  # how the deployed model was made, None when not asked
    deployed_config: ModelConfig | None = None  # the returned model's config when deployed was asked
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # the file's acc/best_acc, or its metrics row
    fused_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the fused_bn tensors
    raw: Any = field(default=None, repr=False)  # the loaded object itself (a stripe checkpoint: every field)

    def summary(self) -> str:
        """One line: file, format, model, epoch and what was mapped."""
        c = self.config
        parts = [f"{self.path}: {self.format}", f"{c.arch} {variant_label(c.attn, c.asr, c.both)}, "
                 f"{c.num_classes} classes ({self.config_from} config)"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.stripped_prefix:
            parts.append(f"prefix {self.stripped_prefix!r} stripped")
        if self.naming == "official":
            parts.append(f"{self.renamed} official names mapped")
        if self.fused:
            parts.append(f"{self.fused} fused_bn set aside")
        if self.deployed:
            parts.append(f"deployed: {self.deployed}")
            if self.deployed_config is not None and self.deployed_config != self.config:
                d = self.deployed_config
                parts[-1] += f" -> {variant_label(d.attn, d.asr, d.both)}"
        return "; ".join(parts + self.notes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the fused tensors left out)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fused_state", "raw")}
        d["notes"], d["extra"] = list(self.notes), dict(self.extra)
        d["config"] = self.config.to_dict()
        d["deployed_config"] = None if self.deployed_config is None else self.deployed_config.to_dict()
        return d


def _given(config: ModelConfig | dict[str, Any], weights: dict[str, torch.Tensor]) -> ModelConfig:
    """The given config, with num_classes / in_chans left open taken from the file's head and stem."""
    cfg = ModelConfig.from_dict(config) if isinstance(config, dict) else config
    fill = {}
    if cfg.num_classes is None and "fc.weight" in weights:
        fill["num_classes"] = int(weights["fc.weight"].shape[0])
    if cfg.in_chans is None and "conv1.weight" in weights:
        fill["in_chans"] = int(weights["conv1.weight"].shape[1])
    return ModelConfig(**{**cfg.to_dict(), **fill}) if fill else cfg


def _describe(cfg: ModelConfig) -> str:
    return f"{cfg.arch} {variant_label(cfg.attn, cfg.asr, cfg.both)} with {cfg.num_classes} classes"


def load_model(path: str | Path, config: ModelConfig | dict[str, Any] | None = None, *, deployed: bool = False,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """A model from a checkpoint of this package, a plain state dict, or an official ASR checkpoint (eval mode).

    Without ``config`` the file's own config is used (this package's checkpoints) or it is inferred
    from the tensors (:func:`stripe.train.official.infer_config`); a given ``config`` is checked
    against the file (``CheckpointError`` listing missing and unexpected keys). With ``deployed``
    the ASR norms are folded: from the file's ``fused_bn`` (the official fold) when it holds one,
    else by :func:`stripe.nn.reparameterize`. The model carries ``.config`` and ``.load_info``
    (a :class:`LoadInfo`).
    """
    path = Path(path)
    wf = read_weights(path, map_location=map_location)
    state, fmt, file_cfg, epoch = wf.state, wf.format, wf.meta.get("model_config"), wf.meta.get("epoch")
    extra = {k: v for k, v in wf.meta.items() if k not in ("epoch", "model_config", "train_config")}
    if wf.key not in (None, "model", "state_dict"):
        extra["checkpoint_key"] = wf.key
    weights, fused, names = normalize_names(state)
    names["stripped_prefix"] = "".join(wf.stripped) or names["stripped_prefix"]
    if config is not None:
        cfg, source = _given(config, weights), "given"
    elif file_cfg is not None:
        cfg, source = ModelConfig.from_dict(file_cfg), "file"
    else:
        try:
            cfg, source = infer_config(weights), "inferred"
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; give the model config") from None
    try:
        model = build_model(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model config cannot be built ({e})") from None
    cfg = model.config
    problem = state_mismatch(state_shapes(model.state_dict()), state_shapes(weights))
    if problem:
        hint = ""
        if source != "inferred":
            try:
                hint = f"; the file looks like {_describe(infer_config(weights).resolved())}"
            except ValueError:
                pass
        raise CheckpointError(f"{path}: the weights do not fit {_describe(cfg)} ({source} config): {problem}{hint}")
    model.load_state_dict(weights, strict=True)
    info = LoadInfo(path=str(path), format=fmt, naming=names["naming"], config=cfg, config_from=source, epoch=epoch,
                    stripped_prefix=names["stripped_prefix"], renamed=names["renamed"], fused=names["fused"],
                    extra=extra, fused_state=fused, raw=wf.raw)
    ours = reparameterize(model) if fused and cfg.asr else None  # this package's fold, to judge the file's own
    stale = stale_fused(weights, fused, ours.state_dict()) if ours is not None else []
    if stale:  # said on every load: any work that deploys the file must not take its fused_bn for the fold
        info.notes.append(f"{len(stale)} fused_bn do not hold the official fold of the file's weights (stale: their "
                          f"running statistics or weights differ, e.g. {stale[0]}); stripe folds the file itself")
    if deployed:
        model, info.deployed = _deploy(model, cfg, weights, fused, stale, ours)
        info.deployed_config = model.config
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    model.eval()
    model.load_info = info
    return model


def _deploy(model: nn.Module, cfg: ModelConfig, weights: dict[str, torch.Tensor], fused: dict[str, torch.Tensor],
            stale: list[str], ours: nn.Module | None) -> tuple[nn.Module, str]:
    """The deployed model and how it was made: the official fused_bn when the file holds a valid one (none of it
    ``stale``), else our fold (``ours`` when already made)."""
    if not cfg.asr:
        return model, "nothing to fold (no ASR)"
    if fused and not stale:
        folded = build_model(cfg.folded())
        folded.load_state_dict(deployed_state(weights, fused), strict=True)
        return folded, "the file's fused_bn (the official fold)"
    return (ours if ours is not None else reparameterize(model)), "this package's fold"


def fold_vs_official(path: str | Path, images: Any = None) -> dict[str, Any]:
    """Max |Δ| between this package's fold of an official ASR checkpoint and the file's ``fused_bn``.

    Per BN quantity (``weight``, ``bias``, ``running_mean``, ``running_var``) over every ASR norm;
    with ``images`` (uint8 [N, H, W, 3], normalised as the official test transform, or a float
    tensor [N, 3, H, W] as is) also the logits of the two deployed models (``logits``) and of the
    ASR model against this package's fold (``logits_asr_vs_fold``).
    """
    model = load_model(path)
    info = model.load_info
    if not info.fused:
        raise UserError(f"{path}: holds no fused_bn tensors (not an ASR checkpoint of the official code)")
    ours = reparameterize(model).eval()
    folded = ours.state_dict()
    prefixes = sorted({k.split(".fused_bn.")[0] for k in info.fused_state})
    out: dict[str, Any] = {"norms": len(prefixes), "stale": stale_fused(model.state_dict(), info.fused_state, folded)}
    for n in ("weight", "bias", "running_mean", "running_var"):
        out[n] = max((folded[f"{p}.{n}"] - info.fused_state[f"{p}.fused_bn.{n}"]).abs().max().item() for p in prefixes)
    if images is not None:
        x = images if torch.is_tensor(images) and images.is_floating_point() else official_input(images)
        theirs = load_model(path, deployed=True)
        with torch.no_grad():
            y_ours, y_theirs, y_asr = ours(x), theirs(x), model(x)
        out["logits"] = (y_ours - y_theirs).abs().max().item()
        out["logits_asr_vs_fold"] = (y_asr - y_ours).abs().max().item()
        out["deployed_from"] = theirs.load_info.deployed
    return out


def read_official_log(path: str | Path):
    """The official code's tab-separated ``log.txt`` as a DataFrame with metrics.csv columns: epoch (1, 2, …),
    lr, train_loss, train_acc, test_loss, test_acc (accuracies in %). A malformed file raises ``ValueError``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: log file not found")
    lines = path.read_text(errors="replace").splitlines()
    if not lines:
        raise UserError(f"{path}: empty; expected the official log's header ({', '.join(OFFICIAL_LOG_COLUMNS)})")
    header = [c.strip() for c in lines[0].split("\t")]
    header = header[:-1] if header and header[-1] == "" else header  # the Logger ends each line with a tab
    if sorted(header) != sorted(OFFICIAL_LOG_COLUMNS):
        shown = repr(lines[0][:60]) + ("…" if len(lines[0]) > 60 else "")  # a binary file's bytes stay off the screen
        raise UserError(f"{path}: not an official log.txt: its first line is {shown} (expected the tab-separated "
                         f"columns {', '.join(OFFICIAL_LOG_COLUMNS)})")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        cells = cells[:-1] if cells and cells[-1] == "" else cells
        if len(cells) != len(header):
            raise UserError(f"{path}: line {i} has {len(cells)} fields, expected {len(header)}")
        try:
            values = [float(c) for c in cells]
        except ValueError:
            bad = next(c for c in cells if not _is_float(c))
            raise UserError(f"{path}: line {i}: {bad!r} is not a number") from None
        rows.append({OFFICIAL_LOG_COLUMNS[h]: v for h, v in zip(header, values)})
    columns = [c for c in METRIC_COLUMNS if c == "epoch" or c in OFFICIAL_LOG_COLUMNS.values()]
    df = pd.DataFrame(rows, columns=[c for c in columns if c != "epoch"])
    df.insert(0, "epoch", range(1, len(df) + 1))
    return df[columns]


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@dataclass
class OfficialCheckpoint:
    """One checkpoint file of an official run: its name, path, the epoch and accuracies it records."""

    name: str
    path: Path
    epoch: int | None
    acc: float | None
    best_acc: float | None


@dataclass
class OfficialRun:
    """An official run folder: its checkpoint files (by name) and its log (None when absent)."""

    folder: Path
    checkpoints: dict[str, OfficialCheckpoint]
    log: Any  # pandas.DataFrame | None
    notes: list[str] = field(default_factory=list)

    def checkpoint(self, name: str = "checkpoint.pth.tar") -> OfficialCheckpoint:
        """The checkpoint file ``name`` (``KeyError`` naming those present)."""
        if name not in self.checkpoints:
            raise KeyError(f"{self.folder}: no {name} (present: {', '.join(self.checkpoints) or 'none'})")
        return self.checkpoints[name]


def official_run(folder: str | Path, *, read_log: bool = True) -> OfficialRun:
    """An official run folder (``checkpoint.pth.tar``, ``model_best.pth.tar``, ``log.txt``): each checkpoint with
    the epoch, acc and best_acc it records (read with weights_only), and the log (``read_log`` False: left unread,
    for work that needs only the checkpoints); ``notes`` flag disagreements."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such run folder")
    names = [n for n in OFFICIAL_CHECKPOINTS if (folder / n).is_file()]
    names += sorted(p.name for p in folder.glob("*.pth.tar") if p.name not in names)
    log_path = folder / "log.txt"
    if not names and not log_path.is_file():
        raise NotFoundError(f"{folder}: holds neither *.pth.tar checkpoints nor log.txt (not an official run "
                                "folder)")
    checkpoints = {}
    for name in names:
        p = folder / name
        obj = read_weights(p).raw
        if not (isinstance(obj, dict) and "state_dict" in obj and "epoch" in obj):
            raise CheckpointError(f"{p}: not an official checkpoint (no 'epoch' and 'state_dict')")
        num = lambda k: float(obj[k]) if isinstance(obj.get(k), (int, float)) else None  # noqa: E731
        checkpoints[name] = OfficialCheckpoint(name, p, obj["epoch"] if isinstance(obj["epoch"], int) else None,
                                               num("acc"), num("best_acc"))
    log = read_official_log(log_path) if read_log and log_path.is_file() else None
    run = OfficialRun(folder, checkpoints, log)
    last = checkpoints.get("checkpoint.pth.tar")
    if log is not None and last is not None and last.epoch is not None and last.epoch != len(log):
        run.notes.append(f"checkpoint.pth.tar records epoch {last.epoch} but log.txt has {len(log)} rows")
    if log is not None and last is not None and last.acc is not None and len(log) and last.epoch == len(log) \
            and abs(float(log["test_acc"].iloc[-1]) - last.acc) > 5e-6:
        run.notes.append(f"checkpoint.pth.tar records acc {last.acc} but log.txt's last Valid Acc. is "
                         f"{float(log['test_acc'].iloc[-1])}")
    return run
