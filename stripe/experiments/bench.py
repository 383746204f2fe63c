"""Benchmarks: training images/s, recording overhead and sweep memory, the inference speed table (of this
package's models and of any other model).

Benchmarks print and return numbers; tests never time anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import UserError
from ..data import Loader
from ..train import TrainConfig, TrainStep, build_training, load_run_data
from ..device import resolve_device
from .cpuenv import ALLOCATORS, BINDINGS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(cfg: TrainConfig, *, steps: int = 50, warmup: int = 10, device: str | None = "auto",
                data=None, on_ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Training images/s of ``cfg``'s model with its real data pipeline (device-side augmentation
    included); compile/capture time is reported apart from the timed steps. ``on_ready`` is called between the
    warm-up and the timed steps (side-by-side processes wait there for each other)."""
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
    if on_ready is not None:
        on_ready()
    wall0, cpu0, t0 = time.time(), time.process_time(), time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    _sync(dev)
    secs = time.perf_counter() - t0
    cpu_s, wall1 = time.process_time() - cpu0, time.time()
    loss_sum, _ = step.take_sums()
    m = cfg.model
    return {"model": m.name, "attn": m.attn or "", "asr": m.asr, "both": m.both, "device": str(dev),
            "batch": cfg.batch_size, "precision": cfg.precision, "channels_last": cfg.channels_last,
            "compile": cfg.compile, "steps": steps, "warmup_steps": warmup, "warmup_seconds": warm_s,
            "seconds": secs, "images_per_s": steps * cfg.batch_size / secs, "cpu_seconds": cpu_s,
            "start": wall0, "end": wall1, "threads": torch.get_num_threads(),
            "finite": bool(torch.isfinite(torch.tensor(loss_sum)))}


#: what ``stripe bench train --paths`` compares: TrainConfig fields of each training path
TRAIN_PATHS: dict[str, dict[str, Any]] = {
    "eager": {},  # plain eager fp32, NCHW: the reference
    "channels_last": {"channels_last": True},
    "compile": {"compile": "compile"},
    "bf16": {"precision": "bf16", "channels_last": True},
    "fast": {},  # the device's fast path (stripe.train.fast_path): filled in per device
}
#: process-level variants a path may add (``fast+jemalloc+close``): an allocator preloaded (LD_PRELOAD) or an
#: OpenMP thread binding (OMP_PROC_BIND, OMP_PLACES: every core, or each side-by-side process its own core);
#: see :mod:`stripe.experiments.cpuenv`
PROCESS_VARIANTS = (*ALLOCATORS, *BINDINGS)


@dataclass(frozen=True)
class PathSpec:
    """One measured configuration, ``CONFIG[+VARIANT…][@N]``: a :data:`TRAIN_PATHS` entry, process variants, and
    the number of one-thread processes run side by side (``@N``; without it one process)."""

    name: str
    config: str
    variants: tuple[str, ...] = ()
    processes: int = 1

    @classmethod
    def parse(cls, text: str) -> "PathSpec":
        """Read ``CONFIG[+VARIANT…][@N]``; unknown names and a bad N are one clear error."""
        body, _, procs = text.strip().partition("@")
        if procs and not (procs.isdigit() and int(procs) >= 1):
            raise UserError(f"path {text!r}: '@N' needs a number of processes >= 1, got {procs!r}")
        config, *variants = [t.strip() for t in body.split("+")]
        if config not in TRAIN_PATHS:
            raise UserError(f"unknown training path {config!r} in {text!r}; known: {', '.join(TRAIN_PATHS)}")
        bad = [v for v in variants if v not in PROCESS_VARIANTS]
        if bad:
            raise UserError(f"unknown process variant {bad[0]!r} in {text!r}; known: {', '.join(PROCESS_VARIANTS)}")
        allocs = [v for v in variants if v in ALLOCATORS]
        binds = [v for v in variants if v in BINDINGS]
        if len(allocs) > 1 or len(binds) > 1:
            raise UserError(f"path {text!r}: at most one allocator and one binding")
        return cls(text.strip(), config, tuple(variants), int(procs or 1))

    def env(self, base: dict[str, str], threads: int, rank: int) -> dict[str, str]:
        """The environment of process ``rank`` of this measurement (``threads`` threads; 0: every core)."""
        from . import cpuenv

        env = dict(base)
        if threads:
            env.update(cpuenv.thread_env(threads))
        for v in self.variants:
            if v in ALLOCATORS:
                env = cpuenv.allocator_env(v, env)
            else:
                env.update(cpuenv.binding_env(v, threads or os.cpu_count() or 1,
                                              rank if self.processes > 1 else None))
        return env


