"""One script for a short GPU lease: every measurement and the first real results, one archive back.

    python -m stripe.gpurun --out $OUT --data-root .carry/cifar10-jpeg            # on the GPU
    python -m stripe.gpurun --out /tmp/dry --dry-run                              # CPU dry run (CI)

Stages (``--stages``, in this order): ``train-speed`` (ResNet-164 at batch 128: baseline, +SE,
+ASR(SE) on the fast path, and fp32 eager for reference), ``learns`` (the same short schedule on
the fast path and in fp32 eager: final test accuracy of both), ``collect-speed`` (recording every
tap over the test set vs a plain eval forward), ``speed`` (the inference speed table, batch 1 and
128), ``results`` (the four variants with per-epoch checkpoints, then collection, statistics and the
ablation). Everything is written under ``--out`` and packed into ``--out/results.tar.gz``, without
checkpoints; render the figures anywhere with ``stripe figures``. ``--dry-run`` runs every stage on
the CPU with tiny sizes, so the script is tested before any GPU time is spent.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__, fsio

STAGES = ("train-speed", "learns", "collect-speed", "speed", "results")


@dataclass(frozen=True)
class Sizes:
    """How big each stage is (the GPU sizes, or tiny ones for the dry run)."""

    model: str = "cifar_resnet164"
    batch: int = 128
    bench_steps: int = 100
    bench_warmup: int = 20
    learns_epochs: int = 2
    learns_model: str = "cifar_resnet164"
    train_subset: int | None = None
    test_subset: int | None = None
    collect_images: int = 10000
    speed_batches: tuple[int, ...] = (1, 128)
    speed_repeats: int = 5
    results_epochs: int = 6
    results_raw_n: int = 64
    device: str = "cuda"
    precision: str = "bf16"
    channels_last: bool = True
    compile: str = "cudagraph"


DRY = Sizes(model="cifar_resnet20", batch=32, bench_steps=3, bench_warmup=2, learns_epochs=1,
            learns_model="cifar_resnet8", train_subset=256, test_subset=200, collect_images=200,
            speed_batches=(2,), speed_repeats=1, results_epochs=2, results_raw_n=16, device="cpu",
            precision="fp32", channels_last=False, compile="none")


def _log(out: Path, record: dict[str, Any]) -> None:
    """Append one measurement to measurements.jsonl and echo it."""
    line = json.dumps(record, default=str)
    print(line, flush=True)
    with open(out / "measurements.jsonl", "a") as f:
        f.write(line + "\n")


def stage_train_speed(out: Path, sz: Sizes, base) -> None:
    """Training images/s at batch 128 on the fast path and in fp32 eager, augmentation included."""
    from .bench import train_speed

    for attn, asr in ((None, False), ("se", False), ("se", True)):
        for fast in (True, False):
            cfg = replace(base, model=sz.model, attn=attn, asr=asr, batch_size=sz.batch, epochs=1,
                          precision=sz.precision if fast else "fp32", channels_last=sz.channels_last and fast,
                          compile=sz.compile if fast else "none")
            t0 = time.perf_counter()
            r = train_speed(cfg, steps=sz.bench_steps, warmup=sz.bench_warmup, device=sz.device)
            r.update(stage="train-speed", path="fast" if fast else "fp32-eager", wall_s=time.perf_counter() - t0)
            _log(out, r)


def stage_learns(out: Path, sz: Sizes, base) -> None:
    """The same short schedule on the fast path and in fp32 eager; compare final test accuracy."""
    from .train import train

    for fast in (True, False):
        cfg = replace(base, model=sz.learns_model, attn="se", asr=True, epochs=sz.learns_epochs,
                      precision=sz.precision if fast else "fp32", channels_last=sz.channels_last and fast,
                      compile=sz.compile if fast else "none", checkpoints=())
        run = out / "learns" / ("fast" if fast else "fp32_eager")
        t0 = time.perf_counter()
        rows = train(cfg, run, overwrite=True, device=sz.device, progress=False)
        _log(out, {"stage": "learns", "path": "fast" if fast else "fp32-eager", "model": cfg.model,
                   "epochs": cfg.epochs, "final_test_acc": rows[-1]["test_acc"], "wall_s": time.perf_counter() - t0,
                   "median_images_per_s": sorted(r["images_per_s"] for r in rows[1:])[len(rows[1:]) // 2]})


def stage_collect_speed(out: Path, sz: Sizes, base) -> None:
    """Recording every tap (before and after, fp32 statistics) vs the plain eval forward."""
    from .bench import collect_overhead

    r = collect_overhead(sz.model, "se", dataset=base.dataset, images=sz.collect_images, batch_size=500,
                         repeats=5, device=sz.device, precision=sz.precision, data_root=base.data_root)
    r.update(stage="collect-speed")
    _log(out, r)


def stage_speed(out: Path, sz: Sizes, base) -> None:
    """The inference speed table (every module, its folded ASR, the baseline), interleaved timing."""
    from . import plots
    from .bench import inference_speed

    speed = inference_speed(sz.model, batches=sz.speed_batches, device=sz.device, repeats=sz.speed_repeats,
                            progress=False)
    fsio.write_text(out / "speed" / "speed.csv", speed.to_csv(index=False))
    fsio.write_text(out / "speed" / "speed.md", plots.speed_markdown(speed))
    _log(out, {"stage": "speed", "rows": len(speed)})


def stage_results(out: Path, sz: Sizes, base) -> None:
    """Four variants with per-epoch checkpoints, then collection, statistics and the ablation."""
    from .ablate import run_ablation
    from .compare import run_comparison, run_dir_of, variants
    from .record import collect
    from .stats import compute_tables, summary_text, write_tables

    t0 = time.perf_counter()
    cfg = replace(base, model=sz.model, epochs=sz.results_epochs, batch_size=sz.batch, precision=sz.precision,
                  channels_last=sz.channels_last, compile=sz.compile)
    table = run_comparison(cfg, "se", [0], out / "compare", device=sz.device, progress=False)
    _log(out, {"stage": "results-train", "wall_s": time.perf_counter() - t0, "table": table.to_dict("records")})
    for label in [v for v in variants("se") if v != "baseline"]:
        t0 = time.perf_counter()
        run = run_dir_of(out / "compare", label, 0)
        r = collect(run, raw_n=sz.results_raw_n, device=sz.device, progress=False)
        tables = compute_tables(r.out)
        write_tables(tables, r.out / "tables")
        _log(out, {"stage": "results-collect", "variant": label, "checkpoints": len(r.recorded),
                   "wall_s": time.perf_counter() - t0, "summary": summary_text(tables)})
    for label in ("+SE", "+ASR(SE)"):
        t0 = time.perf_counter()
        abl = run_ablation(run_dir_of(out / "compare", label, 0), scopes=("all", "stage", "tap"), device=sz.device,
                           progress=False)
        _log(out, {"stage": "results-ablate", "variant": label, "wall_s": time.perf_counter() - t0,
                   "table": abl.to_dict("records")})


STAGE_FNS = {"train-speed": stage_train_speed, "learns": stage_learns, "collect-speed": stage_collect_speed,
             "speed": stage_speed, "results": stage_results}


def pack(out: Path) -> Path:
    """Everything under ``out`` except checkpoints, as ``out/results.tar.gz``."""
    archive = out / "results.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(out.rglob("*")):
            if p.is_file() and p != archive and "checkpoints" not in p.parts:
                tar.add(p, arcname=str(p.relative_to(out)))
    return archive


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen stages; a failing stage is logged and the others still run."""
    from .train import TrainConfig

    p = argparse.ArgumentParser(prog="python -m stripe.gpurun", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default=None, help="folder with the CIFAR-10 JPEG zips")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: test the script itself")
    p.add_argument("--results-epochs", type=int, default=None)
    args = p.parse_args(argv)

    sz = DRY if args.dry_run else Sizes()
    if args.results_epochs:
        sz = replace(sz, results_epochs=args.results_epochs)
    if sz.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(dataset=args.dataset, data_root=args.data_root, train_subset=sz.train_subset,
                       test_subset=sz.test_subset)
    _log(out, {"stage": "env", "stripe": __version__, "torch": torch.__version__, "python": platform.python_version(),
               "device": torch.cuda.get_device_name(0) if sz.device == "cuda" else platform.processor() or "cpu",
               "dry_run": args.dry_run, "sizes": sz.__dict__})
    failed = []
    for name in args.stages:
        t0 = time.perf_counter()
        try:
            STAGE_FNS[name](out, sz, base)
        except Exception as e:  # keep going: one archive with whatever worked
            failed.append(name)
            _log(out, {"stage": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        _log(out, {"stage": name, "done_s": time.perf_counter() - t0})
    archive = pack(out)
    print(f"archive: {archive} ({archive.stat().st_size / 2**20:.1f} MiB); failed stages: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
