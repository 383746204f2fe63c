"""``stripe bench train|collect|speed|gates``: speed measurements, each one call of :mod:`stripe.experiments`."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import command, positive_int, precision_option, shared_options


def bench_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe bench`` and its four measurements, each with its options."""
    s = sub.add_parser("bench", help="speed measurements")
    bsub = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    _bench_train_parser(bsub)
    _bench_collect_parser(bsub)
    _bench_speed_parser(bsub)
    _bench_gates_parser(bsub)


def _bench_train_parser(bsub: argparse._SubParsersAction) -> None:
    """``stripe bench train``: training images/s, or training paths compared, or the optimizer's update."""
    from ..train import add_config_args

    b = bsub.add_parser("train", help="training images/s on this device (real data, augmentation included)")
    add_config_args(b, exclude=("epochs",))
    b.add_argument("--steps", type=positive_int("--steps"), default=30,
                   help="timed training steps (with --compare, a third of them for ResNet-164)")
    b.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    shared_options(b, device=True)
    g = b.add_argument_group("compare training paths, each measurement in a fresh process, interleaved")
    g.add_argument("--compare", action="store_true",
                   help="eager fp32 against the fast path (and --paths) per model (attention: --attn, default se)")
    g.add_argument("--models", default="cifar_resnet20,cifar_resnet164", help="comma-separated models")
    g.add_argument("--paths", default="eager,fast",
                   help="comma-separated CONFIG[+VARIANT...][@N]: CONFIG eager, channels_last, compile, bf16, fast (the "
                        "device's fast path); VARIANT jemalloc, tcmalloc (preloaded allocator), close, spread "
                        "(OpenMP binding); @N: N one-thread processes side by side, images/s summed")
    g.add_argument("--repeats", type=positive_int("--repeats"), default=3, help="interleaved repeats")
    g.add_argument("--threads", type=int, default=0,
                   help="torch threads of a one-process measurement (0: leave as is)")
    g.add_argument("--side-by-side", type=positive_int("--side-by-side"), default=1, metavar="N",
                   help="also measure every path as N one-thread processes started at once (PATH@N)")
    g.add_argument("--reference", default="eager", metavar="PATH",
                   help="the path every ratio is to, measured first in each repeat (default eager)")
    g.add_argument("--out", default=None, help="also write the table as CSV to this file")
    b.add_argument("--optimizer", action="store_true",
                   help="instead: milliseconds per SGD update of --model's parameters by stripe's SGD, torch's "
                        "foreach and fused SGD and stripe's update compiled (--threads, --repeats)")


def _bench_collect_parser(bsub: argparse._SubParsersAction) -> None:
    """``stripe bench collect``: recording throughput against plain evaluation; a sweep's memory."""
    b = bsub.add_parser("collect", help="recording throughput / plain eval throughput; sweep memory")
    b.add_argument("--model", default="cifar_resnet20")
    b.add_argument("--attn", default="se")
    b.add_argument("--asr", action="store_true")
    b.add_argument("--dataset", default="cifar10")
    b.add_argument("--data-root", default=None)
    b.add_argument("--images", type=positive_int("--images"), default=1000)
    b.add_argument("--batch-size", type=positive_int("--batch-size"), default=500)
    b.add_argument("--repeats", type=positive_int("--repeats"), default=5)
    precision_option(b)
    shared_options(b, device=True)
    b.add_argument("--memory", type=lambda t: [int(v) for v in t.split(",")], default=None,
                   help="also measure peak memory of sweeps over these checkpoint counts, e.g. 5,50")


def _bench_speed_parser(bsub: argparse._SubParsersAction) -> None:
    """``stripe bench speed``: the speed table (this package's models, or any model)."""
    b = bsub.add_parser("speed", help="the paper's speed table: baseline, each attention, its folded ASR; or "
                                      "(--model timm:NAME …) any model unfolded, with constant gates, and folded")
    b.add_argument("--model", default="cifar_resnet164", help="cifar_resnet{depth} or a source (timm:NAME …)")
    b.add_argument("--attn", nargs="+", default=None, help="modules (default: all)")
    b.add_argument("--batch", nargs="+", type=positive_int("--batch"), default=[1, 128])
    b.add_argument("--num-classes", type=positive_int("--num-classes"), default=None,
                   help="classes (default 100; a source model's own by default)")
    b.add_argument("--image-size", type=positive_int("--image-size"), default=None,
                   help="source model: input side (default: its own crop size, else 224)")
    b.add_argument("--weights", default=None, help="source model: weights file")
    b.add_argument("--repeats", type=positive_int("--repeats"), default=5)
    precision_option(b)
    b.add_argument("--channels-last", action="store_true")
    shared_options(b, out="output folder", out_default="data/speed", device=True, progress=True)


def _bench_gates_parser(bsub: argparse._SubParsersAction) -> None:
    """``stripe bench gates``: the gate table of torchvision/timm models."""
    b = bsub.add_parser("gates", help="gates of torchvision/timm models: found, fold target, fold check, recording "
                                      "overhead (random weights, CPU)")
    b.add_argument("--models", nargs="+", default=None, help="sources (default: the table's 11 gated and 3 "
                                                             "gate-free models)")
    b.add_argument("--extra", action="store_true", help="also NF-nets, ResNeSt/SKNet (unsupported) and LRASPP")
    b.add_argument("--batch-size", type=positive_int("--batch-size"), default=16)
    b.add_argument("--repeats", type=positive_int("--repeats"), default=5, help="interleaved timing pairs")
    b.add_argument("--passes", type=positive_int("--passes"), default=4, help="forwards per timing")
    b.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    b.add_argument("--no-overhead", action="store_true", help="skip the timings")
    b.add_argument("--effnet", action="store_true", help="also efficientnet_b0's overhead at batch 32, 224x224")
    b.add_argument("--ocr", action="store_true", help="also the PP-OCR classifier study (real weights, real images)")
    shared_options(b, out="write every number as JSON to this file", progress=True)