def _path_overrides(path: str, device_type: str) -> dict[str, Any]:
    from ..train import fast_path

    if path not in TRAIN_PATHS:
        raise UserError(f"unknown training path {path!r}; known: {', '.join(TRAIN_PATHS)}")
    return fast_path(device_type) if path == "fast" else dict(TRAIN_PATHS[path])


def _cpu_jiffies() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine so far (Linux ``/proc/stat``), or None elsewhere."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


#: a measurement counts as disturbed when other work used more than this many cores (or the hypervisor took
#: more than this as steal) while it ran
DISTURBED_CORES = 0.2


def _child_line(proc: subprocess.Popen, what: str, err) -> dict[str, Any]:
    """The next JSON line a measurement process prints; a clear error (with its stderr's last line) if it ends."""
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    proc.wait()
    err.seek(0)
    tail = [ln for ln in err.read().strip().splitlines() if ln.strip()][-1:]
    raise UserError(f"bench train {what} failed (exit {proc.returncode}): {tail}")


def _measure(spec: PathSpec, job: dict[str, Any], threads: int) -> dict[str, Any]:
    """One measurement of ``spec``: its processes started together, each warmed up, then timed at once (each
    waits for a line on stdin after its warm-up); images/s summed over the processes."""
    procs, errs = [], []
    per_proc = 1 if spec.processes > 1 else threads
    what = f"{job['model']} {spec.name}"
    try:
        for rank in range(spec.processes):
            err = tempfile.TemporaryFile("w+")
            errs.append(err)
            env = spec.env(dict(os.environ), per_proc, rank)
            spec_job = json.dumps({**job, "threads": per_proc, "wait": True})
            cmd = [sys.executable, "-m", "stripe.experiments.bench", spec_job]
            procs.append(subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env))
        for p, err in zip(procs, errs):
            _child_line(p, what, err)  # {"ready": ...}: warmed up
        j0, t0 = _cpu_jiffies(), time.time()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [_child_line(p, what, err) for p, err in zip(procs, errs)]
        j1, t1 = _cpu_jiffies(), time.time()
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in errs:
            err.close()
    own = sum(r["cpu_seconds"] for r in results)
    other = steal = None
    if j0 is not None and j1 is not None and t1 > t0:
        other = max(0.0, (j1[0] - j0[0] - own) / (t1 - t0))
        steal = (j1[1] - j0[1]) / (t1 - t0)
    images = sum(r["steps"] * r["batch"] for r in results)
    return {"images_per_s": sum(r["images_per_s"] for r in results), "images_per_cpu_s": images / own,
            "cores_used": own / (t1 - t0),
            "per_process": [r["images_per_s"] for r in results],
            "images_per_s_span": images / (max(r["end"] for r in results) - min(r["start"] for r in results)),
            "threads": results[0]["threads"], "other_cores": other, "steal_cores": steal,
            "cores": "|".join(",".join(map(str, r["affinity"])) for r in results),
            "disturbed": bool((other or 0.0) > DISTURBED_CORES or (steal or 0.0) > DISTURBED_CORES),
            "finite": all(r["finite"] for r in results)}


