"""The CUDA path, checked on a GPU (``pytest -m cuda``); every test here is skipped without one.

Fold on CUDA in fp32 and bf16; recording on CUDA equals recording on the CPU; one whole-step CUDA graph
training step equals the eager step; the loader's device-side augmentation equals the CPU path; no
host sync inside the training step or the recorder's reduction.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from stripe.data import ImageSet, Loader
from stripe.gates import verify_fold
from stripe.nn import create_model
from stripe.record import Recorder
from stripe.train import SGD, TrainConfig, TrainStep
from stripe.nn import ModelConfig

pytestmark = pytest.mark.cuda


def _images(n: int = 64, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet("synthetic", "test", torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g), tuple(str(i) for i in range(10)),
                    (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "synthetic", "0" * 64)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-3), (torch.bfloat16, 0.5)])
def test_fold_on_cuda(dtype, atol):
    torch.manual_seed(0)
    model = create_model("cifar_resnet56", num_classes=100, attn="se", asr=True).cuda()
    # fp32: a 56-layer network's own rounding; bf16: 8 mantissa bits through 56 layers
    assert verify_fold(model, atol=atol, dtype=dtype, perturb=0.1) <= atol
    assert verify_fold(model, atol=1e-9, dtype=torch.float64, perturb=0.1) <= 1e-9


def test_recording_on_cuda_equals_the_cpu():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, attn="se").eval()
    ds = _images(200)
    stats = {}
    for dev in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(dev)
        with Recorder(m, folds=5) as rec, torch.no_grad():
            for x, _ in Loader(ds, 64, train=False, device=dev):
                m(x)
        stats[dev] = rec.fold_stats()
    assert stats["cpu"].keys() == stats["cuda"].keys()
    for key, a in stats["cpu"].items():
        b = stats["cuda"][key]
        np.testing.assert_array_equal(a.count_, b.count_)
        for k in ("mean_", "m2_", "unit_sum_"):
            np.testing.assert_allclose(getattr(b, k), getattr(a, k), rtol=1e-4, atol=1e-4, err_msg=f"{key} {k}")


def _step_pair(compile_mode: str, precision: str):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, attn="se", asr=True).cuda()
    cfg = TrainConfig(model=ModelConfig("cifar_resnet20", attn="se", asr=True), precision=precision,
                      compile=compile_mode)
    opt = SGD(list(model.named_parameters()), 0.1, 0.9, 1e-4)
    return model, TrainStep(model.train(), opt, cfg, torch.device("cuda"))


def test_cuda_graph_step_equals_the_eager_step():
    ds = _images(128)
    x, y = next(iter(Loader(ds, 32, train=True, device="cuda", seed=0)))
    results = {}
    for mode in ("none", "cudagraph"):
        model, step = _step_pair(mode, "bf16")
        for _ in range(5):  # the graph path warms up 3 eager steps, captures at the 4th, replays at the 5th
            step(x, y)
        torch.cuda.synchronize()
        loss_sum, _ = step.take_sums()
        results[mode] = (loss_sum, {k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    (la, wa), (lb, wb) = results["none"], results["cudagraph"]
    assert lb == pytest.approx(la, rel=2e-2)  # bf16 autocast: identical math, kernel choice may differ
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=2e-2, atol=2e-2, msg=k)


def test_no_host_sync_inside_the_step_and_the_recorder():
    ds = _images(128)
    batches = list(Loader(ds, 32, train=True, device="cuda", seed=0))
    model, step = _step_pair("cudagraph", "bf16")
    for x, y in batches[:4]:  # warm-up and capture
        step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(*batches[0])  # a replay
        step(*batches[1])
        m = create_model("cifar_resnet20", num_classes=10, attn="se").cuda().eval()
        with Recorder(m, folds=4) as rec, torch.no_grad():
            m(batches[2][0])  # hooks and the per-fold reduction run on the device
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rec.images == 32


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_side_augmentation_equals_the_cpu_path(channels_last):
    ds = _images(100)
    for epoch in (0, 3):
        cpu = Loader(ds, 32, train=True, device="cpu", seed=7, channels_last=channels_last)
        gpu = Loader(ds, 32, train=True, device="cuda", seed=7, channels_last=channels_last)
        cpu.set_epoch(epoch), gpu.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(cpu, gpu, strict=True):
            torch.testing.assert_close(xb.cpu(), xa, rtol=0, atol=1e-6)
            assert torch.equal(yb.cpu(), ya)
