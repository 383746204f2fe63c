"""Benchmarks: training images/s, recording overhead and sweep memory, the inference speed table.

Benchmarks print and return numbers; tests never time anything."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import UserError
from ..data import Loader
from ..train import TrainConfig, TrainStep, build_training, load_run_data, resolve_device


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
    train_ds = (data or load_run_data(replace(cfg, test_subset=None, probe_split="train", probe_n=1))).train
    model, opt = build_training(cfg, train_ds, dev)
    step = TrainStep(model.train(), opt, cfg, dev)
    loader = Loader(train_ds, cfg.batch_size, train=True, device=dev, seed=cfg.seed, channels_last=cfg.channels_last)
    if len(loader) == 0:
        raise UserError(f"batch {cfg.batch_size} is larger than the {len(train_ds)} training images")

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
    m = cfg.model
    return {"model": m.name, "attn": m.attn or "", "asr": m.asr, "both": m.both, "device": str(dev),
            "batch": cfg.batch_size, "precision": cfg.precision, "channels_last": cfg.channels_last,
            "compile": cfg.compile, "steps": steps, "warmup_steps": warmup, "warmup_seconds": warm_s,
            "seconds": secs, "images_per_s": steps * cfg.batch_size / secs,
            "finite": bool(torch.isfinite(torch.tensor(loss_sum)))}


#: what ``stripe bench train --paths`` compares: TrainConfig fields of each training path
TRAIN_PATHS: dict[str, dict[str, Any]] = {
    "eager": {},  # plain eager fp32, NCHW: the reference
    "channels_last": {"channels_last": True},
    "compile": {"compile": "compile"},
    "bf16": {"precision": "bf16", "channels_last": True},
    "fast": {},  # the device's fast path (stripe.train.fast_path): filled in per device
}


def _path_overrides(path: str, device_type: str) -> dict[str, Any]:
    from ..train import fast_path

    if path not in TRAIN_PATHS:
        raise UserError(f"unknown training path {path!r}; known: {', '.join(TRAIN_PATHS)}")
    return fast_path(device_type) if path == "fast" else dict(TRAIN_PATHS[path])


def compare_train_paths(models: Sequence[str] = ("cifar_resnet20", "cifar_resnet164"), *, attn: str | None = "se",
                        asr: bool = False, paths: Sequence[str] = ("eager", "fast"), repeats: int = 3,
                        steps: dict[str, int] | int = 30, warmup: int = 5, batch_size: int = 128,
                        device: str = "cpu", threads: int = 0, data_root: str | None = None,
                        log=print) -> "pd.DataFrame":
    """Training images/s of each path (eager fp32, the fast path, …) for each model, every measurement in a fresh
    process (so compile caches and allocator state do not carry over), interleaved: repeat r runs every
    (model, path) once before repeat r + 1 starts. Returns one row per (model, path): min, median and every
    value, and the speed-up over ``eager`` (median of the per-repeat ratios) when eager is among the paths."""
    import json
    import os
    import statistics
    import subprocess
    import sys

    import pandas as pd

    if "eager" not in paths:
        paths = ("eager", *paths)
    for p in paths:
        _path_overrides(p, "cpu")  # unknown names fail before anything runs
    values: dict[tuple[str, str], list[float]] = {}
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    for r in range(repeats):
        for model in models:
            n = steps[model] if isinstance(steps, dict) else steps
            for p in paths:
                job = {"model": model, "attn": attn, "asr": asr, "path": p, "steps": n, "warmup": warmup,
                       "batch_size": batch_size, "device": device, "data_root": data_root, "threads": threads}
                proc = subprocess.run([sys.executable, "-m", "stripe.experiments.bench", json.dumps(job)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise UserError(f"bench train {model} {p} failed: {proc.stderr.strip().splitlines()[-1:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                values.setdefault((model, p), []).append(res["images_per_s"])
                log(f"repeat {r + 1}/{repeats}  {model} {p}: {res['images_per_s']:.1f} images/s")
    rows = []
    for (model, p), v in values.items():
        eager = values[(model, "eager")]
        ratios = [a / b for a, b in zip(v, eager)]
        rows.append({"model": model, "attn": attn or "", "asr": asr, "path": p,
                     **{k: val for k, val in _path_overrides(p, device.split(":")[0]).items()},
                     "images_per_s_min": min(v), "images_per_s_median": statistics.median(v),
                     "values": " ".join(f"{x:.1f}" for x in v), "speedup_vs_eager": statistics.median(ratios)})
    return pd.DataFrame(rows)


def _train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement of :func:`compare_train_paths` (run in its own process)."""
    from ..nn import ModelConfig

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    dev = resolve_device(job["device"])
    cfg = TrainConfig(model=ModelConfig(job["model"], attn=job["attn"], asr=job["asr"]), epochs=1,
                      batch_size=job["batch_size"], data_root=job.get("data_root"), train_subset=5000, test_subset=100,
                      probe_n=10, **_path_overrides(job["path"], dev.type))
    return train_speed(cfg, steps=job["steps"], warmup=job["warmup"], device=job["device"])