def compare_train_paths(models: Sequence[str] = ("cifar_resnet20", "cifar_resnet164"), *, attn: str | None = "se",
                        asr: bool = False, paths: Sequence[str] = ("eager", "fast"), repeats: int = 3,
                        steps: dict[str, int] | int = 30, warmup: int = 5, batch_size: int = 128,
                        device: str = "cpu", threads: int = 0, side_by_side: int = 0, reference: str = "eager",
                        dataset: str = "cifar10", data_root: str | None = None, log=print) -> "pd.DataFrame":
    """Training images/s of each path (eager fp32, the fast path, ``fast+jemalloc``, ``fast@2`` …, see
    :class:`PathSpec`) for each model, every measurement in fresh processes (so compile caches and allocator
    state do not carry over), interleaved: repeat r runs every (model, path) once before repeat r + 1 starts.
    ``side_by_side`` N > 1 adds every path as N one-thread processes run at once (``PATH@N``).

    Returns one row per (model, path): images/s (summed over a measurement's processes) min, median and every
    value, the speed-up over ``reference`` (default eager, one process; measured first in every repeat, added
    when not among the paths; the median, min and max of the per-repeat ratios), and how
    many measurements other work disturbed (:data:`DISTURBED_CORES`). Images per CPU-second of the measured
    processes (and its paired ratios to eager) say how much work each path needs, which other work on the
    machine changes far less than images/s."""
    import statistics

    import pandas as pd

    specs = [PathSpec.parse(p) for p in paths]  # unknown names fail before anything runs
    ref = PathSpec.parse(reference)
    specs = [ref] + [s for s in specs if s.name != ref.name]
    if side_by_side > 1:
        specs += [PathSpec(f"{s.name}@{side_by_side}", s.config, s.variants, side_by_side)
                  for s in list(specs) if s.processes == 1]
    specs = list({s.name: s for s in specs}.values())
    dev_type = resolve_device(device).type  # 'auto' resolves to CUDA when present, else the CPU
    for s in specs:
        s.env({}, threads, 0)  # a missing allocator fails before anything runs
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(repeats):
        for model in models:
            n = steps[model] if isinstance(steps, dict) else steps
            for s in specs:
                job = {"model": model, "attn": attn, "asr": asr, "path": s.config, "steps": n, "warmup": warmup,
                       "batch_size": batch_size, "device": device, "dataset": dataset, "data_root": data_root}
                res = _measure(s, job, threads)
                runs.setdefault((model, s.name), []).append(res)
                each = " + ".join(f"{v:.1f}" for v in res["per_process"]) if s.processes > 1 else ""
                load = "" if res["other_cores"] is None else (f"; other work {res['other_cores']:.2f} cores, steal "
                                                               f"{res['steal_cores']:.2f}")
                log(f"repeat {r + 1}/{repeats}  {model} {s.name}: {res['images_per_s']:.1f} images/s"
                    f"{f' ({each})' if each else ''}, {res['images_per_cpu_s']:.1f} per CPU-second on "
                    f"{res['cores_used']:.2f} cores{load}{'  DISTURBED' if res['disturbed'] else ''}")
    rows = []
    for (model, name), rs in runs.items():
        s = next(x for x in specs if x.name == name)
        v = [x["images_per_s"] for x in rs]
        ratios = [a / b["images_per_s"] for a, b in zip(v, runs[(model, ref.name)])]
        per_cpu = [x["images_per_cpu_s"] for x in rs]
        cpu_ratios = [a / b["images_per_cpu_s"] for a, b in zip(per_cpu, runs[(model, ref.name)])]
        other = [x["other_cores"] for x in rs if x["other_cores"] is not None]
        rows.append({"model": model, "attn": attn or "", "asr": asr, "path": name, "config": s.config,
                     "variants": "+".join(s.variants), "processes": s.processes, "threads": rs[0]["threads"],
                     "cores": rs[0]["cores"],
                     **_path_overrides(s.config, dev_type),
                     "images_per_s_min": min(v), "images_per_s_median": statistics.median(v),
                     "values": " ".join(f"{x:.1f}" for x in v), "reference": ref.name,
                     "speedup_vs_eager": statistics.median(ratios) if ref.name == "eager" else float("nan"),
                     "speedup": statistics.median(ratios),
                     "speedup_min": min(ratios), "speedup_max": max(ratios),
                     "ratios": " ".join(f"{x:.3f}" for x in ratios),
                     "images_per_cpu_s_median": statistics.median(per_cpu),
                     "cpu_speedup": statistics.median(cpu_ratios),
                     "cpu_ratios": " ".join(f"{x:.3f}" for x in cpu_ratios),
                     "disturbed": sum(x["disturbed"] for x in rs), "other_cores_max": max(other) if other else None,
                     "finite": all(x["finite"] for x in rs)})
    return pd.DataFrame(rows)


