"""The ASR paper's official code (zhongshsh/ASR, on bearpaw/pytorch-classification): its names, what its files
imply about the data and the inputs, and its run folders.

The name mapping is pure functions on state dicts. Once names are mapped the two codes build the same
CIFAR ResNets, so an official state dict loads into :func:`~stripe.nn.build_model` exactly.

Key mapping (official -> this package), for a block ``B`` (``layerS.I``) and its last norm ``P``
(``B.bn3``; ``B.bn2`` in a basic block), on keys whose DataParallel ``module.`` prefix is already stripped
(by :func:`stripe.nn.read_weights`, the one reader of weights files):

- ``B.attention_module.fc1/fc2.*`` -> ``B.attn.fc1/fc2.*`` (SE after the last BN)
- ``P.vector`` [1, C, 1, 1] -> ``P.psi`` (ASR's ψ)
- ``P.bn.*`` -> ``P.norm.*`` (the BN inside ASR)
- ``P.attention_module.fc1/fc2.*`` -> ``P.attn.fc1/fc2.*`` (the SE fed by ψ)
- ``P.fused_bn.*`` -> set aside by :func:`split_fused` (the official fold, not a model weight);
  :func:`deployed_state` makes it the folded model's ``P.*``
- ``P.fused_bn.*`` alone (after the official ``switch_to_deploy(delete=True)``) -> ``P.*``
- every other key keeps its name (stem, convs, BNs, shortcut, fc)

The official code has SE only and builds bottleneck networks only (its ``--block-name`` default;
its BasicBlock takes no attention); bearpaw's plain basic networks have this package's names. It trains on
CIFAR-10 or CIFAR-100 and normalises both with CIFAR-10's mean and std (:data:`OFFICIAL_DATASETS`,
:data:`OFFICIAL_MEAN`, :data:`OFFICIAL_STD`: what :func:`~stripe.train.load_model` puts in the
:class:`~stripe.train.LoadInfo` of an official file). A run folder holds ``checkpoint.pth.tar``, ``model_best.pth.tar`` and
``log.txt`` (:func:`official_run`, :func:`read_official_log`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import NotFoundError, UserError
from ..gates import reparameterize
from ..nn import CheckpointError, ModelConfig, build_model, read_weights
from .rundir import METRIC_COLUMNS

#: the official training script's test transform (ToTensor, then Normalize), for CIFAR-10 and CIFAR-100 alike
OFFICIAL_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_STD = (0.2023, 0.1994, 0.2010)
#: where an official file's input normalisation comes from, in words (what collect and ablate say they inferred)
OFFICIAL_PREPROCESS_FROM = "the official ASR code's normalisation: CIFAR-10's mean and std, for CIFAR-100 too"
#: the data sets the official code trains, told apart by the classes of the model
OFFICIAL_DATASETS = {10: "cifar10", 100: "cifar100"}
#: the official log's columns, in the order its Logger writes them, and their metrics.csv names
OFFICIAL_LOG_COLUMNS = {"Learning Rate": "lr", "Train Loss": "train_loss", "Valid Loss": "test_loss",
                        "Train Acc.": "train_acc", "Valid Acc.": "test_acc"}
#: the files of an official run folder
OFFICIAL_CHECKPOINTS = ("checkpoint.pth.tar", "model_best.pth.tar")
_NORM_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

State = dict[str, torch.Tensor]


def is_official(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a (prefix-stripped) state dict uses the official code's names (``attention_module``, ``vector``,
    ``fused_bn``); a baseline network has the same names in both codes and gives False."""
    for k in state:
        parts = k.split(".")
        if "attention_module" in parts or "fused_bn" in parts or parts[-1] == "vector":
            return True
    return False


def _asr_prefixes_official(state: Mapping[str, torch.Tensor]) -> set[str]:
    """Paths of the official ASR norms: those holding ``vector`` or ``bn.*`` beside ``fused_bn.*``."""
    found = {k[: -len(".vector")] for k in state if k.endswith(".vector")}
    bn_owners = {k.rsplit(".bn.", 1)[0] for k in state if ".bn." in k}
    found |= {k.split(".fused_bn.")[0] for k in state if ".fused_bn." in k} & bn_owners
    return found


def split_fused(state: Mapping[str, torch.Tensor]) -> tuple[State, State]:
    """(weights, fused): the official ASR norms' ``fused_bn`` tensors set apart from the model weights.

    Only the ``fused_bn`` of a live ASR norm (one that still holds ``vector``/``bn``) is set aside;
    keys keep their (official) names. A deleted-deploy norm's ``fused_bn`` is its weight and stays.
    """
    live = _asr_prefixes_official(state)
    weights, fused = {}, {}
    for k, v in state.items():
        p, sep, _ = k.partition(".fused_bn.")
        (fused if sep and p in live else weights)[k] = v
    return weights, fused


