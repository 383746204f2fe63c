"""Named experiments with a time budget: ``stripe reproduce PRESET [--budget S] [--dry-run]``.

* ``demo-cpu``: the main job (:mod:`stripe.experiments.demo`).
* ``cifar10-resnet20-cpu``: CIFAR ResNet-20 (basic blocks) +SE and +ASR(SE) on the full CIFAR-10
  training set, 15 epochs of the paper's schedule shape (lr 0.1, x0.1 at 50 % and 75 %), recorded
  online every epoch on 1,000 un-augmented training images (the probe, disjoint from the scored
  test set), then the stripe tables with intervals and the constant-replacement ablation on the full
  test set. About 40 minutes on two CPU cores.
* ``gpu-quick``: what a short GPU slot measures, in order: the ``cuda`` tests; ResNet-164 training
  speed (baseline, +SE, +ASR(SE) on the fast path: bf16, channels_last, whole-step CUDA graph;
  +ASR(SE) also fp32 eager); the fast path learning like fp32 eager; recording overhead and the
  inference speed table; then, with the time left, ResNet-164 +SE on full CIFAR-10 with online
  recording every epoch, as many epochs as the measured speed allows. A campaign over several short
  slots continues with ``--stages cuda-tests,science --variant +ASR(SE) --epochs N`` (the same N each
  slot; then the baseline, +ASR(SE)+SE, other seeds with ``--seed``), and ``stripe compare --table-only``
  compares the runs of all slots once their archives are unpacked into one folder.
* ``paper-cifar10``: the paper's full recipe, ResNet-164, 164 epochs, the four variants, recorded
  online (GPU hours).

Every stage checks the clock against the budget and stops cleanly; whatever happens, the results
so far are written (``measurements.jsonl``, one JSON object per line) and packed into
``results.tar.gz`` (checkpoints left out). The archive is kept under a size limit (15 MiB by default,
so it can be copied back from a machine with a per-file cap): a recording too big for it travels
thinned (:func:`pack`). ``--dry-run`` runs every stage with tiny sizes on the CPU.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import EnvironmentProblem, UserError
from .. import __version__, fsio


class Budget:
    """A wall-clock budget: ``left()`` seconds remain; stages ask before they start and while they run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def used(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds remaining (negative when over)."""
        return self.seconds - self.used()


class Deadline:
    """A training callback that stops training (cleanly, resumable) when the next epoch would overrun ``budget``,
    keeping ``reserve`` seconds for what follows."""

    def __init__(self, budget: Budget, reserve: float = 0.0) -> None:
        self.budget, self.reserve = budget, reserve
        self.stopped_at: int | None = None

    def on_epoch_end(self, state) -> None:
        seconds = state.row.get("epoch_seconds") or 0.0
        if state.epoch < state.cfg.epochs and self.budget.left() - self.reserve < 1.2 * seconds:
            state.stop = True
            self.stopped_at = state.epoch


@dataclass
class Context:
    """What every stage gets: the output folder, the budget, the sizes, the device, the data, the log."""

    out: Path
    budget: Budget
    sizes: "Sizes"
    device: str
    dataset: str
    data_root: str | None
    progress: bool
    dry_run: bool
    campaign: "Campaign" = field(default_factory=lambda: Campaign())
    notes: dict[str, Any] = field(default_factory=dict)

    def log(self, record: dict[str, Any]) -> None:
        """Append one measurement to ``measurements.jsonl`` (and echo it)."""
        record = {"t": round(self.budget.used(), 1), **record}
        line = json.dumps(record, default=str)
        print(line, flush=True)
        with open(self.out / "measurements.jsonl", "a") as f:
            f.write(line + "\n")


GPU_STAGES = ("cuda-tests", "train-speed", "learns", "collect-speed", "speed", "science")


@dataclass(frozen=True)
class Campaign:
    """What one ``gpu-quick`` call adds to a campaign: which stages, and the science run's variant, seed and
    epochs (``None``: fitted to the time left; a campaign fixes it so that every run has the same schedule)."""

    stages: tuple[str, ...] = GPU_STAGES
    variant: str = "+SE"
    seed: int = 0
    epochs: int | None = None

    def __post_init__(self) -> None:
        from ..nn.variants import parse_label

        unknown = [x for x in self.stages if x not in GPU_STAGES]
        if unknown or not self.stages:
            raise UserError(f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'}; known: "
                             f"{', '.join(GPU_STAGES)}")
        v = parse_label(self.variant)
        if v.attn not in (None, "se"):
            raise UserError(f"--variant {self.variant}: the campaign is of SE (baseline, +SE, +ASR(SE), +ASR(SE)+SE)")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class Sizes:
    """How big each stage is."""

    model: str = "cifar_resnet164"
    batch: int = 128
    bench_steps: int = 100
    bench_warmup: int = 20
    learns_epochs: int = 2
    learns_train_subset: int | None = 10000
    collect_images: int = 10000
    speed_batches: tuple[int, ...] = (1, 128)
    speed_repeats: int = 5
    science_epochs_max: int = 164
    science_reserve_s: float = 60.0
    min_stage_s: float = 20.0  # a stage starts only with more than this left
    train_subset: int | None = None
    test_subset: int | None = None
    probe_n: int = 1000
    epochs: int = 15
    raw_n: int = 256
    device: str = "cuda"
    precision: str = "bf16"
    channels_last: bool = True
    compile: str = "cudagraph"


GPU = Sizes(raw_n=64)  # ResNet-164 has 8,064 SE channels: 64 raw images per tap and epoch is 2 MB
GPU_DRY = Sizes(model="cifar_resnet20", batch=32, bench_steps=3, bench_warmup=2, learns_epochs=1,
                learns_train_subset=256, collect_images=200, speed_batches=(2,), speed_repeats=1,
                science_epochs_max=2, science_reserve_s=0.0, min_stage_s=0.0, train_subset=256, test_subset=200, probe_n=100,
                raw_n=16, device="cpu", precision="fp32", channels_last=False, compile="none")
CPU20 = Sizes(model="cifar_resnet20", epochs=15, device="cpu", precision="fp32", channels_last=False, compile="none")
CPU20_DRY = replace(CPU20, epochs=2, train_subset=256, test_subset=200, probe_n=100, raw_n=16, speed_batches=(2,),
                    speed_repeats=1)


# --------------------------------------------------------------------------- shared steps
def _base_config(ctx: Context, **over: Any):
    from ..nn import ModelConfig
    from ..train import TrainConfig

    sz = ctx.sizes
    kw = dict(model=ModelConfig(sz.model), dataset=ctx.dataset, data_root=ctx.data_root, train_subset=sz.train_subset,
              test_subset=sz.test_subset, probe_n=sz.probe_n, epochs=sz.epochs, batch_size=sz.batch,
              precision=sz.precision, channels_last=sz.channels_last, compile=sz.compile)
    kw.update(over)
    return TrainConfig(**kw)


def _train_recorded(ctx: Context, cfg, run: Path, *, reserve: float = 0.0) -> dict[str, Any]:
    """Train ``cfg`` into ``run`` (resuming a partial run) with online recording (when the model has attention)
    and the budget's deadline."""
    from ..record import OnlineRecorder
    from ..train import train

    rec = OnlineRecorder(raw_n=ctx.sizes.raw_n) if cfg.model.attn else None
    deadline = Deadline(ctx.budget, reserve)
    t0 = time.perf_counter()
    rows = train(cfg, run, resume=(run / "config.json").exists(), device=ctx.sizes.device, progress=ctx.progress,
                 callbacks=[c for c in (rec, deadline) if c is not None])
    trained = [r for r in rows if r["epoch"] >= 1]
    return {"run": str(run), "epochs_done": rows[-1]["epoch"], "epochs": cfg.epochs,
            "stopped_by_budget_at": deadline.stopped_at, "wall_s": time.perf_counter() - t0,
            "record_s": rec.seconds if rec else 0.0, "final_test_acc": rows[-1]["test_acc"],
            "median_images_per_s": (sorted(r["images_per_s"] for r in trained)[len(trained) // 2] if trained else None),
            "train_s": sum(r["train_seconds"] for r in trained if r["train_seconds"] == r["train_seconds"])}


def _tables(ctx: Context, run: Path, label: str) -> None:
    from ..analysis import compute_tables, summary_text, write_tables

    tables = compute_tables(run / "recording")
    write_tables(tables, run / "recording" / "tables")
    ctx.log({"stage": "stats", "variant": label, "summary": summary_text(tables)})


def _ablate(ctx: Context, run: Path, label: str, scopes: tuple[str, ...]) -> None:
    from ..analysis import run_ablation

    t0 = time.perf_counter()
    table = run_ablation(run, scopes=scopes, device=ctx.sizes.device, progress=ctx.progress)
    ctx.log({"stage": "ablate", "variant": label, "wall_s": time.perf_counter() - t0,
             "table": table.to_dict("records")})


# --------------------------------------------------------------------------- cifar10-resnet20-cpu
def cifar10_resnet20_cpu(ctx: Context) -> None:
    """ResNet-20 +SE and +ASR(SE), full CIFAR-10, 15 epochs, recorded online; tables; ablation; comparison."""
    from ..experiments.compare import final_predictions, wilson_interval
    from ..analysis.ablation import mcnemar_exact
    from ..nn.variants import Variant, slug

    labels = {"+SE": Variant("se"), "+ASR(SE)": Variant("se", True)}
    runs, complete = {}, {}
    for i, (label, v) in enumerate(labels.items()):
        if ctx.budget.left() <= 0:
            ctx.log({"stage": "train", "variant": label, "skipped": "out of budget"})
            continue
        cfg = _base_config(ctx, model=replace(_base_config(ctx).model, **v.overrides()),
                           keep_checkpoints="last,every:5")
        run = ctx.out / "runs" / f"{slug(label)}_seed0"
        runs[label] = run
        # leave the later variants and the analysis their share of the budget
        reserve = ctx.budget.left() * (len(labels) - 1 - i) / (len(labels) - i) + 300 * (not ctx.dry_run)
        result = _train_recorded(ctx, cfg, run, reserve=reserve)
        complete[label] = result["epochs_done"] >= result["epochs"]
        ctx.log({"stage": "train", "variant": label, **result})
    for label, run in runs.items():
        if ctx.budget.left() <= 0:
            ctx.log({"stage": "stats", "variant": label, "skipped": "out of budget"})
            continue
        _tables(ctx, run, label)
    if "+SE" in runs and ctx.budget.left() > 0:
        _ablate(ctx, runs["+SE"], "+SE", ("all", "stage", "tap"))
    if len(runs) < len(labels) or ctx.budget.left() <= 0:
        ctx.log({"stage": "compare", "skipped": "out of budget", "complete": complete})
        return
    preds = {label: final_predictions(run, ctx.sizes.device) for label, run in runs.items()}
    row: dict[str, Any] = {}
    for label, (p, y) in preds.items():
        row[label] = {"top1": 100 * float((p == y).mean()), "wilson95": wilson_interval(int((p == y).sum()), len(y)),
                      "n_test": len(y), "complete": complete[label],
                      **({} if complete[label] else {"note": "stopped by the budget before its last epoch"})}
    (pa, ya), (pb, yb) = preds["+SE"], preds["+ASR(SE)"]
    ok_a, ok_b = pa == ya, pb == yb
    row["mcnemar_p_se_vs_asr"] = mcnemar_exact(int((ok_a & ~ok_b).sum()), int((ok_b & ~ok_a).sum()))
    ctx.log({"stage": "compare", **row})


# --------------------------------------------------------------------------- gpu-quick
def _stage_cuda_tests(ctx: Context) -> None:
    """The ``cuda`` test marker (skips without a GPU); the summary line is logged."""
    tests = Path(__file__).resolve().parents[2] / "tests"
    if not tests.is_dir():
        ctx.log({"stage": "cuda-tests", "skipped": "no tests/ folder next to the package (not a source checkout)"})
        return
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(tests)],
                          capture_output=True, text=True, timeout=max(30, min(240, ctx.budget.left() - 60)))
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    ctx.log({"stage": "cuda-tests", "rc": proc.returncode, "summary": tail[-1] if tail else "",
             "wall_s": time.perf_counter() - t0, "output_tail": "\n".join(tail[-40:])})


def _stage_train_speed(ctx: Context) -> None:
    from ..nn.variants import Variant
    from .bench import train_speed

    sz = ctx.sizes
    for v, fast in ((Variant(), True), (Variant("se"), True), (Variant("se", True), True), (Variant("se", True), False)):
        if ctx.budget.left() <= 3 * sz.min_stage_s:
            ctx.log({"stage": "train-speed", "skipped": f"{v.label}: out of budget"})
            continue
        cfg = _base_config(ctx, model=replace(_base_config(ctx).model, **v.overrides()), epochs=1,
                           precision=sz.precision if fast else "fp32", channels_last=sz.channels_last and fast,
                           compile=sz.compile if fast else "none", train_subset=None if not ctx.dry_run else 256)
        t0 = time.perf_counter()
        r = train_speed(cfg, steps=sz.bench_steps, warmup=sz.bench_warmup, device=sz.device)
        r.update(stage="train-speed", variant=v.label, path="fast" if fast else "fp32-eager",
                 wall_s=time.perf_counter() - t0)
        ctx.log(r)
        if fast and v.asr:
            ctx.notes["asr_fast_images_per_s"] = r["images_per_s"]


def _stage_learns(ctx: Context) -> None:
    """The same short schedule on the fast path and in fp32 eager: final test accuracy of both."""
    from ..nn.variants import Variant
    from ..train import train

    sz = ctx.sizes
    for fast in (True, False):
        cfg = _base_config(ctx, model=replace(_base_config(ctx).model, **Variant("se", True).overrides()),
                           epochs=sz.learns_epochs, train_subset=sz.learns_train_subset,
                           precision=sz.precision if fast else "fp32", channels_last=sz.channels_last and fast,
                           compile=sz.compile if fast else "none", checkpoints=())
        run = ctx.out / "learns" / ("fast" if fast else "fp32_eager")
        t0 = time.perf_counter()
        rows = train(cfg, run, overwrite=True, device=sz.device, progress=False)
        ctx.log({"stage": "learns", "path": "fast" if fast else "fp32-eager", "model": cfg.model.name,
                 "epochs": cfg.epochs, "train_subset": cfg.train_subset,
                 "test_acc_by_epoch": [round(r["test_acc"], 2) for r in rows], "wall_s": time.perf_counter() - t0})


def _stage_collect_speed(ctx: Context) -> None:
    from .bench import collect_overhead

    sz = ctx.sizes
    r = collect_overhead(sz.model, "se", dataset=ctx.dataset, images=sz.collect_images, batch_size=500,
                         repeats=5, device=sz.device, precision=sz.precision, data_root=ctx.data_root)
    ctx.log({"stage": "collect-speed", **r})


def _stage_speed(ctx: Context) -> None:
    from .bench import inference_speed, write_speed

    sz = ctx.sizes
    speed = inference_speed(sz.model, batches=sz.speed_batches, device=sz.device, repeats=sz.speed_repeats,
                            progress=False)
    write_speed(speed, ctx.out / "speed")
    ctx.log({"stage": "speed", "rows": speed.to_dict("records")})


def _stage_science(ctx: Context) -> None:
    """ResNet-164 (+SE, or the campaign's variant and seed) on the full training set, online recording every
    epoch; the epochs are the campaign's, or as many as the measured speed fits into the time left. The final
    predictions are kept next to the run (they travel in the archive, for the comparison of a campaign)."""
    from ..nn.variants import parse_label
    from .compare import final_predictions, run_dir_of

    sz, camp = ctx.sizes, ctx.campaign
    v = parse_label(camp.variant)
    speed = ctx.notes.get("asr_fast_images_per_s")
    n_train = 50000 if sz.train_subset is None else sz.train_subset
    per_epoch = (n_train / speed * 1.15 + 5) if speed else None  # +15 % and evaluation/recording time
    left = ctx.budget.left() - sz.science_reserve_s
    if camp.epochs is not None:
        epochs = camp.epochs
    elif per_epoch is None:
        ctx.log({"stage": "science", "skipped": "no measured speed to fit the epochs to: run train-speed first "
                                                "or give --epochs"})
        return
    else:
        epochs = int(max(0, min(sz.science_epochs_max, left // per_epoch)))
        if epochs < 2:
            ctx.log({"stage": "science", "skipped": f"{left:.0f} s left, ~{per_epoch:.0f} s per epoch"})
            return
    cfg = _base_config(ctx, model=replace(_base_config(ctx).model, **v.overrides()), epochs=epochs, seed=camp.seed,
                       keep_checkpoints="last")
    run = run_dir_of(ctx.out, v.label, camp.seed)
    ctx.log({"stage": "science-plan", "variant": v.label, "seed": camp.seed, "epochs": epochs,
             "estimated_epoch_s": per_epoch, "left_s": left})
    result = _train_recorded(ctx, cfg, run, reserve=sz.science_reserve_s)
    ctx.log({"stage": "science", "variant": v.label, "seed": camp.seed, **result})
    if result["stopped_by_budget_at"] is None:
        pred, labels = final_predictions(run, sz.device)
        ctx.log({"stage": "science", "variant": v.label, "final_predictions": len(pred),
                 "final_top1": 100 * float((pred == labels).mean())})
    if v.attn:
        _tables(ctx, run, v.label)


def gpu_quick(ctx: Context) -> None:
    """Every GPU measurement in the order of the GPU issue; each stage logged, failures logged and skipped."""
    stages = {"cuda-tests": _stage_cuda_tests, "train-speed": _stage_train_speed, "learns": _stage_learns,
              "collect-speed": _stage_collect_speed, "speed": _stage_speed, "science": _stage_science}
    for name, fn in stages.items():
        if name not in ctx.campaign.stages:
            continue
        if ctx.budget.left() <= ctx.sizes.min_stage_s:
            ctx.log({"stage": name, "skipped": "out of budget"})
            continue
        t0 = time.perf_counter()
        try:
            fn(ctx)
        except Exception as e:  # keep going: one archive with whatever worked
            ctx.log({"stage": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        ctx.log({"stage": name, "done_s": round(time.perf_counter() - t0, 1)})


# --------------------------------------------------------------------------- zoo-cifar10-cpu
def zoo_cifar10_cpu(ctx: Context) -> None:
    """Every attention module as +att and +ASR(att), and the baseline, on ResNet-20 (:mod:`.zoo`)."""
    from . import zoo

    deadline = time.monotonic() + ctx.budget.left()
    zoo.run_campaign(ctx.out, jobs=ctx.notes.get("jobs", 2), sizes=zoo.ZOO_DRY if ctx.dry_run else zoo.ZOO,
                     data_root=ctx.data_root, log=ctx.log, deadline=deadline,
                     only=ctx.notes.get("only"))


# --------------------------------------------------------------------------- demo / paper
def demo_cpu(ctx: Context) -> None:
    from .demo import TINY, DemoConfig, run_demo

    run_demo(ctx.out, cfg=TINY if ctx.dry_run else DemoConfig(), data_root=ctx.data_root, device=ctx.device,
             progress=ctx.progress)


def paper_cifar10(ctx: Context) -> None:
    """The four variants of ResNet-164 with the paper's recipe (164 epochs), recorded online; resumable."""
    from ..nn.variants import slug, variants

    for label, v in variants("se").items():
        cfg = _base_config(ctx, model=replace(_base_config(ctx).model, **v.overrides()), epochs=ctx.sizes.epochs,
                           keep_checkpoints="last,every:10")
        run = ctx.out / "runs" / f"{slug(label)}_seed0"
        ctx.log({"stage": "train", "variant": label, **_train_recorded(ctx, cfg, run)})
        if v.attn:
            _tables(ctx, run, label)


@dataclass(frozen=True)
class Preset:
    """A named experiment: its function, default budget (s), sizes, dry-run sizes, and whether it needs CUDA."""

    run: Callable[[Context], None]
    budget: float
    sizes: Sizes
    dry: Sizes
    needs_cuda: bool = False


PRESETS: dict[str, Preset] = {
    "demo-cpu": Preset(demo_cpu, 3600, CPU20, CPU20_DRY),
    "cifar10-resnet20-cpu": Preset(cifar10_resnet20_cpu, 4 * 3600, CPU20, CPU20_DRY),
    "zoo-cifar10-cpu": Preset(zoo_cifar10_cpu, 48 * 3600, CPU20, CPU20_DRY),
    "gpu-quick": Preset(gpu_quick, 540, GPU, GPU_DRY, needs_cuda=True),
    "paper-cifar10": Preset(paper_cifar10, 7 * 24 * 3600, replace(GPU, epochs=164), replace(GPU_DRY, epochs=2),
                            needs_cuda=True),
}


ARCHIVE_MIB = 15.0  # results.tar.gz stays under this, so it can be copied back through a per-file cap


def _thin(rec: Path) -> tuple[set[Path], dict[Path, bytes]]:
    """How recording ``rec`` travels thinned: the files to leave out (every epoch's statistics and raw vectors
    but the last one's, and the per-channel table) and the members to replace (a manifest that lists the
    kept epoch and says that ``tables/`` holds the stripe tables of every epoch, computed before thinning)."""
    from ..record.format import MANIFEST_NAME

    manifest = json.loads((rec / MANIFEST_NAME).read_text())
    ckpts = sorted(manifest.get("checkpoints", []), key=lambda c: c["epoch"])
    if len(ckpts) < 2:
        return set(), {}
    drop = {rec / c[k] for c in ckpts[:-1] for k in ("stats", "raw") if c.get(k)} | {rec / "tables" / "channels.parquet"}
    thin = {**manifest, "checkpoints": ckpts[-1:],
            "thinned": {"epochs": [c["epoch"] for c in ckpts], "kept": [ckpts[-1]["epoch"]], "tables": "tables"}}
    return drop, {rec / MANIFEST_NAME: (json.dumps(thin, indent=1) + "\n").encode()}


def pack(out: Path, limit_mib: float = ARCHIVE_MIB) -> Path:
    """Everything under ``out`` except checkpoints, as ``out/results.tar.gz``, kept under ``limit_mib``.

    When the files would weigh more, the largest recordings travel thinned until they fit (their tables,
    ``tables/``, computed first where a stage did not write them): only their last epoch's statistics and raw
    vectors, with the tables of every epoch; :func:`stripe.analysis.compute_tables` reads such a recording's
    tables as they are. What was thinned is listed in ``PACKING.json`` inside the archive.
    """
    from ..record.format import MANIFEST_NAME

    archive = out / "results.tar.gz"

    def members() -> list[Path]:  # "checkpoints" looked for inside out, wherever out itself lies
        return [p for p in sorted(out.rglob("*")) if p.is_file() and p != archive and not p.name.startswith(".")
                and "checkpoints" not in p.relative_to(out).parts]

    size = sum(p.stat().st_size for p in members())
    limit = limit_mib * 2**20
    recs = [m.parent for m in out.rglob(MANIFEST_NAME) if "checkpoints" not in m.relative_to(out).parts]
    drop: set[Path] = set()
    replace_: dict[Path, bytes] = {}
    thinned = []
    for rec in sorted(recs, key=lambda r: sum(p.stat().st_size for p in r.rglob("*") if p.is_file()), reverse=True):
        if size <= limit:
            break
        if not (rec / "tables" / "taps.parquet").is_file():  # a stage stopped before its tables: make them now
            from ..analysis import compute_tables, write_tables

            try:
                size += sum(p.stat().st_size for p in write_tables(compute_tables(rec), rec / "tables"))
            except Exception as e:  # noqa: BLE001 - packing goes on; the recording travels whole
                print(f"archive: {rec} is not thinned: its tables could not be computed ({type(e).__name__}: {e})")
                continue
        d, r = _thin(rec)
        if not d:
            continue
        size -= sum(p.stat().st_size for p in d if p.is_file())
        size += sum(len(b) - (p.stat().st_size if p.is_file() else 0) for p, b in r.items())
        drop |= d
        replace_.update(r)
        thinned.append(str(rec.relative_to(out)))
    def write(f) -> None:  # into a temporary file renamed over the old archive: a full disk keeps the old one
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for p in members():  # again: tables written above travel too
                if p in drop:
                    continue
                if p in replace_:
                    _add_bytes(tar, str(p.relative_to(out)), replace_[p])
                else:
                    tar.add(p, arcname=str(p.relative_to(out)))
            if thinned:
                _add_bytes(tar, "PACKING.json", (json.dumps({"limit_mib": limit_mib, "thinned_recordings": thinned,
                                                             "left_out_files": len(drop)}, indent=1) + "\n").encode())

    fsio.atomic_write(archive, write)
    if thinned:
        print(f"archive: thinned {len(thinned)} recording(s) to their last epoch to stay under {limit_mib:g} MiB: "
              f"{', '.join(thinned)}")
    if archive.stat().st_size > limit:
        print(f"warning: {archive} is {archive.stat().st_size / 2**20:.1f} MiB, over the {limit_mib:g} MiB limit")
    return archive


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def run_preset(name: str, *, out: str | Path | None = None, data_root: str | None = None, budget: float | None = None,
               dry_run: bool = False, device: str = "auto", progress: bool = True, campaign: Campaign | None = None,
               archive_mib: float = ARCHIVE_MIB, jobs: int | None = None, only: list[str] | None = None) -> int:
    """Run preset ``name`` within ``budget`` seconds; writes ``measurements.jsonl`` and ``results.tar.gz`` (under
    ``archive_mib``). ``campaign`` (``gpu-quick`` only) picks its stages and the science run; ``jobs`` and ``only``
    (``zoo-cifar10-cpu`` only): runs side by side, and which runs (slugs or labels)."""
    from ..data import default_data_dir
    from ..experiments.demo import pick_dataset

    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if campaign is not None and name != "gpu-quick":
        raise UserError("--stages, --variant, --seed and --epochs apply to gpu-quick only")
    if (jobs is not None or only is not None) and name != "zoo-cifar10-cpu":
        raise UserError("--jobs and --only apply to zoo-cifar10-cpu only")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if only:
        from .zoo import run_by_slug

        for o in only:
            run_by_slug(o)
    if budget is not None and not budget > 0:
        raise UserError(f"--budget must be a positive number of seconds, got {budget:g}")
    if archive_mib <= 0:
        raise UserError(f"--archive-mib must be > 0, got {archive_mib}")
    sizes = preset.dry if dry_run else preset.sizes
    if device != "auto":
        sizes = replace(sizes, device=device)
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(f"{name} needs a CUDA device and none is available here; --dry-run rehearses it on the CPU")
    ctx_budget = Budget(budget if budget is not None else (600 if dry_run else preset.budget))
    out = fsio.claim_dir(Path(out) if out else default_data_dir() / "reproduce" / (name + ("-dry" if dry_run else "")),
                         "preset")
    dataset, sentence = pick_dataset(data_root) if name != "demo-cpu" else ("cifar10", "")
    ctx = Context(out, ctx_budget, sizes, sizes.device, dataset, data_root if dataset == "cifar10" else None,
                  progress, dry_run, campaign or Campaign())
    if jobs is not None:
        ctx.notes["jobs"] = jobs
    if only:
        ctx.notes["only"] = list(only)
    with fsio.DirLock(out, "--out"):
        ctx.log({"stage": "env", "preset": name, "stripe": __version__, "torch": torch.__version__,
                 "python": platform.python_version(), "dry_run": dry_run, "budget_s": ctx_budget.seconds,
                 "device": torch.cuda.get_device_name(0) if sizes.device == "cuda" else platform.processor() or "cpu",
                 "data": sentence, "sizes": sizes.__dict__, "campaign": ctx.campaign.__dict__})
        failed = False
        try:
            preset.run(ctx)
        except Exception as e:
            failed = True
            ctx.log({"stage": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        finally:
            ctx.log({"stage": "done", "wall_s": round(ctx_budget.used(), 1)})
            archive = pack(out, archive_mib)
            print(f"archive: {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    return 1 if failed else 0