def _train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement process of :func:`compare_train_paths`: with ``wait``, it prints a ready line after its
    warm-up and starts the timed steps when a line arrives on stdin."""
    from ..nn import ModelConfig

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    dev = resolve_device(job["device"])
    cfg = TrainConfig(model=ModelConfig(job["model"], attn=job["attn"], asr=job["asr"]), epochs=1,
                      batch_size=job["batch_size"], dataset=job.get("dataset", "cifar10"), data_root=job.get("data_root"),
                      train_subset=min(5000, (job["steps"] + job["warmup"]) * job["batch_size"]), test_subset=100,
                      probe_n=10, **_path_overrides(job["path"], dev.type))

    def wait() -> None:
        print(json.dumps({"ready": True}), flush=True)
        if sys.stdin.readline().strip() != "go":  # the parent ended: do not time alone
            raise SystemExit("bench: no start signal")

    res = train_speed(cfg, steps=job["steps"], warmup=job["warmup"], device=job["device"],
                      on_ready=wait if job.get("wait") else None)
    # the cores this process may run on once OpenMP has started (a binding pins the main thread too)
    res["affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return res


#: SGD implementations :func:`optimizer_speed` times: stripe's own (a handful of foreach ops over every
#: parameter, the lr a tensor), torch.optim.SGD's foreach and fused forms, and stripe's update compiled
OPTIMIZERS = ("stripe-foreach", "torch-foreach", "torch-fused", "stripe-compiled")


def optimizer_speed(model_name: str = "cifar_resnet20", attn: str | None = "se", *, asr: bool = False,
                    updates: int = 200, repeats: int = 5, threads: int = 0, lr: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 1e-4) -> "pd.DataFrame":
    """Milliseconds per SGD update of a model's parameters (CPU) by each of :data:`OPTIMIZERS`, timed interleaved
    (medians over ``repeats`` timings of ``updates`` updates each), and each one's largest difference from
    stripe's update after one step from the same parameters and gradients (float32 rounding; ``scale``: the
    largest magnitude an update works with)."""
    import statistics

    import pandas as pd

    from ..nn import create_model
    from ..train.optim import SGD

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, attn=attn, asr=asr)
    named = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    grads = [torch.randn_like(p) for _, p in named]

    def build(impl: str):
        params = [torch.nn.Parameter(p.clone()) for _, p in named]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if impl.startswith("stripe"):
            opt = SGD(list(zip([n for n, _ in named], params)), lr, momentum, weight_decay)
            return params, (torch.compile(opt.step) if impl == "stripe-compiled" else opt.step)
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              **({"fused": True} if impl == "torch-fused" else {"foreach": True}))
        return params, opt.step

    steps = {impl: build(impl) for impl in OPTIMIZERS}
    for _, step in steps.values():  # warm-up (and compilation) before any timing
        step()
    first = {}
    for impl in OPTIMIZERS:  # one update from the same start: what each computes
        params, step = build(impl)
        step()
        first[impl] = params
    ms: dict[str, list[float]] = {impl: [] for impl in OPTIMIZERS}
    for _ in range(repeats):
        for impl, (_, step) in steps.items():
            t0 = time.perf_counter()
            for _ in range(updates):
                step()
            ms[impl].append(1e3 * (time.perf_counter() - t0) / updates)
    base = statistics.median(ms[OPTIMIZERS[0]])
    # the largest magnitude one update computes with (p, lr·g, lr·wd·p): rounding differences scale with it
    scale = max(float((p.abs() + lr * (g.abs() + weight_decay * p.abs())).max()) for (_, p), g in zip(named, grads))
    return pd.DataFrame([{"optimizer": impl, "model": model_name, "attn": attn or "", "asr": asr,
                          "tensors": len(named), "parameters": sum(p.numel() for _, p in named),
                          "threads": torch.get_num_threads(), "ms_per_update": statistics.median(v),
                          "ms_min": min(v), "vs_stripe": statistics.median(v) / base, "scale": scale,
                          "max_abs_diff": max(float((a - b).detach().abs().max())
                                              for a, b in zip(first[impl], first[OPTIMIZERS[0]]))}
                         for impl, v in ms.items()])


def _real_images(dataset: str, n: int, data_root: str | None = None):
    from ..data import load_dataset, stratified_indices, take

    test = load_dataset(dataset, "test", root=data_root)
    return take(test, stratified_indices(test.labels, n, 0))


@torch.no_grad()
def recording_overhead(model: torch.nn.Module, taps: Any, batches: torch.Tensor | Sequence[torch.Tensor], *,
                       repeats: int = 5, passes: int = 1, raw_n: int = 0, precision: str = "fp32") -> dict[str, Any]:
    """Recorded eval forwards (the ``taps``, after and before, reduced to moments and merged at the end) against
    plain eval forwards of the same ``batches``: ``repeats`` interleaved (plain, recorded) pairs of ``passes``
    passes over the batches each, after one warm-up of each; medians of wall time and process CPU time, the
    minimum, and the median of the per-pair ratios."""
    import statistics

    from ..record import Recorder
    from ..device import autocast

    batches = [batches] if isinstance(batches, torch.Tensor) else list(batches)
    dev = batches[0].device
    model.eval()
    taps_seen: list[int] = []

    def plain() -> None:
        for _ in range(passes):
            for x in batches:
                with autocast(dev, precision):
                    model(x)

    def recorded() -> None:
        with Recorder(model, taps, raw_n=raw_n) as rec:
            for _ in range(passes):
                for x in batches:
                    with autocast(dev, precision):
                        model(x)
            rec.stats()  # the merge and the one transfer count too
        taps_seen.append(len(rec.taps))

    def timed(fn) -> tuple[float, float]:
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(dev)
        return time.perf_counter() - t0, time.process_time() - c0

    plain(), recorded()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(plain))
        b.append(timed(recorded))
    med = statistics.median
    return {"plain_s": med(t for t, _ in a), "recorded_s": med(t for t, _ in b),
            "overhead_pct": 100 * (med(t for t, _ in b) / med(t for t, _ in a) - 1),
            "pair_overhead_pct": 100 * (med(tb / ta for (ta, _), (tb, _) in zip(a, b)) - 1),
            "cpu_overhead_pct": 100 * (med(c for _, c in b) / med(c for _, c in a) - 1),
            "min_overhead_pct": 100 * (min(t for t, _ in b) / min(t for t, _ in a) - 1), "repeats": repeats,
            "passes": passes, "batch": int(batches[0].shape[0]), "images": sum(int(x.shape[0]) for x in batches),
            "taps": taps_seen[-1], "threads": torch.get_num_threads()}


def collect_overhead(model_name: str = "cifar_resnet20", attn: str = "se", *, asr: bool = False, both: bool = False,
                     dataset: str = "cifar10", images: int = 1000, batch_size: int = 500, repeats: int = 5,
                     device: str | None = "auto", precision: str = "fp32", data_root: str | None = None) -> dict[str, Any]:
    """Throughput of a forward pass under the Recorder (every tap, before and after, fp32 statistics, 256 raw
    vectors) against the plain eval forward of the same model on real test images, timed interleaved; medians
    over ``repeats`` (:func:`recording_overhead`)."""
    from ..nn import create_model

    dev = resolve_device(device)
    ds = _real_images(dataset, images, data_root)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=ds.num_classes, attn=attn, asr=asr, both=both,
                         in_chans=ds.in_chans).to(dev).eval()
    batches = [x for x, _ in Loader(ds, batch_size, train=False, device=dev)]
    r = recording_overhead(model, "*", batches, repeats=repeats, raw_n=256, precision=precision)
    p, rec = r["plain_s"], r["recorded_s"]
    return {"model": model_name, "attn": attn, "asr": asr, "device": str(dev), "images": len(ds),
            "batch": batch_size, "taps": r["taps"], "plain_images_per_s": len(ds) / p,
            "recorded_images_per_s": len(ds) / rec, "ratio": p / rec, "overhead_pct": r["overhead_pct"]}


def collect_memory(n_checkpoints: Sequence[int] = (5, 50), *, model_name: str = "cifar_resnet20", attn: str = "se",
                   dataset: str = "cifar10", probe: int = 200) -> list[dict[str, Any]]:
    """Peak resident memory of a ``stripe collect`` sweep over N checkpoints, each sweep in a fresh
    process (so peaks are not shared); the checkpoints are one model saved N times."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from ..nn import create_model
    from ..train import checkpoint_path, save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="stripe-mem-") as tmp:  # removed afterwards, with its checkpoints
        root = Path(tmp)
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