def _real_images(dataset: str, n: int, data_root: str | None = None):
    from ..data import load_dataset, stratified_indices, take

    test = load_dataset(dataset, "test", root=data_root)
    return take(test, stratified_indices(test.labels, n, 0))


def collect_overhead(model_name: str = "cifar_resnet20", attn: str = "se", *, asr: bool = False, both: bool = False,
                     dataset: str = "cifar10", images: int = 1000, batch_size: int = 500, repeats: int = 5,
                     device: str | None = "auto", precision: str = "fp32", data_root: str | None = None) -> dict[str, Any]:
    """Throughput of a forward pass under the Recorder (every tap, before and after, fp32 statistics)
    against the plain eval forward of the same model, timed interleaved; medians over ``repeats``."""
    import statistics

    from ..nn import create_model
    from ..record import Recorder
    from ..train import autocast

    dev = resolve_device(device)
    ds = _real_images(dataset, images, data_root)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=ds.num_classes, attn=attn, asr=asr, both=both,
                         in_chans=ds.in_chans).to(dev).eval()
    batches = list(Loader(ds, batch_size, train=False, device=dev))

    def plain() -> None:
        with torch.no_grad():
            for x, _ in batches:
                with autocast(dev, precision):
                    model(x)

    def recorded() -> int:
        with Recorder(model, "*", raw_n=256) as rec, torch.no_grad():
            for x, _ in batches:
                with autocast(dev, precision):
                    model(x)
            rec.stats()  # the merge and the one transfer count too
        return len(rec.taps)

    def timed(fn) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    plain(), recorded()  # warm-up
    t_plain, t_rec = [], []
    for _ in range(repeats):
        t_plain.append(timed(plain))
        t_rec.append(timed(recorded))
    n_taps = recorded()
    p, r = statistics.median(t_plain), statistics.median(t_rec)
    return {"model": model_name, "attn": attn, "asr": asr, "device": str(dev), "images": len(ds),
            "batch": batch_size, "taps": n_taps, "plain_images_per_s": len(ds) / p,
            "recorded_images_per_s": len(ds) / r, "ratio": p / r, "overhead_pct": 100 * (r / p - 1)}


