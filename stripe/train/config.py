"""The training configuration: one frozen dataclass holding the model's config, checked up front.

Command-line options are derived from the fields (:func:`add_config_args`), so a new field is
added here and nowhere else. ``config.json`` of format ``stripe-run/1`` (flat model fields)
still loads (:meth:`TrainConfig.from_dict`).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Callable

from ..errors import UserError
from ..data import PROBE_SPLITS, list_datasets
from ..nn import BLOCKS, ModelConfig, list_attn

PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("none", "compile", "reduce-overhead", "cudagraph")
#: the probe split of runs written before the probe and scored sets were made disjoint
LEGACY_PROBE_SPLIT = "test-legacy"

#: the fast path per device type. CPU: channels_last and torch.compile (inductor's C++ kernels fuse the
#: BN/ReLU/residual and attention elementwise work around oneDNN's convolutions), both fp32; bf16 autocast
#: is left out (slower on CPUs without AMX). CUDA: bf16 autocast, channels_last, the whole step as one
#: CUDA graph (CIFAR ResNets at batch 128 are launch-bound). ``stripe bench train`` measures it.
FAST_PATH: dict[str, dict[str, Any]] = {
    "cpu": {"channels_last": True, "compile": "compile"},
    "cuda": {"precision": "bf16", "channels_last": True, "compile": "cudagraph"},
}


def fast_path(device_type: str) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of the fast path on ``device_type`` ('cpu' or 'cuda')."""
    try:
        return dict(FAST_PATH[device_type])
    except KeyError:
        raise UserError(f"no fast path for device type {device_type!r}; known: {', '.join(FAST_PATH)}") from None


_EPOCH_SPEC = re.compile(r"^(last|all|every:\d+|\d+)$")


def parse_epoch_spec(text: str, option: str = "--keep-checkpoints") -> tuple[str, ...]:
    """The one grammar of epoch selections (``--checkpoints`` of ``train`` and ``collect``, ``--keep-checkpoints``):
    'all', 'last', 'every:K', epoch numbers, comma-separated; checked and split into terms."""
    terms = tuple(t.strip() for t in str(text).split(",") if t.strip())
    bad = [t for t in terms if not _EPOCH_SPEC.match(t)]
    if not terms or bad:
        raise UserError(f"{option}: expected all, last, every:K or epoch numbers (comma-separated), got {text!r}")
    if any(t.startswith("every:") and int(t[6:]) < 1 for t in terms):
        raise UserError(f"{option}: every:K needs K >= 1, got {text!r}")
    return terms


def epoch_matches(terms: tuple[str, ...], epoch: int, last: int) -> bool:
    """Whether ``epoch`` is selected by parsed epoch-spec ``terms`` (``last`` is the final epoch)."""
    for t in terms:
        if t == "all" or (t == "last" and epoch == last) or (t.isdigit() and int(t) == epoch):
            return True
        if t.startswith("every:") and epoch % int(t[6:]) == 0:
            return True
    return False


