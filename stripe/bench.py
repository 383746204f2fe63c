"""Speed and overhead measurements (benchmarks print numbers; tests never time anything)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from .data import Loader
from .train import SGD, TrainConfig, TrainStep, load_run_data, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(cfg: TrainConfig, *, steps: int = 50, warmup: int = 10, device: str | None = "auto",
                data=None) -> dict[str, Any]:
    """Training images/s of ``cfg``'s model with its real data pipeline (device-side augmentation
    included); compile/capture time is reported apart from the timed steps."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_ds = (data or load_run_data(replace(cfg, test_subset=1)))[0]
    torch.manual_seed(cfg.seed)
    model = cfg.build_model(train_ds.num_classes, train_ds.in_chans, train_ds.image_size).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = SGD(list(model.named_parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)
    step = TrainStep(model.train(), opt, cfg, dev)
    loader = Loader(train_ds, cfg.batch_size, train=True, device=dev, seed=cfg.seed, channels_last=cfg.channels_last)
    if len(loader) == 0:
        raise ValueError(f"batch {cfg.batch_size} is larger than the {len(train_ds)} training images")

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = batches()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(*next(it))
    _sync(dev)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    _sync(dev)
    secs = time.perf_counter() - t0
    loss_sum, _ = step.take_sums()
    return {"model": cfg.model, "attn": cfg.attn or "", "asr": cfg.asr, "both": cfg.both, "device": str(dev),
            "batch": cfg.batch_size, "precision": cfg.precision, "channels_last": cfg.channels_last,
            "compile": cfg.compile, "steps": steps, "warmup_steps": warmup, "warmup_seconds": warm_s,
            "seconds": secs, "images_per_s": steps * cfg.batch_size / secs,
            "finite": bool(torch.isfinite(torch.tensor(loss_sum)))}