#: the variants of a speed table of this package's models (Table 1 of the paper), and of any other model
PACKAGE_VARIANTS = ("baseline", "attention", "asr-folded")
SOURCE_VARIANTS = ("unfolded", "constant gates", "folded")


def _package_models(name: str, attns: Sequence[str] | None, num_classes: int | None,
                    image_size: int | None) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """The baseline, each attention module and its folded ASR model of CIFAR ResNet ``name``."""
    from ..gates import reparameterize
    from ..nn import create_model, gate_classes, list_attn

    size = image_size or 32
    build = lambda **kw: create_model(name, num_classes=num_classes or 100, image_size=size, **kw)  # noqa: E731
    gates = lambda m: sum(isinstance(g, tuple(gate_classes())) for g in m.modules())  # noqa: E731
    torch.manual_seed(0)
    models = [{"attn": "", "variant": "baseline", "gates": 0, "module": build()}]
    for a in (list(attns) if attns is not None else list_attn()):
        att, asr = build(attn=a), build(attn=a, asr=True)
        models.append({"attn": a, "variant": "attention", "gates": gates(att), "module": att})
        models.append({"attn": a, "variant": "asr-folded", "gates": gates(asr), "module": reparameterize(asr)})
    return models, (3, size, size)


def _source_models(spec: str, num_classes: int | None, weights: str | Path | None,
                   image_size: int | None) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """Model ``spec`` as it is, with every gate replaced by its mean over random images, and folded."""
    from ..gates import detect_gates, fold_constants, replace_with_constants
    from ..nn import build_source
    from .fold_report import model_input_shape, random_images, record_means

    model, _ = build_source(spec, num_classes=num_classes, weights=weights)
    model.eval()
    shape = model_input_shape(spec, image_size)
    sites = detect_gates(model, random_images(2, shape, 0))
    means = record_means(model, sites, random_images(8, shape, 1)) if sites else {}
    return [{"attn": "", "variant": variant, "gates": len(sites), "module": m} for variant, m in
            zip(SOURCE_VARIANTS, (model, replace_with_constants(model, sites, means),
                                  fold_constants(model, sites, means)[0]))], shape


