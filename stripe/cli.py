"""The ``stripe`` command: ``main(argv)`` is callable from tests."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    """Register a subcommand handler."""
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(empty)"
    columns = columns or list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


# --------------------------------------------------------------------------- models / fold
@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from .attention import list_attn
    from .models import create_model, list_models

    rows = []
    for name in list_models() if args.model is None else [args.model]:
        row = {"model": name}
        for attn in [None, *list_attn()]:
            m = create_model(name, num_classes=args.num_classes, attn=attn)
            row[attn or "plain"] = f"{sum(p.numel() for p in m.parameters()) / 1e6:.3f}M"
        rows.append(row)
    print(f"Parameters with {args.num_classes} classes (attention modules: {', '.join(list_attn())}):")
    print(_table(rows))
    return 0


@command("fold")
def cmd_fold(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .asr import reparameterize, verify_fold
    from .attention import list_attn
    from .models import create_model

    if not args.all and args.attn is None:
        raise ValueError("give --attn NAME (one of: " + ", ".join(list_attn()) + ") or --all")
    attns = list_attn() if args.all else [args.attn]
    variants = [False, True] if args.all else [args.both]
    n = lambda m: sum(p.numel() for p in m.parameters())
    plain = n(create_model(args.model, num_classes=args.num_classes, block=args.block))
    rows, failed = [], 0
    bar = tqdm(total=len(attns) * len(variants), desc="fold+verify", unit="model", disable=None)
    for attn in attns:
        for both in variants:
            model = create_model(args.model, num_classes=args.num_classes, attn=attn, asr=True, both=both,
                                 block=args.block)
            attn_params = n(create_model(args.model, num_classes=args.num_classes, attn=attn, block=args.block))
            folded = reparameterize(model)
            row = {"attention": attn, "variant": "asr+both" if both else "asr", "plain": plain,
                   "with attn": attn_params, "asr (train)": n(model), "folded": n(folded)}
            try:
                diff = verify_fold(model, atol=args.atol, dtype=torch.float64, perturb=0.1)
                row["max|Δ| fp64"] = f"{diff:.1e}"
                row["check"] = "ok"
            except AssertionError as e:
                row["max|Δ| fp64"], row["check"] = str(e), "FAIL"
                failed += 1
            row["max|Δ| fp32"] = f"{verify_fold(model, atol=float('inf'), dtype=torch.float32, perturb=0.1):.1e}"
            want = attn_params if both else plain
            if n(folded) != want:
                row["check"], failed = f"FAIL: {n(folded)} params, expected {want}", failed + 1
            rows.append(row)
            bar.update()
    bar.close()
    print(f"{args.model}, {args.num_classes} classes: ASR models folded into plain BN. Every parameter "
          f"perturbed (N(0, 0.1)) and BN statistics randomised; verified in float64 at atol {args.atol:g}; "
          f"the fp32 column is the same comparison in float32, where a deep network's own rounding shows.")
    print(_table(rows))
    if failed:
        print(f"{failed} fold(s) FAILED", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- train / compare / bench
def _int_list(text: str) -> tuple[int, ...] | None:
    """'every' -> None; '0,5,10' -> (0, 5, 10)."""
    if text == "every":
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'every' or a comma-separated list of epochs, got {text!r}")


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}")


def _add_train_args(s: argparse.ArgumentParser, *, variant: bool = True) -> None:
    from .train import COMPILE_MODES, PRECISIONS, TrainConfig

    d = TrainConfig()
    g = s.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="cifar_resnet{depth} (default %(default)s)")
    g.add_argument("--attn", default=None, help="attention module (se, eca, cbam, srm, ie, spa, dia)")
    if variant:
        g.add_argument("--asr", action="store_true", help="ASR: feed the attention a learnable ψ and fold it")
        g.add_argument("--both", action="store_true", help="with --asr, keep a normal attention as well")
    g.add_argument("--block", default=None, choices=["basic", "bottleneck"])
    g.add_argument("--psi-size", type=int, default=None)
    g.add_argument("--psi-init", type=float, default=d.psi_init)
    g = s.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="cifar10, cifar100, fashion-mnist, imagefolder")
    g.add_argument("--data-root", default=None, help="where the data set lives (default: search the usual places)")
    g.add_argument("--train-subset", type=int, default=None, help="class-stratified subset of the training split")
    g.add_argument("--test-subset", type=int, default=None, help="class-stratified subset of the test split")
    g = s.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--milestones", type=_float_list, default=d.milestones,
                   help="lr decays after these fractions of training (default 0.5,0.75)")
    g.add_argument("--gamma", type=float, default=d.gamma)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", default=d.compile, choices=COMPILE_MODES,
                   help="none, torch.compile, compile with CUDA graphs, or the whole step captured as a CUDA graph")
    g.add_argument("--checkpoints", type=_int_list, default=None, help="'every' (default) or a list of epochs")
    g.add_argument("--probe-n", type=int, default=d.probe_n, help="probe-set size (saved with the run)")
    s.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 …")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_config(args: argparse.Namespace, **over):
    from .train import TrainConfig

    kw = dict(model=args.model, attn=args.attn, asr=getattr(args, "asr", False), both=getattr(args, "both", False),
              block=args.block, dataset=args.dataset, data_root=args.data_root, train_subset=args.train_subset,
              test_subset=args.test_subset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              milestones=args.milestones, gamma=args.gamma, momentum=args.momentum, weight_decay=args.weight_decay,
              seed=args.seed, precision=args.precision, channels_last=args.channels_last, compile=args.compile,
              checkpoints=args.checkpoints, probe_n=args.probe_n, psi_size=args.psi_size, psi_init=args.psi_init)
    kw.update(over)
    return TrainConfig(**kw)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from .data import default_data_dir
    from .train import dist_from_env, train

    cfg = _train_config(args)
    out = args.out or default_data_dir() / "runs" / "latest"
    rows = train(cfg, out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                 progress=not args.no_progress)
    if dist_from_env().rank != 0:
        return 0
    last = rows[-1]
    print(f"run: {out}  epochs {last['epoch']}  final test top-1 {last['test_acc']:.2f}% "
          f"(deployed model)  best {max(r['test_acc'] for r in rows[1:]) if len(rows) > 1 else float('nan'):.2f}%")
    return 0


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .compare import run_comparison
    from .data import default_data_dir

    if args.attn is None:
        raise ValueError("compare needs --attn (the attention module of the +att, +ASR(att), +ASR(att)+att variants)")
    base = _train_config(args)
    out = Path(args.out) if args.out else default_data_dir() / "runs" / f"compare-{args.model}-{args.attn}"
    t0 = time.perf_counter()
    table = run_comparison(base, args.attn, list(range(args.seed, args.seed + args.seeds)), out,
                           device=args.device, progress=not args.no_progress)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv and results.md in {time.perf_counter() - t0:.0f} s ({len(table)} variants)")
    return 0


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    return {"train": bench_train, "collect": bench_collect, "speed": bench_speed}[args.what](args)


def bench_train(args: argparse.Namespace) -> int:
    from .bench import train_speed

    cfg = _train_config(args, epochs=1)
    r = train_speed(cfg, steps=args.steps, warmup=args.warmup, device=args.device)
    print(f"{r['model']} attn={r['attn'] or '-'} asr={r['asr']} both={r['both']} on {r['device']}: "
          f"batch {r['batch']}, {r['precision']}, channels_last={r['channels_last']}, compile={r['compile']}")
    print(f"  training: {r['images_per_s']:.1f} images/s over {r['steps']} steps "
          f"(warm-up {r['warmup_steps']} steps, {r['warmup_seconds']:.1f} s, not counted)")
    return 0


def bench_collect(args: argparse.Namespace) -> int:
    from .bench import collect_memory, collect_overhead

    r = collect_overhead(args.model, args.attn or "se", asr=args.asr, dataset=args.dataset, images=args.images,
                         batch_size=args.batch_size, repeats=args.repeats, device=args.device,
                         precision=args.precision, data_root=args.data_root)
    print(f"{r['model']} + {r['attn']}{' (ASR)' if r['asr'] else ''} on {r['device']}, {r['images']} real images, "
          f"batch {r['batch']}, {r['taps']} taps x (before, after):")
    print(f"  plain eval forward : {r['plain_images_per_s']:.1f} images/s")
    print(f"  recorded forward   : {r['recorded_images_per_s']:.1f} images/s")
    print(f"  collection / plain : {r['ratio']:.3f}  (overhead {r['overhead_pct']:+.1f}%; median of {args.repeats}, "
          "interleaved)")
    if args.memory:
        for row in collect_memory(args.memory, model_name=args.model, attn=args.attn or "se", dataset=args.dataset):
            print(f"  sweep over {row['checkpoints']:3d} checkpoints: peak RSS {row['maxrss_mib']:.0f} MiB "
                  f"({row['recorded']} recorded)")
    return 0




# --------------------------------------------------------------------------- collect / stats / ablate
@command("collect")
def cmd_collect(args: argparse.Namespace) -> int:
    import json

    from .record import collect

    model_config = None
    if args.model_config:
        with open(args.model_config) as f:
            model_config = json.load(f)
    if args.run_dir is None and not args.files:
        raise ValueError("give a RUN_DIR, or checkpoint files with --files, --model-config and --dataset")
    r = collect(args.run_dir, checkpoints=args.files or args.checkpoints, model_config=model_config,
                dataset=args.dataset, data_root=args.data_root, out=args.out, probe=args.probe, taps=args.taps,
                raw_n=args.raw_n, batch_size=args.batch_size, device=args.device, precision=args.precision,
                progress=not args.no_progress)
    from .train import dist_from_env

    if dist_from_env().rank == 0:
        print(f"recording: {r.out}  recorded {len(r.recorded)} checkpoint(s), skipped {len(r.skipped)} already done, "
              f"{len(r.failed)} failed ({r.images / max(r.seconds, 1e-9):.0f} images/s overall, {r.seconds:.1f} s)")
        for path, why in r.failed:
            print(f"FAILED: {why}", file=sys.stderr)
    return 1 if r.failed else 0


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .stats import compute_tables, summary_text, write_tables

    tables = compute_tables(args.recording, eps=args.eps, threshold=args.threshold)
    out = Path(args.out) if args.out else Path(args.recording) / "tables"
    written = write_tables(tables, out)
    print(summary_text(tables))
    print(f"wrote {len(written)} files to {out}")
    return 0


@command("ablate")
def cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import run_ablation

    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    table = run_ablation(args.run_dir, checkpoint=args.checkpoint, scopes=scopes, out=args.out, save=args.save,
                         device=args.device, progress=not args.no_progress)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.save:
        print(f"saved the folded plain model to {args.save}")
    return 0


# --------------------------------------------------------------------------- figures / demo
@command("figures")
def cmd_figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .figures import discover, execute_notebook

    src = discover(args.source)  # fails early, with a clear message, when there is nothing to plot
    out = Path(args.out) if args.out else Path("figures") / Path(args.source).resolve().name
    print(src.describe())
    execute_notebook("paper_figures", {"source": str(Path(args.source).resolve()), "out": str(out.resolve())},
                     out / "paper_figures.ipynb", timeout=args.timeout)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    print(f"{len(files)} files in {out}:")
    for p in files:
        print(f"  {p.relative_to(out)}")
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(epochs=args.epochs, train_subset=args.train_subset)
    run_demo(args.out, cfg=cfg, data_root=args.data_root, device=args.device, progress=not args.no_progress)
    return 0


def bench_speed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import fsio, plots
    from .bench import inference_speed

    speed = inference_speed(args.model, attns=args.attn, batches=args.batch, device=args.device,
                            num_classes=args.num_classes, repeats=args.repeats, precision=args.precision,
                            channels_last=args.channels_last, progress=not args.no_progress)
    out = Path(args.out)
    fsio.write_text(out / "speed.csv", speed.to_csv(index=False))
    fsio.write_text(out / "speed.md", plots.speed_markdown(speed))
    plots.save_figure(plots.speed_table(speed), out, "speed_table")
    print(plots.speed_markdown(speed))
    print(f"wrote {out}/speed.csv, speed.md, speed_table.png/.pdf")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="stripe", description="Measure the Stripe Observation; train with ASR and fold it.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list models and attention modules with parameter counts")
    s.add_argument("--model", default=None, help="one model name (default: the common depths)")
    s.add_argument("--num-classes", type=int, default=100)

    s = sub.add_parser("fold", help="build an ASR model, fold it into plain BN, verify, print params and max difference")
    s.add_argument("--model", default="cifar_resnet164")
    s.add_argument("--attn", default=None, help="attention module")
    s.add_argument("--all", action="store_true", help="every attention module, asr and asr+both")
    s.add_argument("--both", action="store_true", help="keep a normal attention beside ASR")
    s.add_argument("--block", default=None, choices=["basic", "bottleneck"])
    s.add_argument("--num-classes", type=int, default=100)
    s.add_argument("--atol", type=float, default=1e-5)

    s = sub.add_parser("train", help="train one model on real data with per-epoch checkpoints")
    _add_train_args(s)
    s.add_argument("--out", default=None, help="run directory (default data/runs/latest)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")

    s = sub.add_parser("compare", help="train baseline, +att, +ASR(att), +ASR(att)+att over seeds; results table")
    _add_train_args(s, variant=False)
    s.add_argument("--seeds", type=int, default=1, help="seeds per variant (seed, seed+1, …)")
    s.add_argument("--out", default=None, help="comparison folder (default data/runs/compare-MODEL-ATTN)")

    s = sub.add_parser("bench", help="speed measurements")
    bsub = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = bsub.add_parser("train", help="training images/s on this device (real data, augmentation included)")
    _add_train_args(b)
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--warmup", type=int, default=5)
    b = bsub.add_parser("collect", help="recording throughput / plain eval throughput; sweep memory")
    b.add_argument("--model", default="cifar_resnet20")
    b.add_argument("--attn", default="se")
    b.add_argument("--asr", action="store_true")
    b.add_argument("--dataset", default="cifar10")
    b.add_argument("--data-root", default=None)
    b.add_argument("--images", type=int, default=1000)
    b.add_argument("--batch-size", type=int, default=500)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--device", default="auto")
    b.add_argument("--memory", type=lambda t: [int(v) for v in t.split(",")], default=None,
                   help="also measure peak memory of sweeps over these checkpoint counts, e.g. 5,50")

    b = bsub.add_parser("speed", help="the paper's speed table: baseline, each attention, its folded ASR")
    b.add_argument("--model", default="cifar_resnet164")
    b.add_argument("--attn", nargs="+", default=None, help="modules (default: all)")
    b.add_argument("--batch", nargs="+", type=int, default=[1, 128])
    b.add_argument("--num-classes", type=int, default=100)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--channels-last", action="store_true")
    b.add_argument("--device", default="auto")
    b.add_argument("--out", default="data/speed")
    b.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("figures", help="execute notebooks/paper_figures headless: every figure (PNG + PDF) and table")
    s.add_argument("source", help="a run, recording, comparison, or a folder holding them")
    s.add_argument("--out", default=None, help="default figures/<name of SOURCE>")
    s.add_argument("--timeout", type=int, default=1800, help="seconds per notebook cell")

    s = sub.add_parser("demo", help="the main job: train 4 variants, collect, stats, ablate, speed, figures")
    s.add_argument("--out", default="data/demo")
    s.add_argument("--data-root", default=None, help="CIFAR-10 JPEG folder (default: search; else Fashion-MNIST)")
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--train-subset", type=int, default=6000)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("collect", help="record every attention tap over the probe set at each checkpoint")
    s.add_argument("run_dir", nargs="?", default=None, help="a training run (or use --files)")
    s.add_argument("--checkpoints", default=None, help="all (default), last, every:K, or a list of epochs")
    s.add_argument("--files", nargs="+", default=None, help="checkpoint files from elsewhere (with --model-config)")
    s.add_argument("--model-config", default=None, help="JSON file with the model config, for --files")
    s.add_argument("--dataset", default=None, help="data set of the probe images (default: the run's)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--probe", default="run", help="run (the run's probe set), test, train, or a number of images")
    s.add_argument("--taps", nargs="+", default=["*"], help="globs, attention types, stage:K, asr, attention")
    s.add_argument("--raw-n", type=int, default=256, help="raw fp16 vectors kept per tap (for heat maps)")
    s.add_argument("--batch-size", type=int, default=500)
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default=None, help="recording directory (default RUN_DIR/recording)")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("stats", help="stripe statistics of a recording: tables (Parquet + CSV) and a summary")
    s.add_argument("recording")
    s.add_argument("--out", default=None, help="default RECORDING/tables")
    s.add_argument("--eps", type=float, default=0.05, help="convergence: relative distance of μ to the final μ")
    s.add_argument("--threshold", type=float, default=0.9, help="convergence: stripe index after attention")

    s = sub.add_parser("ablate", help="replace attention by its probe-set mean (folded into BN); test accuracy")
    s.add_argument("run_dir")
    s.add_argument("--checkpoint", default="last", help="last (default) or an epoch")
    s.add_argument("--scope", default="all,stage", help="comma list of all, stage, tap")
    s.add_argument("--save", default=None, help="save the fully folded plain model (scope all) to this file")
    s.add_argument("--out", default=None, help="default RUN_DIR/ablation")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stripe`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("stripe: interrupted; everything already written is kept", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"stripe {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
