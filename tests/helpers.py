"""Shared test helpers: small real data sets, a synthetic one, and tiny training configs."""
from __future__ import annotations

import functools
import hashlib

import pytest
import torch

from stripe.data import DataNotFoundError, ImageSet, load_dataset
from stripe.nn import ModelConfig, create_model
from stripe.train import RunData, TrainConfig, load_run_data


@functools.lru_cache(maxsize=None)
def real_dataset_name() -> str:
    """CIFAR-10 (JPEG) when it can be found, else Fashion-MNIST from Debian; skip if neither."""
    for name in ("cifar10", "fashion-mnist"):
        try:
            load_dataset(name, "test")
            return name
        except DataNotFoundError:
            continue
    pytest.skip("no real data set found (CIFAR-10 JPEG zips or Debian's dataset-fashion-mnist)")


def need_cifar10() -> None:
    """Skip, saying why, when CIFAR-10 is not found (what a CIFAR-10-only preset such as the zoo needs)."""
    try:
        load_dataset("cifar10", "test")
    except DataNotFoundError as e:
        pytest.skip(f"CIFAR-10 not found (the zoo trains on CIFAR-10 only): {e}")


def tiny_cfg(**kw) -> TrainConfig:
    """A tiny training config on the real data set: cifar_resnet8 +ASR(SE), 256 training images, 3 epochs."""
    model = {k: kw.pop(k) for k in ("attn", "asr", "both", "block") if k in kw}
    model.setdefault("attn", "se")
    model.setdefault("asr", True)
    base = dict(dataset=real_dataset_name(), train_subset=256, test_subset=200, epochs=3, batch_size=64,
                probe_n=300)
    base.update(kw)
    return TrainConfig(model=ModelConfig(kw_name if (kw_name := base.pop("model", None)) else "cifar_resnet8",
                                         **model), **base)


@functools.lru_cache(maxsize=None)
def _run_data(key: tuple) -> RunData:
    dataset, train_subset, test_subset, probe_split, probe_n, probe_seed, seed = key
    cfg = TrainConfig(dataset=dataset, train_subset=train_subset, test_subset=test_subset, probe_split=probe_split,
                      probe_n=probe_n, probe_seed=probe_seed, seed=seed)
    return load_run_data(cfg)


def run_data(cfg: TrainConfig) -> RunData:
    """The data of ``cfg`` (cached across tests: the same images ``train`` would load)."""
    return _run_data((cfg.dataset, cfg.train_subset, cfg.test_subset, cfg.probe_split, cfg.probe_n, cfg.probe_seed,
                      cfg.seed))


def tiny_data() -> RunData:
    """The data of :func:`tiny_cfg`: 256 training images, 200 scored test images, 300 probe images."""
    return run_data(tiny_cfg())


def data_model(name: str, **kw):
    """A model shaped for the real data set in use (channels, image size, classes)."""
    test = tiny_data().test
    return create_model(name, num_classes=test.num_classes, in_chans=test.in_chans, image_size=test.image_size, **kw)


def cli_args(cfg: TrainConfig) -> list[str]:
    """``stripe train`` options reproducing ``cfg`` (tiny runs on the CPU)."""
    m = cfg.model
    args = ["--model", m.name, "--dataset", cfg.dataset, "--train-subset", str(cfg.train_subset),
            "--test-subset", str(cfg.test_subset), "--probe-n", str(cfg.probe_n), "--epochs", str(cfg.epochs),
            "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed), "--no-progress", "--device", "cpu"]
    if m.attn:
        args += ["--attn", m.attn]
    return args + (["--asr"] if m.asr else []) + (["--both"] if m.both else [])


def synthetic_set(n: int, *, classes: int = 10, channels: int = 3, size: int = 32, seed: int = 0) -> ImageSet:
    """Random uint8 images [n, channels, size, size] in ``classes`` balanced classes, shuffled: for tests that need
    tensors shaped like a data set, not real images. Its hash is the sha256 of its images and labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randperm(n, generator=g) % classes
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return ImageSet("synthetic", "test", images, labels, tuple(f"class{i}" for i in range(classes)),
                    (0.5,) * channels, (0.25,) * channels, f"random uint8, seed {seed}", digest)


def forced_logits(model: torch.nn.Module, taps, means: dict, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with every tap of ``taps`` forced to its constant in ``means`` (keyed by tap key, e.g.
    ``layer1.0.attn.tap`` or ``layer1.attn.tap[2]`` for a shared cell's call): what a constant replacement of
    those gates must compute, found without the replacement code."""
    def force(tap, inputs, output):
        path = next(n for n, m in model.named_modules() if m is tap).rsplit(".", 1)[0]
        return means[f"{path}.tap" if tap.index is None else f"{path}.tap[{tap.index}]"].to(output).expand_as(output)

    paths = dict.fromkeys(t.path for t in taps)  # a shared cell's calls are one module
    handles = [model.get_submodule(path).tap.register_forward_hook(force) for path in paths]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()