def inference_speed(model_name: str = "cifar_resnet164", *, attns: Sequence[str] | None = None,
                    batches: Sequence[int] = (1, 128), device: str | None = "auto", num_classes: int | None = None,
                    weights: str | Path | None = None, image_size: int | None = None, repeats: int = 5,
                    min_seconds: float = 0.25, precision: str = "fp32", channels_last: bool = False,
                    progress: bool = True):
    """The speed table: eval images/s of the models compared, timed interleaved (every model once per repeat,
    medians reported) on random input.

    For this package's CIFAR ResNets (``cifar_resnet{depth}``, ``num_classes`` 100 by default, 32 x 32 input by
    default): the baseline, each attention module of ``attns`` (default all) and its folded ASR model (the
    paper's Table 1). For any other model (``torchvision:NAME``, ``timm:NAME``, ``onnx:PATH``,
    ``package.module:factory``, with ``weights`` and its own classes and crop size by default): as it is, with
    every gate replaced by a constant, and folded (:data:`SOURCE_VARIANTS`). One row per (batch, model):
    ``gates`` of the model before folding, ``params``, ``images_per_s`` and ``slowdown_pct`` against the first
    model (the baseline, or the model as it is).
    """
    import statistics

    import pandas as pd
    from tqdm.auto import tqdm

    from ..nn import count_params, is_source
    from ..device import autocast
    from .fold_report import random_images

    if is_source(model_name):
        if attns is not None:
            raise UserError(f"--attn applies to this package's models, not to {model_name}")
        models, shape = _source_models(model_name, num_classes, weights, image_size)
    else:
        if weights is not None:
            raise UserError(f"--weights applies to other models (timm:NAME …); {model_name} is timed as built")
        models, shape = _package_models(model_name, attns, num_classes, image_size)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in models:
        m["module"] = m["module"].to(dev, memory_format=fmt).eval()
    rows = []
    for batch in batches:
        x = random_images(batch, shape, 2).to(dev).contiguous(memory_format=fmt)  # [batch, C, H, W]

        def run(m: torch.nn.Module, iters: int) -> float:
            _sync(dev)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(dev, precision):
                for _ in range(iters):
                    m(x)
            _sync(dev)
            return time.perf_counter() - t0

        iters = []
        for m in models:  # warm up, then pick iterations so one timing lasts >= min_seconds
            run(m["module"], 2)
            iters.append(max(1, int(min_seconds / max(run(m["module"], 1), 1e-6))))
        times: list[list[float]] = [[] for _ in models]
        bar = tqdm(total=repeats * len(models), desc=f"speed b{batch}", unit="model", disable=not progress)
        for _ in range(repeats):
            for i, m in enumerate(models):
                times[i].append(batch * iters[i] / run(m["module"], iters[i]))
                bar.update()
        bar.close()
        base = statistics.median(times[0])
        for m, t in zip(models, times):
            ips = statistics.median(t)
            # each repeat times every model once, back to back: the slowdown of each repeat against the first
            # model's time in the same repeat; their range is the interval drawn (the noise between repeats)
            paired = [100.0 * (1.0 - a / b) for a, b in zip(t, times[0])]
            rows.append({"model": model_name, "attn": m["attn"], "variant": m["variant"], "gates": m["gates"],
                         "device": str(dev), "batch": batch, "input": "x".join(map(str, shape)),
                         "params": count_params(m["module"]), "images_per_s": ips,
                         "slowdown_pct": 100.0 * (1.0 - ips / base), "repeats": repeats, "precision": precision,
                         "images_per_s_min": min(t), "images_per_s_max": max(t),
                         "slowdown_min": min(paired), "slowdown_max": max(paired),
                         "images_per_s_values": ";".join(f"{v:.4g}" for v in t)})
    return pd.DataFrame(rows)