def from_official(state: Mapping[str, torch.Tensor]) -> State:
    """The official code's state dict in this package's names (its ``module.`` prefix stripped, as
    :func:`stripe.nn.read_weights` gives it, or :func:`stripe.nn.strip_prefix` for one in memory).

    ``fused_bn`` tensors of live ASR norms are not model weights: split them off first with
    :func:`split_fused` (``ValueError`` otherwise). A norm that holds only ``fused_bn`` (the
    official ``switch_to_deploy(delete=True)``) becomes the plain BN of the folded model.
    """
    live = _asr_prefixes_official(state)
    stale = [k for k in state if k.partition(".fused_bn.")[0] in live and ".fused_bn." in k]
    if stale:
        raise UserError(f"the state dict holds {len(stale)} fused_bn tensors (e.g. {stale[0]}), the official fold, "
                         "which are not model weights; split them off first with split_fused()")
    out: State = {}
    for k, v in state.items():
        out[_rename_official(k, live)] = v
    return out


def _rename_official(key: str, live: set[str]) -> str:
    for p in live:
        if key.startswith(p + "."):
            rest = key[len(p) + 1:]
            head, _, tail = rest.partition(".")
            if rest == "vector":
                return f"{p}.psi"
            if head == "bn":
                return f"{p}.norm.{tail}"
            if head == "attention_module":
                return f"{p}.attn.{tail}"
            return key
    if ".fused_bn." in key:  # deleted deploy: the fused BN is the norm itself
        return key.replace(".fused_bn.", ".", 1)
    return ".".join("attn" if part == "attention_module" else part for part in key.split("."))


def _asr_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Paths of this package's ASR norms (those holding ``psi``), in key order."""
    return [k[: -len(".psi")] for k in state if k.endswith(".psi")]


def check_official(config: ModelConfig) -> ModelConfig:
    """``config`` resolved, or ``ValueError`` when the official code cannot build that model."""
    cfg = config.resolved()
    problems = []
    if cfg.is_source:
        problems.append("it is a source model")
    else:
        if cfg.attn not in (None, "se"):
            problems.append(f"attention {cfg.attn!r} (the official code has SE only)")
        if cfg.reduction not in (None, 16) or cfg.attn_kw:
            problems.append("a non-default SE reduction (the official one is 16)")
        if cfg.asr and cfg.psi_size != 1:
            problems.append(f"psi_size={cfg.psi_size} (the official ψ is [1, C, 1, 1])")
        if cfg.block == "basic" and cfg.attn is not None:
            problems.append("attention in a basic block (the official BasicBlock has no attention slot)")
        if cfg.in_chans != 3:
            problems.append(f"in_chans={cfg.in_chans} (the official stem takes 3 channels)")
    if problems:
        raise UserError(f"{cfg.name}: the official code cannot build this model: {'; '.join(problems)}")
    return cfg


def to_official(state: Mapping[str, torch.Tensor], config: ModelConfig,
                fused: Mapping[str, torch.Tensor] | None = None) -> State:
    """This package's state dict in the official code's names (no ``module.`` prefix), ``fused_bn`` included.

    An ASR model's ``fused_bn`` entries are ``fused`` when given (as :func:`split_fused` returns
    them), else this package's fold of ``state`` (what the official script holds after
    ``switch_to_deploy``). ``ValueError`` when the official code cannot build ``config``.
    """
    cfg = check_official(config)
    state = dict(state)
    prefixes = _asr_prefixes(state)
    if cfg.asr and not prefixes:
        raise UserError("config says asr=True but the state dict holds no ASR norm (no '.psi' key)")
    if prefixes and fused is None:
        model = build_model(cfg)
        model.load_state_dict(state, strict=True)
        folded = reparameterize(model).state_dict()
        fused = {f"{p}.fused_bn.{n}": folded[f"{p}.{n}"].clone() for p in prefixes for n in _NORM_PARTS}
    out: State = {}
    for k, v in state.items():
        p = next((p for p in prefixes if k.startswith(p + ".")), None)
        if p is not None:
            rest = k[len(p) + 1:]
            head, _, tail = rest.partition(".")
            if rest == "psi":
                out[f"{p}.vector"] = v
            elif head in ("norm", "attn"):
                out[f"{p}.{'bn' if head == 'norm' else 'attention_module'}.{tail}"] = v
            else:
                raise UserError(f"{k}: not part of an ASR norm the official code has")
        else:
            out[".".join("attention_module" if part == "attn" else part for part in k.split("."))] = v
    for p in prefixes:
        for n in _NORM_PARTS:
            key = f"{p}.fused_bn.{n}"
            if key not in fused:
                raise UserError(f"fused tensors lack {key}")
            out[key] = fused[key]
    return out


def deployed_state(state: Mapping[str, torch.Tensor], fused: Mapping[str, torch.Tensor]) -> State:
    """The folded model's state dict built from the official ``fused_bn`` tensors.

    ``state`` is the ASR model's state in this package's names, ``fused`` what :func:`split_fused`
    set aside; every ASR norm ``P`` becomes the plain BN ``P.*`` holding ``P.fused_bn.*``, its ψ
    and ψ-fed gate (and a stage's shared ``asr_attn``) are dropped. The result loads strictly into
    ``build_model(config.folded())``.
    """
    prefixes = _asr_prefixes(state)
    if not prefixes:
        raise UserError("the state dict holds no ASR norm (no '.psi' key): there is nothing to deploy")
    missing = [p for p in prefixes if f"{p}.fused_bn.weight" not in fused]
    if missing:
        raise UserError(f"{len(missing)} ASR norm(s) have no fused_bn tensors (e.g. {missing[0]})")
    out: State = {}
    for k, v in state.items():
        if any(k.startswith(p + ".") for p in prefixes) or re.match(r"^layer\d+\.asr_attn\.", k):
            continue
        out[k] = v
    for p in prefixes:
        for n in _NORM_PARTS:
            if f"{p}.fused_bn.{n}" in fused:
                out[f"{p}.{n}"] = fused[f"{p}.fused_bn.{n}"]
    return out


