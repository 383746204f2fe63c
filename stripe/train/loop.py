"""The trainer: the paper's recipe on real data, checkpoints, resumable, DDP-ready, with callbacks.

``train(cfg, run_dir)`` checks the config, the data and the run directory before it changes
anything, then trains: setup, one epoch at a time, evaluation of the *deployed* model (the ASR fold
for ASR models), and checkpoints. At every checkpoint epoch (epoch 0 included) each callback's
``on_checkpoint(state)`` runs, which is how recording during training plugs in
(:class:`stripe.record.OnlineRecorder`); ``on_epoch_end`` runs after every epoch and may set
``state.stop`` to end training cleanly (a time budget). The fast path (CUDA) keeps the data set on the device,
augments there, runs bf16 autocast with channels_last and captures the whole training step as one
CUDA graph.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import __version__, fsio
from ..errors import RefusedError, StripeError, UserError
from ..data import Loader
from ..gates import reparameterize
from ..nn import count_params, unwrap
from .checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from ..device import DistInfo, autocast, dist_from_env, init_distributed, resolve_device
from .optim import SGD
from .rundir import (RunData, check_run_dir, clear_run_dir, default_run_dir, empty_trash, load_run_data, read_run, restore_rows,
                     restore_run_dir, run_info, write_metrics)
from .step import TrainStep


class NonFiniteLossError(StripeError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped with its checkpoints kept."""


@dataclass
class TrainState:
    """What a callback sees: the run, the (unwrapped) model with its weights at ``epoch``, the data, the row."""

    cfg: TrainConfig
    run_dir: Path
    run_id: str
    model: nn.Module
    data: RunData
    device: torch.device
    epoch: int = 0
    row: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    progress: bool = True
    stop: bool = False  # a callback sets it to end training after this checkpoint (it can be resumed later)


def _call(callbacks: Sequence[Any], hook: str, state: TrainState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)


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


@torch.no_grad()
def predict(model: nn.Module, loader: Loader, *, precision: str = "fp32") -> torch.Tensor:
    """Predicted labels [N] (int64, on the CPU) of ``model`` in eval mode, in the loader's order; a model whose
    outputs are not finite is refused (:class:`~stripe.nn.NotFiniteError`): the argmax of NaN means nothing."""
    from ..nn import check_finite_outputs

    was_training = model.training
    model.eval()
    out = []
    finite = torch.ones((), dtype=torch.bool, device=loader.device)  # kept on the device: no sync per batch
    for x, _ in loader:
        with autocast(loader.device, precision):
            logits = model(x)
        finite &= torch.isfinite(logits).all()
        out.append(logits.argmax(1))
    model.train(was_training)
    check_finite_outputs(finite)
    return torch.cat(out).cpu()


def deployed(model: nn.Module) -> nn.Module:
    """The model as deployed: the ASR fold for ASR models, else the model itself."""
    m = unwrap(model)
    return reparameterize(m) if getattr(m, "config", None) is not None and m.config.asr else m


def build_training(cfg: TrainConfig, train_ds, device: torch.device) -> tuple[nn.Module, SGD]:
    """The seeded model of ``cfg`` for ``train_ds`` on ``device`` (channels_last if asked) and its optimizer."""
    from ..nn import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.bind(train_ds.num_classes, train_ds.in_chans, train_ds.image_size)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, SGD(list(model.named_parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)


def _check_fits(cfg: TrainConfig, data: RunData, info: DistInfo) -> None:
    if cfg.batch_size % info.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} does not split over {info.world_size} ranks")
    if len(data.train) < cfg.batch_size:
        raise UserError(f"the training set has {len(data.train)} images, fewer than one batch of {cfg.batch_size} "
                         "(lower --batch-size or raise --train-subset)")
    if info.enabled and cfg.compile == "cudagraph":
        raise UserError("--compile cudagraph captures a single process's step; under torchrun use "
                         "--compile reduce-overhead")


def _agree(info: DistInfo, value: Any) -> Any:
    """Rank 0's ``value`` (or the error it raised, re-raised) on every rank."""
    if not info.enabled:
        if isinstance(value, BaseException):
            raise value
        return value
    box = [value if not isinstance(value, BaseException) else ("__error__", f"{type(value).__name__}: {value}")]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], tuple) and box[0][:1] == ("__error__",):
        raise UserError(box[0][1])
    return box[0]