def _is_package_table(speed) -> bool:
    """Whether a speed table is of this package's models (baseline, attention, folded ASR)."""
    return set(speed["variant"]) <= set(PACKAGE_VARIANTS)


def speed_report(speed) -> str:
    """A speed table as Markdown: Table 1 for this package's models; model, variant, images/s and the change
    against the model as it is for any other model."""
    from ..viz.figures import speed_markdown

    if _is_package_table(speed):
        return speed_markdown(speed)
    lines = ["| model | device | batch | input | variant | params (M) | images/s | vs unfolded |",
             "|---|---|---:|---|:---|---:|---:|---:|"]
    for _, r in speed.iterrows():
        lines.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['input']} | {r['variant']} | "
                     f"{r['params'] / 1e6:.3f} | {r['images_per_s']:,.1f} | {0.0 - r['slowdown_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"


def write_speed(speed, out: str | Path) -> list[Path]:
    """Write a speed table as ``speed.csv`` and ``speed.md`` under ``out``, and ``speed_table.png`` for this
    package's models."""
    from .. import fsio
    from ..viz.figures import speed_table
    from ..viz.save import save_figure

    out = fsio.claim_dir(out, "speed")
    written = [fsio.write_text(out / "speed.csv", speed.to_csv(index=False)),
               fsio.write_text(out / "speed.md", speed_report(speed))]
    return written + (save_figure(speed_table(speed), out, "speed_table") if _is_package_table(speed) else [])


if __name__ == "__main__":  # one measurement of compare_train_paths, in a fresh process
    if sys.platform == "linux":  # end with the comparing process, however it ends (PR_SET_PDEATHSIG)
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    print(json.dumps(_train_one(json.loads(sys.argv[1])), default=str))