#: how closely a file's fused_bn weight and bias must match this package's fold of the same norm (relative to the
#: tensor's largest magnitude): half of float32's digits. The two folds compute the same few products and one small
#: MLP in float32 in another order, which moves them by a few eps32 (κ·eps32 with any cancellation short of
#: 2^11.5); a fused_bn left from other weights (the norm trained on after the fold) differs by the order of the
#: weights themselves.
FUSED_RTOL = float(torch.finfo(torch.float32).eps) ** 0.5


def stale_fused(weights: Mapping[str, torch.Tensor], fused: Mapping[str, torch.Tensor],
                folded: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """ASR norms whose ``fused_bn`` cannot be the official fold: its running statistics differ from the norm's (the
    official fold shares them), e.g. a state saved before any ``switch_to_deploy``; or, given ``folded`` (this
    package's fold of the same weights, :func:`stripe.gates.reparameterize`), its weight or bias is not that fold
    (to :data:`FUSED_RTOL`): the norm changed after the official fold was written.

    ``weights`` in this package's names (``P.norm.*``), ``fused`` as :func:`split_fused` returns it.
    """
    bad = []
    for p in sorted({k.split(".fused_bn.")[0] for k in fused}):
        for n in ("running_mean", "running_var"):
            a, b = fused.get(f"{p}.fused_bn.{n}"), weights.get(f"{p}.norm.{n}")
            if a is None or b is None or a.shape != b.shape or not torch.equal(a, b):
                bad.append(p)
                break
        else:
            for n in ("weight", "bias") if folded is not None else ():
                a, b = fused.get(f"{p}.fused_bn.{n}"), folded.get(f"{p}.{n}")
                if a is None or b is None or a.shape != b.shape:
                    bad.append(p)
                    break
                scale = max(1e-30, float(b.abs().max()))
                if float((a.double() - b.double()).abs().max()) > FUSED_RTOL * scale:
                    bad.append(p)
                    break
    return bad


def normalize_names(state: Mapping[str, torch.Tensor]) -> tuple[State, State, dict[str, Any]]:
    """(weights, fused, info): a state dict as :func:`stripe.nn.read_weights` gives it (prefixes stripped) in this
    package's names, the official ``fused_bn`` set aside; ``info`` says what was done (``naming``, ``renamed``,
    ``fused``)."""
    info: dict[str, Any] = {"naming": "stripe", "renamed": 0, "fused": 0}
    fused: State = {}
    if is_official(state):
        weights, fused = split_fused(state)
        mapped = from_official(weights)
        info.update(naming="official", renamed=sum(a != b for a, b in zip(weights, mapped)),
                    fused=len({k.split(".fused_bn.")[0] for k in fused}))
        return mapped, fused, info
    return dict(state), fused, info


def official_input(images: Any) -> torch.Tensor:
    """uint8 images [N, H, W, C] (numpy or tensor) as the official test transform gives them: float32
    [N, C, H, W], ToTensor's /255, then Normalize with :data:`OFFICIAL_MEAN` / :data:`OFFICIAL_STD`."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise UserError(f"expected uint8 images [N, H, W, C], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)  # [N, H, W, C] -> [N, C, H, W]
    mean = torch.tensor(OFFICIAL_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(OFFICIAL_STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


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


def official_files(folder: str | Path) -> list[Path]:
    """The checkpoint files of an official run folder, none of them read: ``checkpoint.pth.tar`` (the last epoch),
    ``model_best.pth.tar`` (the best), then any other ``*.pth.tar`` by name."""
    folder = Path(folder)
    names = [n for n in OFFICIAL_CHECKPOINTS if (folder / n).is_file()]
    names += sorted(p.name for p in folder.glob("*.pth.tar") if p.name not in names)
    return [folder / n for n in names]


def official_run(folder: str | Path, *, read_log: bool = True) -> OfficialRun:
    """An official run folder (``checkpoint.pth.tar``, ``model_best.pth.tar``, ``log.txt``): each checkpoint with
    the epoch, acc and best_acc it records (read with weights_only), and the log (``read_log`` False: left unread,
    for work that needs only the checkpoints); ``notes`` flag disagreements."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such run folder")
    files = official_files(folder)
    log_path = folder / "log.txt"
    if not files and not log_path.is_file():
        raise NotFoundError(f"{folder}: holds neither *.pth.tar checkpoints nor log.txt (not an official run "
                                "folder)")
    checkpoints = {}
    for p in files:
        name = p.name
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
