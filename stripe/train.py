"""The trainer: the paper's recipe on real data, per-epoch checkpoints, resumable, DDP-ready.

A run directory holds ``config.json``, ``metrics.csv`` (one row per epoch; epoch 0 is the
initialisation) and ``checkpoints/epoch_XXXX.pt``. Test metrics are those of the *deployed* model:
the ASR fold for ASR models. The fast path (CUDA) keeps the data set on the device, augments
there, runs bf16 autocast with channels_last, and removes launch overhead by capturing the whole
training step as one CUDA graph (``compile="cudagraph"``) or with ``torch.compile``.
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import __version__, fsio
from .asr import reparameterize
from .checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from .data import ImageSet, Loader, load_dataset, probe_hash, probe_indices, stratified_indices, take
from .models import create_model

RUN_FORMAT = "stripe-run/1"
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("none", "compile", "reduce-overhead", "cudagraph")
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds",
                  "train_seconds", "images_per_s"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped with its checkpoints kept."""


class RunExistsError(FileExistsError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved in ``config.json`` and in every checkpoint."""

    model: str = "cifar_resnet20"
    attn: str | None = None
    asr: bool = False
    both: bool = False
    block: str | None = None
    dataset: str = "cifar10"
    data_root: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    epochs: int = 164
    batch_size: int = 128  # the global batch (split across DDP ranks)
    lr: float = 0.1
    milestones: tuple[float, ...] = (0.5, 0.75)  # lr x gamma after these fractions of training
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "none"
    checkpoints: tuple[int, ...] | None = None  # epochs to keep; None = every epoch (0 and the last always)
    probe_n: int = 1000
    probe_seed: int = 0
    psi_size: int | None = None
    psi_init: float = 0.1
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; known: {', '.join(COMPILE_MODES)}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of training in (0, 1), got {self.milestones}")
        for name in ("milestones", "checkpoints"):  # JSON gives lists; keep the dataclass hashable
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        d["checkpoints"] = None if self.checkpoints is None else list(self.checkpoints)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**d)

    def milestone_epochs(self) -> list[int]:
        """Epochs after which the lr decays: int(fraction x epochs)."""
        return [int(m * self.epochs) for m in self.milestones]

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (1-based) training epoch ``epoch``."""
        return self.lr * self.gamma ** sum(epoch > m for m in self.milestone_epochs())

    def keeps_checkpoint(self, epoch: int) -> bool:
        """Whether epoch ``epoch``'s checkpoint is written."""
        return epoch in (0, self.epochs) or self.checkpoints is None or epoch in self.checkpoints

    def build_model(self, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        """The model this config trains."""
        return create_model(self.model, num_classes=num_classes, attn=self.attn, asr=self.asr, both=self.both,
                            block=self.block, in_chans=in_chans, image_size=image_size, psi_size=self.psi_size,
                            psi_init=self.psi_init)


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss (cross-entropy, mean over the batch)."""
    return F.cross_entropy(logits, y)


# --------------------------------------------------------------------------- optimizer
class SGD:
    """SGD with momentum and weight decay whose learning rate is a device tensor.

    The same arithmetic as ``torch.optim.SGD`` (dampening 0, no Nesterov); the lr tensor lets a
    captured CUDA graph see schedule changes without being captured again.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], lr: float, momentum: float,
                 weight_decay: float) -> None:
        self.names = [n for n, p in named_params if p.requires_grad]
        self.params = [p for _, p in named_params if p.requires_grad]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.bufs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.lr = torch.tensor(float(lr), device=self.params[0].device)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate (in place, so captured graphs see it)."""
        self.lr.fill_(lr)

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update: g += wd·p; buf = momentum·buf + g; p -= lr·buf."""
        grads = [p.grad for p in self.params]
        torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        torch._foreach_mul_(self.bufs, self.momentum)
        torch._foreach_add_(self.bufs, grads)
        torch._foreach_sub_(self.params, torch._foreach_mul(self.bufs, self.lr))

    def state_dict(self) -> dict[str, Any]:
        """Momentum buffers by parameter name."""
        return {"momentum_buffer": {n: b for n, b in zip(self.names, self.bufs)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore momentum buffers saved by :meth:`state_dict`."""
        bufs = state["momentum_buffer"]
        if set(bufs) != set(self.names):
            raise ValueError("optimizer state does not match the model's parameters")
        with torch.no_grad():
            for n, b in zip(self.names, self.bufs):
                b.copy_(bufs[n])


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK set by torchrun."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Start the process group (nccl on CUDA, gloo on the CPU) when running under torchrun."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def resolve_device(device: str | None, info: DistInfo = DistInfo()) -> torch.device:
    """``auto``: this rank's GPU when CUDA is present, else the CPU."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --------------------------------------------------------------------------- data
def load_test_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """(test set of the run, i.e. the test subset if any; the full test split) of a config."""
    test_full = load_dataset(cfg.dataset, "test", root=cfg.data_root)
    if cfg.test_subset is None:
        return test_full, test_full
    return take(test_full, stratified_indices(test_full.labels, cfg.test_subset, cfg.seed)), test_full


def load_run_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(train, test, full test split) of a config, subsets applied to the first two."""
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root)
    if cfg.train_subset is not None:
        train = take(train, stratified_indices(train.labels, cfg.train_subset, cfg.seed))
    return (train, *load_test_data(cfg))


def run_probe(run_info: dict[str, Any], test_full: ImageSet) -> ImageSet:
    """The probe set saved with a run (``config.json``), checked against its hash."""
    spec = run_info["probe"]
    idx = probe_indices(test_full, n=spec["n"], seed=spec["seed"])
    if probe_hash(test_full.source_hash, idx) != spec["hash"]:
        raise ValueError("the probe set differs from the one saved with the run (the data set's files changed?)")
    return take(test_full, idx)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision == 'bf16'``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, *, precision: str = "fp32",
             info: DistInfo = DistInfo()) -> tuple[float, float]:
    """(mean loss, top-1 %) of ``model`` in eval mode over the loader; summed over ranks."""
    was_training = model.training
    model.eval()
    dev = loader.device
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
    for x, y in loader:
        with autocast(dev, precision):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.numel()
    if info.enabled:
        dist.all_reduce(sums)
    model.train(was_training)
    loss, correct, count = sums.tolist()
    return loss / max(count, 1), 100.0 * correct / max(count, 1)


def deployed(model: nn.Module) -> nn.Module:
    """The model as deployed: the ASR fold for ASR models, else the model itself."""
    m = unwrap(model)
    return reparameterize(m) if m.config.asr else m


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- the training step
class TrainStep:
    """One SGD step on a batch, in one of three forms: eager, ``torch.compile``, or a CUDA graph.

    Loss and correct counts accumulate on the device (no host sync per step).
    """

    def __init__(self, model: nn.Module, opt: SGD, cfg: TrainConfig, device: torch.device,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model, self.opt, self.cfg, self.device = model, opt, cfg, device
        self.loss = loss or loss_fn
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x batch, correct
        self.forward = model
        if cfg.compile in ("compile", "reduce-overhead"):
            self.forward = torch.compile(model, mode=None if cfg.compile == "compile" else "reduce-overhead")
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None
        self._eager_steps = 0
        if cfg.compile == "cudagraph" and device.type != "cuda":
            raise ValueError("compile='cudagraph' captures the step as a CUDA graph and needs a CUDA device")

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad()
        with autocast(self.device, self.cfg.precision):
            logits = self.forward(x)
            loss = self.loss(logits.float(), y)
        loss.backward()
        self.opt.step()
        self.sums[0] += loss.detach().double() * y.shape[0]
        self.sums[1] += (logits.detach().argmax(1) == y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.cfg.compile != "cudagraph":
            return self._body(x, y)
        if self._static is None:
            self._static = (torch.empty_like(x), torch.empty_like(y))
        sx, sy = self._static
        sx.copy_(x)
        sy.copy_(y)
        if self.graph is not None:
            self.graph.replay()
            return
        if self._eager_steps < 3:  # warm up on a side stream before capture, as CUDA graphs require
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._body(sx, sy)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return
        self.opt.zero_grad()  # grads allocated inside the graph's pool are overwritten on each replay
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body(sx, sy)
        self.graph.replay()

    def take_sums(self) -> tuple[float, float]:
        """(loss sum, correct) since the last call; this is the one host sync of an epoch."""
        loss_sum, correct = self.sums.tolist()
        self.sums.zero_()
        return loss_sum, correct


# --------------------------------------------------------------------------- run directory
def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(METRIC_COLUMNS)]
    for r in rows:
        lines.append(",".join("" if r.get(c) in (None, "") or (isinstance(r.get(c), float) and math.isnan(r[c]))
                              else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])) for c in METRIC_COLUMNS))
    fsio.write_text(path, "\n".join(lines) + "\n")


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> int | None:
    """Check a run directory before training; returns the epoch to resume from (None: start anew)."""
    config_file = run_dir / "config.json"
    if not config_file.exists():
        if list_checkpoints(run_dir):
            raise RunExistsError(f"{run_dir} holds checkpoints but no config.json; refusing to mix runs")
        return None
    if overwrite:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for name in ("config.json", "metrics.csv"):
            (run_dir / name).unlink(missing_ok=True)
        return None
    if not resume:
        raise RunExistsError(f"{run_dir} already holds a run (config.json); pass --resume to continue it "
                             "or --overwrite to start again")
    import json

    saved = json.loads(config_file.read_text())["train"]
    diff = _config_diff(saved, cfg.to_dict())
    if diff:
        raise ValueError(f"{config_file}: cannot resume with a different config ({'; '.join(diff)})")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    return ckpts[-1][0]


def _run_info(cfg: TrainConfig, train: ImageSet, test: ImageSet, test_full: ImageSet, model: nn.Module,
              info: DistInfo, device: torch.device) -> dict[str, Any]:
    probe = probe_indices(test_full, n=min(cfg.probe_n, len(test_full)), seed=cfg.probe_seed)
    return {
        "format": RUN_FORMAT,
        "stripe_version": __version__,
        "train": cfg.to_dict(),
        "model": unwrap(model).config.to_dict(),
        "data": {"dataset": train.name, "source": train.source, "train_hash": train.source_hash,
                 "test_hash": test.source_hash, "test_full_hash": test_full.source_hash,
                 "train_n": len(train), "test_n": len(test), "classes": list(train.classes)},
        "probe": {"split": "test", "n": len(probe), "seed": cfg.probe_seed,
                  "hash": probe_hash(test_full.source_hash, probe)},
        "distributed": {"world_size": info.world_size, "global_batch": cfg.batch_size,
                        "per_rank_batch": cfg.batch_size // info.world_size},
        "device": str(device),
        "params": {"train": count_params(model), "deployed": count_params(deployed(model))},
        "lr_milestone_epochs": cfg.milestone_epochs(),
    }


# --------------------------------------------------------------------------- train
def build_training(cfg: TrainConfig, train_ds: ImageSet, device: torch.device) -> tuple[nn.Module, SGD]:
    """The seeded model of ``cfg`` for ``train_ds`` on ``device`` (channels_last if asked) and its optimizer."""
    torch.manual_seed(cfg.seed)
    model = cfg.build_model(train_ds.num_classes, train_ds.in_chans, train_ds.image_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, SGD(list(model.named_parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)


def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          device: str | None = "auto", progress: bool = True,
          data: tuple[ImageSet, ImageSet, ImageSet] | None = None) -> list[dict[str, Any]]:
    """Train ``cfg`` into ``run_dir``; returns the metrics rows. Under torchrun, rank 0 writes."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    info = dist_from_env()
    dev = resolve_device(device, info)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    init_distributed(info, dev)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"global batch {cfg.batch_size} does not split over {info.world_size} ranks")
    if info.enabled and cfg.compile == "cudagraph":
        raise ValueError("compile='cudagraph' captures a single process's step; under torchrun use "
                         "compile='reduce-overhead'")
    start, error = None, None
    if info.main:
        try:
            start = prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
        except (OSError, ValueError) as e:
            if not info.enabled:
                raise
            error = e
    if info.enabled:  # every rank learns where rank 0 resumes, or that it refused
        box = [(start, None if error is None else f"{type(error).__name__}: {error}")]
        dist.broadcast_object_list(box, src=0)
        start, message = box[0]
        if message is not None:
            raise RuntimeError(message)

    train_ds, test_ds, test_full = data or load_run_data(cfg)
    model, opt = build_training(cfg, train_ds, dev)
    rows: list[dict[str, Any]] = []
    if start is not None:
        path = checkpoint_path(run_dir, start)
        ckpt = load_checkpoint(path, map_location=dev)
        try:
            model.load_state_dict(ckpt["model"], strict=True)
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: does not match this run's model ({str(e).splitlines()[0][:160]})") from None
        rows = [r for r in _read_metrics(run_dir / "metrics.csv") if int(r["epoch"]) <= start]
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    per_rank = cfg.batch_size // info.world_size
    train_loader = Loader(train_ds, per_rank, train=True, device=dev, seed=cfg.seed, rank=info.rank,
                          world_size=info.world_size, channels_last=cfg.channels_last)
    test_loader = Loader(test_ds, cfg.eval_batch_size, train=False, device=dev, rank=info.rank,
                         world_size=info.world_size, channels_last=cfg.channels_last)
    step = TrainStep(net, opt, cfg, dev)

    def eval_deployed() -> tuple[float, float]:
        return evaluate(deployed(model), test_loader, precision=cfg.precision, info=info)

    if start is None:
        start = 0
        test_loss, test_acc = eval_deployed()
        rows = [{"epoch": 0, "lr": float("nan"), "train_loss": float("nan"), "train_acc": float("nan"),
                 "test_loss": test_loss, "test_acc": test_acc, "epoch_seconds": float("nan"),
                 "train_seconds": float("nan"), "images_per_s": float("nan")}]
        if info.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            fsio.write_json(run_dir / "config.json", _run_info(cfg, train_ds, test_ds, test_full, model, info, dev))
            save_checkpoint(checkpoint_path(run_dir, 0), epoch=0, model=model, train_config=cfg.to_dict(),
                            optimizer=opt.state_dict(), metrics=rows[0])
            _write_metrics(run_dir / "metrics.csv", rows)

    show = progress and info.main
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = cfg.lr_at(epoch)
        opt.set_lr(lr)
        train_loader.set_epoch(epoch)
        net.train()
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not show)
        for i, (x, y) in enumerate(train_loader):
            step(x, y)
            bar.update()
            if (i + 1) % 50 == 0 and not torch.isfinite(step.sums[0]):
                break
        bar.close()
        loss_sum, correct = step.take_sums()
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"training loss became {loss_sum} in epoch {epoch}; stopped. Checkpoints up to epoch "
                f"{epoch - 1} are kept in {run_dir / 'checkpoints'}")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_seconds = time.perf_counter() - t0
        n_seen = train_loader.num_samples
        sums = torch.tensor([loss_sum, correct, n_seen], dtype=torch.float64, device=dev)
        if info.enabled:
            dist.all_reduce(sums)
        test_loss, test_acc = eval_deployed()
        row = {"epoch": epoch, "lr": lr, "train_loss": sums[0].item() / sums[2].item(),
               "train_acc": 100.0 * sums[1].item() / sums[2].item(), "test_loss": test_loss, "test_acc": test_acc,
               "epoch_seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
               "images_per_s": sums[2].item() / train_seconds}
        rows.append(row)
        if info.main:
            if cfg.keeps_checkpoint(epoch):
                save_checkpoint(checkpoint_path(run_dir, epoch), epoch=epoch, model=model,
                                train_config=cfg.to_dict(), optimizer=opt.state_dict(), metrics=row)
            _write_metrics(run_dir / "metrics.csv", rows)
            if show:
                tqdm.write(f"epoch {epoch}/{cfg.epochs}  lr {lr:.4g}  train loss {row['train_loss']:.4f} "
                           f"acc {row['train_acc']:.2f}%  test acc {test_acc:.2f}%  "
                           f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s")
    if info.enabled:
        dist.barrier()
    return rows


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``config.json``; a clear error when it is not a run directory."""
    import json

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from None
    if cfg.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: not a stripe run (format {cfg.get('format')!r})")
    return cfg


def read_metrics(run_dir: str | Path):
    """A run's ``metrics.csv`` as a DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "metrics.csv")