def collect_memory(n_checkpoints: Sequence[int] = (5, 50), *, model_name: str = "cifar_resnet20", attn: str = "se",
                   dataset: str = "cifar10", probe: int = 200, workdir: str | None = None) -> list[dict[str, Any]]:
    """Peak resident memory of a ``stripe collect`` sweep over N checkpoints, each sweep in a fresh
    process (so peaks are not shared); the checkpoints are one model saved N times."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from ..nn import create_model
    from ..train import checkpoint_path, save_checkpoint

    root = Path(workdir or tempfile.mkdtemp(prefix="stripe-mem-"))
    rows = []
    for n in n_checkpoints:
        run = root / f"run{n}"
        torch.manual_seed(0)
        ds = _real_images(dataset, 10)
        model = create_model(model_name, num_classes=ds.num_classes, attn=attn, in_chans=ds.in_chans)
        for e in range(n):
            save_checkpoint(checkpoint_path(run, e), epoch=e, model=model)
        (root / "model.json").write_text(json.dumps(model.config.to_dict()))
        code = (
            "import json, resource, sys, glob\n"
            "from stripe.record import collect\n"
            f"files = sorted(glob.glob({str(run / 'checkpoints' / '*.pt')!r}))\n"
            f"r = collect(None, checkpoints=files, model_config=json.load(open({str(root / 'model.json')!r})), "
            f"dataset={dataset!r}, out={str(run / 'recording')!r}, probe={str(probe)!r}, device='cpu', progress=False)\n"
            "print(json.dumps({'recorded': len(r.recorded), 'maxrss_mib': "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"checkpoints": n, **res})
    return rows


def inference_speed(model_name: str = "cifar_resnet164", *, attns: Sequence[str] | None = None,
                    batches: Sequence[int] = (1, 128), device: str | None = "auto", num_classes: int = 100,
                    repeats: int = 5, min_seconds: float = 0.25, precision: str = "fp32",
                    channels_last: bool = False, progress: bool = True):
    """The paper's speed table: eval images/s of the baseline, each attention module, and its folded
    ASR model, timed interleaved (every model once per repeat, medians reported) on random input."""
    import statistics

    import pandas as pd
    from tqdm.auto import tqdm

    from ..gates import reparameterize
    from ..nn import create_model, list_attn
    from ..train import autocast

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    attns = list(attns) if attns is not None else list_attn()
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = [("", "baseline", create_model(model_name, num_classes=num_classes))]
    for a in attns:
        models.append((a, "attention", create_model(model_name, num_classes=num_classes, attn=a)))
        models.append((a, "asr-folded", reparameterize(create_model(model_name, num_classes=num_classes, attn=a,
                                                                     asr=True))))
    models = [(a, v, m.to(dev, memory_format=fmt).eval()) for a, v, m in models]
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)

        def run(m, iters: int) -> float:
            _sync(dev)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(dev, precision):
                for _ in range(iters):
                    m(x)
            _sync(dev)
            return time.perf_counter() - t0

        iters = {}
        for a, v, m in models:  # warm up, then pick iterations so one timing lasts >= min_seconds
            run(m, 2)
            once = max(run(m, 1), 1e-6)
            iters[(a, v)] = max(1, int(min_seconds / once))
        times: dict[tuple[str, str], list[float]] = {k: [] for k in iters}
        bar = tqdm(total=repeats * len(models), desc=f"speed b{batch}", unit="model", disable=not progress)
        for _ in range(repeats):
            for a, v, m in models:
                times[(a, v)].append(batch * iters[(a, v)] / run(m, iters[(a, v)]))
                bar.update()
        bar.close()
        base = statistics.median(times[("", "baseline")])
        for a, v, m in models:
            ips = statistics.median(times[(a, v)])
            rows.append({"model": model_name, "attn": a, "variant": v, "device": str(dev), "batch": batch,
                         "params": sum(p.numel() for p in m.parameters()), "images_per_s": ips,
                         "slowdown_pct": 100.0 * (1.0 - ips / base), "repeats": repeats, "precision": precision})
    return pd.DataFrame(rows)


def write_speed(speed, out: str | Path) -> list[Path]:
    """Write a speed table as ``speed.csv``, ``speed.md`` and ``speed_table.png`` under ``out``."""
    from .. import fsio
    from ..viz.figures import save_figure, speed_markdown, speed_table

    out = fsio.claim_dir(out, "speed")
    written = [fsio.write_text(out / "speed.csv", speed.to_csv(index=False)),
               fsio.write_text(out / "speed.md", speed_markdown(speed))]
    return written + save_figure(speed_table(speed), out, "speed_table")


if __name__ == "__main__":  # one measurement of compare_train_paths, in a fresh process
    import json
    import sys

    print(json.dumps(_train_one(json.loads(sys.argv[1])), default=str))