def train(cfg: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
          device: str | None = "auto", progress: bool = True, data: RunData | None = None,
          callbacks: Sequence[Any] = (), download: bool = False) -> list[dict[str, Any]]:
    """Train ``cfg`` into ``run_dir`` (None: :func:`~stripe.train.rundir.default_run_dir`); returns the metrics rows
    (typed). Under torchrun, rank 0 writes.

    Nothing in ``run_dir`` changes until the config, the data and the model are known to be good;
    ``overwrite`` moves the old run aside and deletes it once the new run has its first checkpoint.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    info = dist_from_env()
    dev = resolve_device(device, info)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    init_distributed(info, dev)
    data = data or load_run_data(cfg, download=download)
    _check_fits(cfg, data, info)
    model, opt = build_training(cfg, data.train, dev)
    for cb in callbacks:  # a callback's own options are checked before the run folder is made
        if hasattr(cb, "check"):
            cb.check(cfg, data, model)

    lock = fsio.DirLock(run_dir, "--out") if info.main else None
    try:
        start: int | None = None
        if info.main:
            try:
                if resume and not (run_dir / "config.json").is_file():
                    raise RefusedError(f"--resume: {run_dir} holds no run to resume (no config.json); leave out "
                                       "--resume to start one")
                fsio.claim_dir(run_dir, "run")
                lock.acquire()
                start = check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
            except (OSError, ValueError, RuntimeError) as e:
                start = e
        start = _agree(info, start)
        return _train(cfg, run_dir, model, opt, data, start, info, dev, progress, callbacks, overwrite)
    finally:
        for cb in callbacks:
            if hasattr(cb, "close"):
                cb.close()
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, run_dir: Path, model: nn.Module, opt: SGD, data: RunData, start: int | None,
           info: DistInfo, dev: torch.device, progress: bool, callbacks: Sequence[Any],
           overwrite: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    if start is not None:
        path = checkpoint_path(run_dir, start)
        ckpt = load_checkpoint(path, map_location=dev)
        try:
            model.load_state_dict(ckpt["model"], strict=True)
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: does not match this run's model ({str(e).splitlines()[0][:160]})") from None
        rows = restore_rows(run_dir, start) if info.main else []
        run_id = read_run(run_dir).get("run_id") or ckpt.get("run_id") or "legacy"
    else:
        run_id = uuid.uuid4().hex
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    per_rank = cfg.batch_size // info.world_size
    train_loader = Loader(data.train, per_rank, train=True, device=dev, seed=cfg.seed, rank=info.rank,
                          world_size=info.world_size, channels_last=cfg.channels_last)
    test_loader = Loader(data.test, cfg.eval_batch_size, train=False, device=dev, rank=info.rank,
                         world_size=info.world_size, channels_last=cfg.channels_last)
    step = TrainStep(net, opt, cfg, dev)
    state = TrainState(cfg, run_dir, run_id, model, data, dev, progress=progress and info.main)

    def eval_deployed() -> tuple[float, float]:
        if info.enabled:  # each rank's BN running statistics saw its own last batch: use rank 0's (what is saved)
            with torch.no_grad():
                for b in model.buffers():
                    dist.broadcast(b, 0)
        return evaluate(deployed(model), test_loader, precision=cfg.precision, info=info)

    def checkpoint(epoch: int, row: dict[str, Any]) -> None:
        """Save epoch's checkpoint and metrics, run the callbacks, drop files no longer kept."""
        path = checkpoint_path(run_dir, epoch)
        save_checkpoint(path, epoch=epoch, model=model, train_config=cfg.to_dict(), optimizer=opt.state_dict(),
                        metrics=row, run_id=run_id)
        write_metrics(run_dir / "metrics.csv", rows)
        state.epoch, state.row, state.checkpoint = epoch, row, path
        _call(callbacks, "on_checkpoint", state)
        for e, p in list_checkpoints(run_dir):
            if e < epoch and not cfg.keeps_file(e):
                p.unlink(missing_ok=True)

    if start is None:
        start = 0
        test_loss, test_acc = eval_deployed()
        nan = float("nan")
        rows = [{"epoch": 0, "lr": nan, "lr_end": nan, "train_loss": nan, "train_acc": nan, "test_loss": test_loss,
                 "test_acc": test_acc, "epoch_seconds": nan, "train_seconds": nan, "images_per_s": nan}]
        if info.main:
            trash = clear_run_dir(run_dir) if overwrite else None
            try:
                params = {"train": count_params(model), "deployed": count_params(deployed(model))}
                fsio.write_json(run_dir / "config.json", run_info(
                    cfg, data, run_id=run_id, model_config=unwrap(model).config.to_dict(), params=params,
                    world_size=info.world_size, device=str(dev), version=__version__))
                _call(callbacks, "on_train_start", state)
                checkpoint(0, rows[0])
            except BaseException:
                for cb in callbacks:  # release what the callbacks hold in the new run before it goes
                    if hasattr(cb, "close"):
                        cb.close()
                if trash is not None:  # the new run did not start: the old one goes back in place
                    restore_run_dir(run_dir, trash)
                raise
            empty_trash(run_dir)
    elif info.main:
        _call(callbacks, "on_train_start", state)

    show = progress and info.main
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        spe = len(train_loader)
        lr = lr_now = cfg.lr_at(epoch, spe)
        opt.set_lr(lr)
        train_loader.set_epoch(epoch)
        net.train()
        bar = tqdm(total=spe, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not show)
        for i, (x, y) in enumerate(train_loader):
            lr_i = cfg.lr_at_step((epoch - 1) * spe + i, spe)
            if lr_i != lr_now:  # a milestone inside the epoch
                opt.set_lr(lr_i)
                lr_now = lr_i
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
        sums = torch.tensor([loss_sum, correct, train_loader.num_samples], dtype=torch.float64, device=dev)
        if info.enabled:
            dist.all_reduce(sums)
        test_loss, test_acc = eval_deployed()
        row = {"epoch": epoch, "lr": lr, "lr_end": lr_now, "train_loss": sums[0].item() / sums[2].item(),
               "train_acc": 100.0 * sums[1].item() / sums[2].item(), "test_loss": test_loss, "test_acc": test_acc,
               "epoch_seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
               "images_per_s": sums[2].item() / train_seconds}
        rows.append(row)
        state.row = row
        if info.main:
            if cfg.is_checkpoint(epoch):
                checkpoint(epoch, row)
            else:
                write_metrics(run_dir / "metrics.csv", rows)
            if show:
                tqdm.write(f"epoch {epoch}/{cfg.epochs}  lr {lr:.4g}  train loss {row['train_loss']:.4f} "
                           f"acc {row['train_acc']:.2f}%  test acc {test_acc:.2f}%  "
                           f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s")
        if info.main:
            state.epoch = epoch
            _call(callbacks, "on_epoch_end", state)
        if _agree(info, state.stop if info.main else None):
            if show:
                tqdm.write(f"stopped after epoch {epoch} (asked by a callback); resume with --resume")
            break
        if info.enabled:
            dist.barrier()
    if info.main:
        _call(callbacks, "on_train_end", state)
    if info.enabled:
        dist.barrier()
    return rows