@command("bench", bench_parser)
def cmd_bench(args: argparse.Namespace) -> int:
    """Run the measurement ``args.what`` names."""
    return {"train": bench_train, "collect": bench_collect, "speed": bench_speed, "gates": bench_gates}[args.what](args)


def bench_train(args: argparse.Namespace) -> int:
    """``stripe bench train``: training images/s of one config (or ``--compare``, ``--optimizer``)."""
    from dataclasses import replace

    from ..experiments.bench import train_speed
    from ..train import config_from_args

    if args.optimizer:
        return bench_optimizer(args)
    if args.compare:
        return bench_train_compare(args)
    cfg = replace(config_from_args(args), epochs=1)
    r = train_speed(cfg, steps=args.steps, warmup=args.warmup, device=args.device)
    print(f"{r['model']} attn={r['attn'] or '-'} asr={r['asr']} both={r['both']} on {r['device']}: "
          f"batch {r['batch']}, {r['precision']}, channels_last={r['channels_last']}, compile={r['compile']}")
    print(f"  training: {r['images_per_s']:.1f} images/s over {r['steps']} steps "
          f"(warm-up {r['warmup_steps']} steps, {r['warmup_seconds']:.1f} s, not counted)")
    return 0


def bench_optimizer(args: argparse.Namespace) -> int:
    """``stripe bench train --optimizer``: milliseconds per SGD update, by implementation."""
    from ..experiments.bench import optimizer_speed

    table = optimizer_speed(getattr(args, "model.name"), getattr(args, "model.attn"), asr=getattr(args, "model.asr"),
                            threads=args.threads, repeats=args.repeats)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def bench_train_compare(args: argparse.Namespace) -> int:
    """``stripe bench train --compare``: training paths against a reference, each in a fresh process."""
    from ..experiments.bench import compare_train_paths

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    steps = {m: (args.steps if "164" not in m else max(5, args.steps // 3)) for m in models}
    table = compare_train_paths(models, attn=getattr(args, "model.attn") or "se", asr=getattr(args, "model.asr"),
                                paths=[p.strip() for p in args.paths.split(",") if p.strip()],
                                repeats=args.repeats, steps=steps, warmup=args.warmup,
                                batch_size=getattr(args, "train.batch_size"), device=args.device,
                                threads=args.threads, side_by_side=args.side_by_side, reference=args.reference,
                                dataset=getattr(args, "train.dataset"), data_root=getattr(args, "train.data_root"))
    cols = ["model", "path", "processes", "threads", "images_per_s_min", "images_per_s_median", "speedup",
            "speedup_min", "speedup_max", "images_per_cpu_s_median", "cpu_speedup", "disturbed", "values"]
    print(f"speed-ups: paired ratios to {args.reference} of the same repeat (cpu_speedup: of images per CPU-second)")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.out:
        from .. import fsio

        fsio.write_text(args.out, table.to_csv(index=False))
        print(f"wrote {args.out}")
    return 0


def bench_collect(args: argparse.Namespace) -> int:
    """``stripe bench collect``: recorded against plain forward throughput (and ``--memory``: a sweep's memory)."""
    from ..experiments.bench import collect_memory, collect_overhead

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


def bench_speed(args: argparse.Namespace) -> int:
    """``stripe bench speed``: the speed table, written to ``--out`` and printed."""
    from ..experiments.bench import inference_speed, speed_report, write_speed

    speed = inference_speed(args.model, attns=args.attn, batches=args.batch, device=args.device,
                            num_classes=args.num_classes, weights=args.weights, image_size=args.image_size,
                            repeats=args.repeats, precision=args.precision, channels_last=args.channels_last,
                            progress=not args.no_progress)
    written = write_speed(speed, args.out)
    print(speed_report(speed))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def bench_gates(args: argparse.Namespace) -> int:
    """``stripe bench gates``: the gate table of other models (and the EfficientNet and OCR studies)."""
    from .. import fsio
    from ..experiments.gates_bench import gates_benchmark, gates_markdown
    from ..experiments.ocr import ocr_markdown

    res = gates_benchmark(models=args.models, extra=args.extra, batch=args.batch_size, repeats=args.repeats,
                          passes=args.passes, threads=args.threads, overhead=not args.no_overhead, effnet=args.effnet,
                          ocr=args.ocr, progress=not args.no_progress)
    print(f"torch {res['torch']}, {res['threads']} thread(s), random weights:")
    print(gates_markdown(res["rows"]))
    for how, r in res.get("effnet_b0", {}).items():
        print(f"torchvision:efficientnet_b0, batch {r['batch']} at 224x224, {r['gates']} gates ({how}): plain "
              f"{r['plain_s']:.3f} s, recorded {r['recorded_s']:.3f} s: overhead {r['overhead_pct']:+.1f}% (median of "
              f"{r['repeats']} interleaved; per pair {r['pair_overhead_pct']:+.1f}%, CPU "
              f"{r['cpu_overhead_pct']:+.1f}%)")
    if "ocr" in res:
        print(ocr_markdown(res["ocr"]) if "gates" in res["ocr"] else f"OCR study skipped: {res['ocr']['skipped']}")
    if args.out:
        fsio.write_json(Path(args.out), res)
        print(f"wrote {args.out}")
    return 0