def _opt(help: str, group: str = "recipe", *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
         choices: tuple[str, ...] | None = None, cli: bool = True) -> dict[str, Any]:
    """CLI metadata of a config field."""
    return {"help": help, "group": group, "flag": flag, "parse": parse, "choices": choices, "cli": cli}


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved in ``config.json`` and in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=_opt("the model (see the model options)",
                                                                           cli=False))
    dataset: str = field(default="cifar10", metadata=_opt("cifar10, cifar100, fashion-mnist, imagefolder", "data"))
    data_root: str | None = field(default=None, metadata=_opt(
        "where the data set lives (default: search the usual places)", "data"))
    train_subset: int | None = field(default=None, metadata=_opt("class-stratified subset of the training split",
                                                                 "data"))
    test_subset: int | None = field(default=None, metadata=_opt(
        "class-stratified subset of the test split that scores accuracy (default: all of it)", "data"))
    probe_split: str = field(default="train", metadata=_opt(
        "split the probe images come from (train: un-augmented training images; test: test images, then "
        "excluded from scoring)", "data", choices=PROBE_SPLITS))
    probe_n: int = field(default=1000, metadata=_opt("probe-set size (saved with the run)", "data"))
    probe_seed: int = field(default=0, metadata=_opt("seed of the probe set's stratified sample", "data"))
    epochs: int = field(default=164, metadata=_opt("training epochs"))
    batch_size: int = field(default=128, metadata=_opt("global batch (split across DDP ranks)"))
    lr: float = field(default=0.1, metadata=_opt("initial learning rate"))
    milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata=_opt(
        "lr x gamma after these fractions of training (default 0.5,0.75)", parse=_float_list))
    gamma: float = field(default=0.1, metadata=_opt("lr decay factor at each milestone, in (0, 1]"))
    momentum: float = field(default=0.9, metadata=_opt("SGD momentum, in [0, 1)"))
    weight_decay: float = field(default=1e-4, metadata=_opt("L2 weight decay, >= 0"))
    seed: int = field(default=0, metadata=_opt("seed of initialisation, shuffling, augmentation and test subset"))
    precision: str = field(default="fp32", metadata=_opt("fp32, or bf16 autocast", choices=PRECISIONS))
    channels_last: bool = field(default=False, metadata=_opt("channels_last memory format"))
    compile: str = field(default="none", metadata=_opt(
        "none, torch.compile, compile with CUDA graphs, or the whole step captured as one CUDA graph",
        choices=COMPILE_MODES))
    checkpoints: str = field(default="all", metadata=_opt(
        "checkpoint epochs (recorded with --record): all (default), every:K, last, or epochs N,M; epoch 0 and the "
        "last always"))
    keep_checkpoints: str = field(default="all", metadata=_opt(
        "which checkpoint files stay on disk: all, or e.g. 'last,every:10' (the newest is kept until "
        "the next one is written, so a run can always resume)"))
    eval_batch_size: int = field(default=1000, metadata=_opt("batch of test-set evaluation and recording"))

    def __post_init__(self) -> None:
        if isinstance(self.milestones, list):  # JSON gives lists; keep the dataclass hashable
            object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.checkpoints is None or isinstance(self.checkpoints, (list, tuple)):  # the stripe-run/2 forms
            value = "all" if self.checkpoints is None else ",".join(str(int(e)) for e in self.checkpoints) or "last"
            object.__setattr__(self, "checkpoints", value)
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        self.validate()

    def validate(self) -> None:
        """Check every field's range and every name, without touching data or disk; ``ValueError`` names the option."""
        self.model.resolved()  # unknown model / attention / block, bad combinations
        if self.dataset.lower().replace("_", "-") not in list_datasets():
            raise UserError(f"unknown dataset {self.dataset!r}; known: {', '.join(list_datasets())}")
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 < self.gamma <= 1, f"--gamma must be in (0, 1] (the lr is multiplied by it), got {self.gamma}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.probe_seed >= 0, f"--probe-seed must be >= 0, got {self.probe_seed}"),
            (self.probe_n >= 1, f"--probe-n must be >= 1, got {self.probe_n}"),
            (self.train_subset is None or self.train_subset >= 1,
             f"--train-subset must be a positive number of images, got {self.train_subset}"),
            (self.test_subset is None or self.test_subset >= 1,
             f"--test-subset must be a positive number of images, got {self.test_subset}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}"),
            (self.compile in COMPILE_MODES, f"unknown compile mode {self.compile!r}; known: {', '.join(COMPILE_MODES)}"),
            (self.probe_split in (*PROBE_SPLITS, LEGACY_PROBE_SPLIT),
             f"--probe-split must be one of {', '.join(PROBE_SPLITS)}, got {self.probe_split!r}"),
            (all(0 < m < 1 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
             f"--milestones are increasing fractions of training in (0, 1), got {self.milestones}"),
            (all(int(t) <= self.epochs for t in parse_epoch_spec(self.checkpoints, "--checkpoints") if t.isdigit()),
             f"--checkpoints must be epochs in 0..{self.epochs}, got {self.checkpoints!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        parse_epoch_spec(self.keep_checkpoints)

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the model as a nested dict)."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; also reads the flat ``stripe-run/1`` form. Unknown keys raise ``ValueError``."""
        d = dict(d)
        if not isinstance(d.get("model", {}), dict):  # stripe-run/1: model fields inline, probe on the test split
            model = {"name": d.pop("model")}
            for k in ("attn", "asr", "both", "block", "psi_size", "psi_init"):
                if k in d:
                    model[k] = d.pop(k)
            d["model"] = model
            d.setdefault("probe_split", LEGACY_PROBE_SPLIT)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"unknown train config keys: {sorted(unknown)}")
        if isinstance(d.get("model"), dict):
            d["model"] = ModelConfig.from_dict(d["model"])
        return cls(**d)

    # -- the schedule
    def milestone_epochs(self) -> list[float]:
        """Where the lr decays, in epochs (fractions of training x epochs; may fall inside an epoch)."""
        return [m * self.epochs for m in self.milestones]

    def milestone_steps(self, steps_per_epoch: int) -> list[int]:
        """Global step indices (0-based) from which each decay applies: round(fraction x all steps).

        The schedule is applied per step, so a short run still trains at the full lr for the first
        half (a 1-epoch run: lr for 50 % of its steps, lr x gamma to 75 %, lr x gamma² after).
        """
        total = self.epochs * steps_per_epoch
        return [round(m * total) for m in self.milestones]

    def lr_at_step(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate of global (0-based) training step ``step``."""
        return self.lr * self.gamma ** sum(step >= m for m in self.milestone_steps(steps_per_epoch))

    def lr_at(self, epoch: int, steps_per_epoch: int = 1) -> float:
        """Learning rate at the first step of (1-based) training epoch ``epoch``."""
        return self.lr_at_step((epoch - 1) * steps_per_epoch, steps_per_epoch)

    def is_checkpoint(self, epoch: int) -> bool:
        """Whether a checkpoint is taken at ``epoch`` (its weights saved, recorded online when asked)."""
        return epoch in (0, self.epochs) or epoch_matches(parse_epoch_spec(self.checkpoints, "--checkpoints"), epoch,
                                                           self.epochs)

    def keeps_file(self, epoch: int) -> bool:
        """Whether epoch ``epoch``'s checkpoint file stays on disk once a newer one exists."""
        return self.is_checkpoint(epoch) and epoch_matches(parse_epoch_spec(self.keep_checkpoints), epoch, self.epochs)


# -------------------------------------------------------------------------- command-line options
#: model-config fields that are options, with their flags and help; the others come from the data
MODEL_OPTIONS: dict[str, tuple[str, str]] = {
    "name": ("--model", "cifar_resnet{depth} (basic blocks for 6n+2 depths, bottleneck for 164 and 1001)"),
    "attn": ("--attn", "attention module: " + ", ".join(list_attn())),
    "asr": ("--asr", "ASR: feed the attention a learnable ψ and fold it away for inference"),
    "both": ("--both", "with --asr, keep a normal attention as well"),
    "block": ("--block", "override the block type: " + ", ".join(BLOCKS)),
    "psi_size": ("--psi-size", "ψ's spatial size (default: the smallest the attention accepts)"),
    "psi_init": ("--psi-init", "ψ's initial value"),
    "reduction": ("--reduction", "bottleneck ratio r of SE, CBAM, SPA (default 16) and DIA (default 4): hidden width "
                                 "round(C/r) for SE, C//r for the others"),
    "mlp_bias": ("--mlp-bias", "CBAM's and SPA's MLPs with biases, as in the original CBAM code (default: none, as "
                               "timm's; without them an ASR(CBAM)/ASR(SPA) hidden unit dead for the constant ψ stays "
                               "dead)"),
}
#: model-config fields set from the data set (or not exposed), never options
MODEL_FROM_DATA = ("num_classes", "in_chans", "image_size", "attn_kw")


def _metavar(flag: str) -> str:
    """What an option's value is called in --help: ``--batch-size`` -> ``N`` style names from the flag."""
    return flag.lstrip("-").upper().replace("-", "_")


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def add_config_args(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                    model_exclude: tuple[str, ...] = ()) -> None:
    """Add one option per :class:`TrainConfig` field (and per exposed model field), grouped; defaults from the dataclass."""
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group(name: str) -> argparse._ArgumentGroup:
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        return groups[name]

    mdef = ModelConfig()
    for name, (flag, help) in MODEL_OPTIONS.items():
        if name in model_exclude:
            continue
        default = getattr(mdef, name)
        if isinstance(default, bool):
            group("model").add_argument(flag, dest=f"model.{name}", action="store_true", help=help)
        else:
            typ = type(ModelConfig.psi_init) if name == "psi_init" else int if name in ("psi_size", "reduction") else str
            group("model").add_argument(flag, dest=f"model.{name}", type=typ, default=default, help=help,
                                        choices=BLOCKS if name == "block" else None, metavar=_metavar(flag)
                                        if name != "block" else None)
    group("recipe").add_argument("--fast", action="store_true", dest="fast_path",
                                 help="the fast path of the device: on a CPU channels_last and torch.compile; on "
                                      "CUDA bf16 autocast, channels_last and the step as one CUDA graph (sets "
                                      "--precision, --channels-last and --compile)")
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in exclude:
            continue
        default = _default(f)
        kw: dict[str, Any] = {"dest": f"train.{f.name}", "help": meta["help"]}
        if not isinstance(default, bool) and not meta.get("choices"):
            kw["metavar"] = _metavar(_flag(f))
        if isinstance(default, bool):
            kw["action"] = "store_true"
        else:
            kw["default"] = default
            kw["type"] = meta.get("parse") or (float if isinstance(default, float) else
                                               int if isinstance(default, int) or f.type in ("int | None",) else str)
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            if default is not None and not meta.get("parse"):
                kw["help"] += " (default %(default)s)"
        group(meta.get("group", "recipe")).add_argument(_flag(f), **kw)


def config_from_args(args: argparse.Namespace, *, base: TrainConfig | None = None, given: set[str] | None = None,
                     **over: Any) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options (``over``: fields to set, ``model`` a dict of model fields).

    With ``base`` (a run's recipe, ``stripe train --config``) only the options named in ``given`` (their
    destinations, e.g. ``train.seed``: those on the command line) replace the base's values."""
    ns = vars(args)
    if base is not None:
        ns = {k: v for k, v in ns.items() if k in (given or set())}
    model = {k.split(".", 1)[1]: v for k, v in ns.items() if k.startswith("model.")}
    model.update(over.pop("model", {}))
    train = {k.split(".", 1)[1]: v for k, v in ns.items() if k.startswith("train.")}
    if ns.get("fast_path"):
        from ..device import resolve_device

        train.update(fast_path(resolve_device(vars(args).get("device", "auto")).type))
    train.update(over)
    if base is None:
        return TrainConfig(model=replace(ModelConfig(), **model), **train)
    kept = {f.name: getattr(base, f.name) for f in fields(base) if f.name != "model"}
    return TrainConfig(model=replace(base.model, **model), **{**kept, **train})
