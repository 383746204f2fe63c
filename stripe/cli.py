"""The ``stripe`` command: parsing and dispatch only. ``main(argv)`` is callable from tests.

Every handler turns its options into one call of the library and prints what it returned; the
work itself lives in the subpackages. Errors the user can fix (:class:`~stripe.errors.StripeError`, and
the operating system's missing / denied / disk-full errors) are one line on stderr, exit 2; anything
else is a bug and keeps its traceback (exit 1).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import re
import sys
from pathlib import Path
from typing import Callable, Sequence
from .errors import StripeError, UserError

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


def _positive_int(option: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} expects a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be >= 1, got {value}")
        return value
    return parse


# --------------------------------------------------------------------------- models / fold
@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from .nn import list_attn, list_models
    from .nn import param_table

    rows = param_table(list_models() if args.model is None else [args.model], num_classes=args.num_classes,
                       block=args.block)
    print(f"Parameters with {args.num_classes} classes (attention modules: {', '.join(list_attn())}); "
          "block: basic for 6n+2 depths, bottleneck for 164 and 1001 (override with --block):")
    print(_table(rows))
    from .nn import get_spec

    biased = [n for n in list_attn() if "bias" in get_spec(n).options()]
    print(f"--mlp-bias ({', '.join(biased)}): biases in the attention's MLP, as in the original CBAM code (default: "
          "none, as timm's); under ASR a hidden unit dead for the constant ψ then stays trainable, where without "
          "biases a tap whose units all die outputs 0.5 for good")
    return 0


@command("fold")
def cmd_fold(args: argparse.Namespace) -> int:
    from .experiments.fold_report import fold_report

    r = fold_report(args.model, attn=args.attn, all_attns=args.all, both=args.both, checkpoint=args.checkpoint,
                    weights=args.weights, num_classes=args.num_classes, block=args.block, image_size=args.image_size,
                    input_shape=args.input_shape, atol=args.atol, progress=not args.no_progress, save=args.save)
    print(_fold_text(r))
    if r.get("saved"):
        print(f"saved the folded plain model to {r['saved']}")
    if not r["ok"]:
        print(f"{r.get('failed', 1)} fold check(s) FAILED", file=sys.stderr)
    return 0 if r["ok"] else 1


def _fold_text(r: dict) -> str:
    """The fold report as text (one of three kinds)."""
    if r["kind"] == "checkpoint":
        return _fold_checkpoint_text(r)
    if r["kind"] == "source":
        return _fold_source_text(r)
    return (f"{r['model']}, {r['num_classes']} classes: ASR models folded into plain BN. Every parameter perturbed "
            f"(N(0, 0.1)) and BN statistics randomised; verified in float64 at atol {r['atol']:g} (relative to the "
            f"largest logit); the fp32 columns are the same comparison in float32, where a deep network's own rounding "
            f"shows: max|logit| is the largest logit of the perturbed model, the scale that difference is relative to "
            f"(fp32 relative: their ratio).\n" + _table(r["rows"]))


def _fold_checkpoint_text(r: dict) -> str:
    """The fold report of a checkpoint file as text."""
    lines = [r["inferred"]]
    if not r["folded"]:
        return "\n".join(lines + [f"{r['note']}; parameters {r['params_before']:,}"])
    lines.append(f"folded into plain BN: parameters {r['params_before']:,} -> {r['params_after']:,} (expected, the "
                 f"folded architecture built anew: {r['params_expected']:,}); max |Δ logits| ASR model vs its "
                 f"fold, float64, the file's own weights and BN statistics: {r['max_abs_diff_fp64']:.1e}")
    if "official" in r:
        o = r["official"]
        lines.append(f"vs the file's fused_bn (the official fold, {o['norms']} norms): max |Δ| weight "
                     f"{o['weight']:.1e}, bias {o['bias']:.1e}, running_mean {o['running_mean']:.1e}, "
                     f"running_var {o['running_var']:.1e}")
    return "\n".join(lines)


def _fold_source_text(r: dict) -> str:
    """The fold report of another model's gates as text."""
    lines = [r["inferred"],
             f"{r['model']}, input {r['input']}: {r['n_gates']} gates found, {r['n_folded']} folded. Checked in "
             f"float64 with perturbed BN statistics: folded vs constant gates max |Δ| {r['max_abs_diff']:.1e} "
             f"(outputs up to {r['max_abs_ref']:.3g}; atol {r['atol']:g} relative): "
             f"{'ok' if r['ok'] else 'FAILED'}. Parameters {r['params_before']:,} -> {r['params_after']:,}; gate "
             f"modules left: {len(r['gate_modules_left'])}.",
             _table([{**row, "why": row["why"][:70]} for row in r["rows"]],
                    ["gate", "adapter", "channels", "fold", "into", "why"])]
    lines += [f"note: {n}" for n in dict.fromkeys(row["note"] for row in r["rows"] if row["note"])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- train / compare
@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from .record import record_config_from_args, train_with_recording
    from .train import default_run_dir, list_checkpoints, train
    from .device import dist_from_env

    cfg = _train_config(args)
    out = Path(args.out) if args.out else default_run_dir(cfg)
    finished = args.resume and any(e >= cfg.epochs for e, _ in list_checkpoints(out))
    options = dict(resume=args.resume, overwrite=args.overwrite, device=args.device, progress=not args.no_progress,
                   download=args.download, callbacks=_train_callbacks(args, out))
    if args.record:
        rows = train_with_recording(cfg, out, record_config_from_args(args, prefix="record-"), **options)
    else:
        rows = train(cfg, out, **options)
    if dist_from_env().rank != 0:
        return 0
    last = rows[-1]
    trained = [r["test_acc"] for r in rows if r["epoch"] >= 1]
    best = f"{max(trained):.2f}%" if trained else "n/a"
    status = "already finished; nothing to train" if finished else "done"
    data = json.loads((out / "config.json").read_text()).get("data", {})
    if data.get("source"):
        print(f"data: {data.get('dataset')} from {data['source']} ({data.get('train_n', '?')} training images, "
              f"{data.get('test_n', '?')} test images)")
    print(f"run: {out}  {status}: epoch {last['epoch']}/{cfg.epochs}, final test top-1 {last['test_acc']:.2f}% "
          f"(deployed model), best {best}" + (f"; recording: {out / 'recording'}" if args.record else ""))
    if args.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {args.tensorboard}")
    return 0


def _train_config(args: argparse.Namespace):
    """The training config of ``stripe train``: the options, or ``--config``'s recipe with the given options on top."""
    from .train import config_from_args, recipe_of

    if args.config:
        return config_from_args(args, base=recipe_of(args.config), given=args.given)
    return config_from_args(args)


def _train_callbacks(args: argparse.Namespace, out: Path) -> list:
    """``stripe train``'s extra callbacks: the TensorBoard log (after the recorder, which it reads)."""
    if not args.tensorboard:
        return []
    from .analysis.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(args.tensorboard, recording=out / "recording" if args.record else None)]


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    import time

    from .experiments.compare import run_comparison
    from .record import record_config_from_args
    from .train import config_from_args

    base = config_from_args(args)
    if base.model.attn is None:
        raise UserError("compare needs --attn (the attention module of the +att, +ASR(att), +ASR(att)+att variants)")
    if args.table_only:
        from .experiments.compare import table_of_existing

        if not args.out:
            raise UserError("--table-only needs --out (the folder whose runs/ to compare)")
        skipped: list[tuple[str, str]] = []
        table = table_of_existing(args.out, base.model.attn, device=args.device, skipped=skipped)
        print((Path(args.out) / "results.md").read_text())
        for run, why in skipped:
            print(f"left out {run}: {why}", file=sys.stderr)
        print(f"wrote {args.out}/results.csv and results.md ({len(table)} variants, no training)")
        return 0
    t0 = time.perf_counter()
    table = run_comparison(base, base.model.attn, list(range(base.seed, base.seed + args.seeds)), args.out,
                           device=args.device, progress=not args.no_progress,
                           record=record_config_from_args(args, prefix="record-") if args.record else None)
    out = Path(table.attrs["out"])
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv and results.md in {time.perf_counter() - t0:.0f} s ({len(table)} variants)")
    return 0


# --------------------------------------------------------------------------- bench
@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    return {"train": bench_train, "collect": bench_collect, "speed": bench_speed, "gates": bench_gates}[args.what](args)


def bench_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .experiments.bench import train_speed
    from .train import config_from_args

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
    from .experiments.bench import optimizer_speed

    table = optimizer_speed(getattr(args, "model.name"), getattr(args, "model.attn"), asr=getattr(args, "model.asr"),
                            threads=args.threads, repeats=args.repeats)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def bench_train_compare(args: argparse.Namespace) -> int:
    from .experiments.bench import compare_train_paths

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
        from . import fsio

        fsio.write_text(args.out, table.to_csv(index=False))
        print(f"wrote {args.out}")
    return 0


def bench_collect(args: argparse.Namespace) -> int:
    from .experiments.bench import collect_memory, collect_overhead

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
    from .experiments.bench import inference_speed, speed_report, write_speed

    speed = inference_speed(args.model, attns=args.attn, batches=args.batch, device=args.device,
                            num_classes=args.num_classes, weights=args.weights, image_size=args.image_size,
                            repeats=args.repeats, precision=args.precision, channels_last=args.channels_last,
                            progress=not args.no_progress)
    written = write_speed(speed, args.out)
    print(speed_report(speed))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def bench_gates(args: argparse.Namespace) -> int:
    from . import fsio
    from .experiments.gates_bench import gates_benchmark, gates_markdown
    from .experiments.ocr import ocr_markdown

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


# --------------------------------------------------------------------------- collect / stats / ablate
def _preprocess(args: argparse.Namespace) -> dict:
    """The preprocessing options of collect/ablate as a dict (see stripe.nn.preprocess_for)."""
    return {"base": args.preprocess, "resize": args.resize, "crop": args.crop, "mean": args.mean, "std": args.std,
            "interpolation": args.interpolation, "input_size": args.input_size, "no_resize": args.no_resize}


def _inform(text: str) -> None:
    """What a command inferred, printed before it works (stripe.train.inferred_text)."""
    print(text, flush=True)

@command("collect")
def cmd_collect(args: argparse.Namespace) -> int:
    from .record import collect, record_config_from_args
    from .device import dist_from_env

    if args.run_dir is None and not args.files and not args.model:
        raise UserError("give a RUN_DIR (or a run folder of the official ASR code), checkpoint files with --files, or "
                        "--model NAME --weights FILE --dataset")
    r = collect(args.run_dir, record_config_from_args(args), checkpoints=args.files or args.checkpoints,
                model_config=args.model_config, dataset=args.dataset, data_root=args.data_root, out=args.out,
                probe=args.probe, probe_split=args.probe_split, probe_seed=args.probe_seed, device=args.device,
                precision=args.precision,
                progress=not args.no_progress, model=args.model, weights=args.weights, num_classes=args.num_classes,
                preprocess=_preprocess(args), overwrite=args.overwrite, inform=_inform)
    if dist_from_env().rank == 0:
        again = (" (" + "; ".join(f"epoch {e} re-recorded: {why}" for e, why in r.rerecorded) + ")") \
            if r.rerecorded else ""
        print(f"recording: {r.out}  recorded {len(r.recorded)} checkpoint(s){again}, skipped {len(r.skipped)} "
              f"already done, {len(r.failed)} failed ({r.images / max(r.seconds, 1e-9):.0f} images/s overall, "
              f"{r.seconds:.1f} s)")
        for _, why in r.failed:
            print(f"FAILED: {why}", file=sys.stderr)
    return 1 if r.failed else 0


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    from .analysis import stats, summary_text

    r = stats(args.recording, out=args.out, eps=args.eps, threshold=args.threshold)
    if r.aggregated:
        seeds = r.tables["seeds"]
        print(f"{len(r.recordings)} runs aggregated per (epoch, stage): mean and 95% t-interval over runs")
        print(seeds[seeds["epoch"] >= 1].to_string(index=False, float_format=lambda v: f"{v:.3f}",
                                                   columns=[c for c in ("epoch", "stage", "asr", "n_runs",
                                                                        "stripe_after", "stripe_after_lo",
                                                                        "stripe_after_hi", "stripe_before")]))
    else:
        print(summary_text(r.tables))
    print(f"wrote {len(r.written)} files to {r.out}")
    return 0


@command("ablate")
def cmd_ablate(args: argparse.Namespace) -> int:
    from .analysis import ablate

    table = ablate(args.run_dir, model=args.model, weights=args.weights, dataset=args.dataset, out=args.out,
                   checkpoint=args.checkpoint, scopes=[s.strip() for s in args.scope.split(",") if s.strip()],
                   save=args.save, data_root=args.data_root, probe_n=args.probe_n, test_subset=args.test_subset,
                   num_classes=args.num_classes, taps=args.taps, preprocess=_preprocess(args), device=args.device,
                   progress=not args.no_progress, inform=_inform)
    out = Path(table.attrs["out"])
    print((out / "ablation.md").read_text().rstrip())
    print(f"wrote {out / 'ablation.csv'} and {out / 'ablation.md'}")
    if args.save:
        print(f"saved the folded plain model to {args.save}")
    return 0


# --------------------------------------------------------------------------- figures / demo / reproduce
@command("figures")
def cmd_figures(args: argparse.Namespace) -> int:
    from .viz.notebooks import default_figures_out, discover, render_figures

    src = discover(args.source)  # fails early, with a clear message, when there is nothing to plot
    out = Path(args.out) if args.out else default_figures_out(Path(args.source))
    print(src.describe())
    formats = tuple(f for f in args.formats.split(",") if f)
    files = render_figures(Path(args.source), out, timeout=args.timeout, formats=formats)
    print(f"{len(files)} files in {out}:")
    for p in files:
        print(f"  {p.relative_to(out)}")
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .experiments.demo import TINY, DemoConfig, run_demo

    cfg = TINY if args.tiny else DemoConfig()
    over = {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.train_subset)) if v is not None}
    with _tensorboard(args.tensorboard):
        run_demo(args.out, cfg=replace(cfg, **over), data_root=args.data_root, device=args.device,
                 progress=not args.no_progress)
    return 0


@contextlib.contextmanager
def _tensorboard(folder: str | None):
    """The runs a preset or the demo trains log for TensorBoard into ``folder`` (one subfolder per run)."""
    if folder is None:
        yield
        return
    from .analysis.tensorboard import summary_writer_class
    from .experiments.context import TENSORBOARD

    summary_writer_class()  # a missing package is one line before anything runs
    token = TENSORBOARD.set(Path(folder))
    try:
        yield
    finally:
        TENSORBOARD.reset(token)


@command("reproduce")
def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments.gpu import GPU_STAGES, Campaign
    from .experiments.presets import run_preset

    campaign = None
    if args.seed is not None and args.seeds is not None:
        raise UserError("--seed and --seeds: give one (--seed N is the same as --seeds N,)")
    if args.stages or args.variant or args.seed is not None or args.epochs is not None:
        campaign = Campaign(stages=tuple(x.strip() for x in args.stages.split(",")) if args.stages else GPU_STAGES,
                            variant=args.variant or "+SE", seed=args.seed or 0, epochs=args.epochs)
    with _tensorboard(args.tensorboard):
        return run_preset(args.preset, out=args.out, data_root=args.data_root, budget=args.budget,
                          dry_run=args.dry_run, jobs=args.jobs,
                          only=args.only.split(",") if args.only is not None else None, device=args.device,
                          progress=not args.no_progress, campaign=campaign, archive_mib=args.archive_mib,
                          seeds=args.seeds)


# --------------------------------------------------------------------------- parser
def _record_args(s: argparse.ArgumentParser) -> None:
    from .record import add_record_args

    g = s.add_argument_group("recording during training")
    g.add_argument("--record", action="store_true",
                   help="record every attention tap over the probe set at each checkpoint, into RUN/recording "
                        "(the same recording as `stripe collect RUN`)")
    add_record_args(s, prefix="record-", title="what --record records")


def _collect_record_args(s: argparse.ArgumentParser) -> None:
    from .record import add_record_args

    add_record_args(s, title="what the recording records")


def _floats(option: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} expects comma-separated numbers, got {text!r}") from None
    return parse


def _source_args(s: argparse.ArgumentParser, *, preprocess: bool = True) -> None:
    g = s.add_argument_group("any model (torchvision:NAME, timm:NAME, onnx:PATH, package.module:factory)")
    g.add_argument("--weights", default=None, help="weights file: a state_dict or a checkpoint holding one (read "
                                                   "with weights_only=True)")
    if not preprocess:
        return
    g.add_argument("--preprocess", default="auto", choices=["auto", "none"],
                   help="auto: the model's own resize/crop/normalisation (timm pretrained config or torchvision "
                        "weights transforms) for --model with --weights; none: the data set's own (as trained here); "
                        "what is used is printed before the work starts")
    g.add_argument("--resize", type=_positive_int("--resize"), default=None, help="resize the shorter side to N")
    g.add_argument("--crop", type=_positive_int("--crop"), default=None, help="center crop N x N")
    g.add_argument("--mean", type=_floats("--mean"), default=None, help="normalisation mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats("--std"), default=None, help="normalisation std, e.g. 0.229,0.224,0.225")
    g.add_argument("--interpolation", default=None, choices=["bilinear", "bicubic", "nearest"],
                   help="resize interpolation (default: the model's own, else bilinear)")
    g.add_argument("--input-size", type=_positive_int("--input-size"), default=None, metavar="N",
                   help="feed N x N images (resize N, centre crop N), keeping the normalisation: for weights trained "
                        "at another size than the model's own (e.g. 32 for timm weights trained on CIFAR)")
    g.add_argument("--no-resize", action="store_true",
                   help="feed the data set's images at their own size (no resize or crop), keeping the normalisation")


def _presets_text(presets: dict) -> str:
    """What each preset runs, on what device, within what default budget (``stripe reproduce --help``)."""
    lines = ["Runs a named experiment within a time budget (--budget seconds; every stage stops cleanly at it and the "
             "results so far are written and packed into OUT/results.tar.gz). --dry-run rehearses any preset on the "
             "CPU with tiny sizes in minutes.", "", "presets:"]
    for name, p in presets.items():
        doc = " ".join((p.run.__doc__ or "").split()).split(". ")[0].rstrip(".")
        doc = re.sub(r"\s*\(:\w+:`[^`]*`\)", "", doc)  # a docstring's cross-references are no help text
        doc = re.sub(r":\w+:`\.?([^`]*)`|``([^`]*)``", lambda m: m.group(1) or m.group(2), doc)
        hours = p.budget / 3600
        budget = f"{hours:.0f} h" if hours >= 1 else f"{p.budget / 60:.0f} min"
        lines.append(f"  {name}: {doc}.")
        lines.append(f"    runs on {'a CUDA GPU' if p.needs_cuda else 'the CPU'}; default budget {budget} (the "
                     "longest it runs; README.md gives measured times)")
    return "\n".join(lines)


#: the end of ``stripe --help``: where a new user starts
FIRST_STEPS = """first steps:
  stripe demo --tiny                 the whole chain in about a minute (train, record, stats, ablate, figures)
  stripe demo                        the same at a size that shows something (minutes on a CPU)
  stripe train --model cifar_resnet20 --attn se --record --epochs 10 --out RUN
  stripe stats RUN                   the stripe tables of RUN's recording and a short summary
  stripe figures RUN                 every figure of what RUN holds
  stripe train --config RUN/config.json --seed 1 --out RUN_SEED1   the same recipe again, another seed
  stripe COMMAND --help              each command's options
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from .train import add_config_args

    from . import __version__

    p = argparse.ArgumentParser(prog="stripe", description="Measure the Stripe Observation; train with ASR and fold it.",
                                epilog=FIRST_STEPS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"stripe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list models and attention modules with parameter counts")
    s.add_argument("--model", default=None, help="one model name (default: the common depths)")
    s.add_argument("--block", default=None, choices=["basic", "bottleneck"], help="override the block type")
    s.add_argument("--num-classes", type=_positive_int("--num-classes"), default=100)

    s = sub.add_parser("fold", help="build an ASR model, fold it into plain BN, verify, print params and max "
                                    "difference; or (--model timm:NAME …) fold the gates of any model")
    s.add_argument("--model", default="cifar_resnet164",
                   help="cifar_resnet{depth}, or a source: torchvision:NAME, timm:NAME, onnx:PATH, "
                        "package.module:factory")
    s.add_argument("--attn", default=None, help="attention module")
    s.add_argument("--all", action="store_true", help="every attention module, asr and asr+both")
    s.add_argument("--checkpoint", default=None, help="fold the ASR model in this file (any format: this package's, a "
                   "state dict, the official ASR code's, whose fused_bn it is compared with)")
    s.add_argument("--both", action="store_true", help="keep a normal attention beside ASR")
    s.add_argument("--block", default=None, choices=["basic", "bottleneck"])
    s.add_argument("--num-classes", type=_positive_int("--num-classes"), default=None,
                   help="classes (default 100; a source model's own by default)")
    s.add_argument("--atol", type=float, default=None,
                   help="tolerance (default 1e-5; for a source model 1e-9 relative to the largest output)")
    s.add_argument("--image-size", type=_positive_int("--image-size"), default=None,
                   help="source model: square input side (default: its own crop size, else 224)")
    s.add_argument("--input-shape", type=lambda t: tuple(int(v) for v in t.split(",")), default=None,
                   help="source model: input C,H,W (e.g. 3,48,192)")
    s.add_argument("--save", default=None, metavar="FILE",
                   help="with --checkpoint: write the checked fold (plain BN) as a stripe checkpoint to FILE")
    s.add_argument("--no-progress", action="store_true")
    _source_args(s, preprocess=False)

    s = sub.add_parser("train", help="train one model on real data with checkpoints (and recording with --record)")
    add_config_args(s)
    s.add_argument("--num-classes", dest="model.num_classes", type=_positive_int("--num-classes"), default=None,
                   metavar="NUM_CLASSES", help="a source model (--model torchvision:NAME, timm:NAME …): classes, which must be the data "
                        "set's (default: the data set's)")
    _record_args(s)
    s.add_argument("--out", default=None, help="run directory (default data/runs/MODEL-BLOCK-VARIANT-seedN)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the old one is deleted once the new one has its first checkpoint)")
    s.add_argument("--download", action="store_true", help="download CIFAR/Fashion-MNIST when not found (online)")
    s.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 …")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--config", default=None, metavar="FILE",
                   help="rerun a run's recipe: RUN/config.json (or a JSON training config); the options given on the "
                        "command line replace its values (e.g. --seed 1 --out RUN2)")
    s.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="log loss, accuracy and lr per epoch (and with --record the stages' S and per-channel std at "
                        "each recorded checkpoint) for TensorBoard into DIR")

    s = sub.add_parser("compare", help="train baseline, +att, +ASR(att), +ASR(att)+att over seeds; results table")
    add_config_args(s, model_exclude=("asr", "both"))
    _record_args(s)
    s.add_argument("--seeds", type=_positive_int("--seeds"), default=1, help="seeds per variant (seed, seed+1, …)")
    s.add_argument("--out", default=None, help="comparison folder (default data/runs/compare-MODEL-ATTN)")
    s.add_argument("--table-only", action="store_true",
                   help="no training: the results table of the runs already under --out/runs (every seed found; "
                        "e.g. a campaign's runs from several unpacked archives)")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("bench", help="speed measurements")
    bsub = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = bsub.add_parser("train", help="training images/s on this device (real data, augmentation included)")
    add_config_args(b, exclude=("epochs",))
    b.add_argument("--steps", type=_positive_int("--steps"), default=30,
                   help="timed training steps (with --compare, a third of them for ResNet-164)")
    b.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    b.add_argument("--device", default="auto")
    g = b.add_argument_group("compare training paths, each measurement in a fresh process, interleaved")
    g.add_argument("--compare", action="store_true",
                   help="eager fp32 against the fast path (and --paths) per model (attention: --attn, default se)")
    g.add_argument("--models", default="cifar_resnet20,cifar_resnet164", help="comma-separated models")
    g.add_argument("--paths", default="eager,fast",
                   help="comma-separated CONFIG[+VARIANT...][@N]: CONFIG eager, channels_last, compile, bf16, fast (the "
                        "device's fast path); VARIANT jemalloc, tcmalloc (preloaded allocator), close, spread "
                        "(OpenMP binding); @N: N one-thread processes side by side, images/s summed")
    g.add_argument("--repeats", type=_positive_int("--repeats"), default=3, help="interleaved repeats")
    g.add_argument("--threads", type=int, default=0,
                   help="torch threads of a one-process measurement (0: leave as is)")
    g.add_argument("--side-by-side", type=_positive_int("--side-by-side"), default=1, metavar="N",
                   help="also measure every path as N one-thread processes started at once (PATH@N)")
    g.add_argument("--reference", default="eager", metavar="PATH",
                   help="the path every ratio is to, measured first in each repeat (default eager)")
    g.add_argument("--out", default=None, help="also write the table as CSV to this file")
    b.add_argument("--optimizer", action="store_true",
                   help="instead: milliseconds per SGD update of --model's parameters by stripe's SGD, torch's "
                        "foreach and fused SGD and stripe's update compiled (--threads, --repeats)")
    b = bsub.add_parser("collect", help="recording throughput / plain eval throughput; sweep memory")
    b.add_argument("--model", default="cifar_resnet20")
    b.add_argument("--attn", default="se")
    b.add_argument("--asr", action="store_true")
    b.add_argument("--dataset", default="cifar10")
    b.add_argument("--data-root", default=None)
    b.add_argument("--images", type=_positive_int("--images"), default=1000)
    b.add_argument("--batch-size", type=_positive_int("--batch-size"), default=500)
    b.add_argument("--repeats", type=_positive_int("--repeats"), default=5)
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--device", default="auto")
    b.add_argument("--memory", type=lambda t: [int(v) for v in t.split(",")], default=None,
                   help="also measure peak memory of sweeps over these checkpoint counts, e.g. 5,50")
    b = bsub.add_parser("speed", help="the paper's speed table: baseline, each attention, its folded ASR; or "
                                      "(--model timm:NAME …) any model unfolded, with constant gates, and folded")
    b.add_argument("--model", default="cifar_resnet164", help="cifar_resnet{depth} or a source (timm:NAME …)")
    b.add_argument("--attn", nargs="+", default=None, help="modules (default: all)")
    b.add_argument("--batch", nargs="+", type=_positive_int("--batch"), default=[1, 128])
    b.add_argument("--num-classes", type=_positive_int("--num-classes"), default=None,
                   help="classes (default 100; a source model's own by default)")
    b.add_argument("--image-size", type=_positive_int("--image-size"), default=None,
                   help="source model: input side (default: its own crop size, else 224)")
    b.add_argument("--weights", default=None, help="source model: weights file")
    b.add_argument("--repeats", type=_positive_int("--repeats"), default=5)
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--channels-last", action="store_true")
    b.add_argument("--device", default="auto")
    b.add_argument("--out", default="data/speed")
    b.add_argument("--no-progress", action="store_true")
    b = bsub.add_parser("gates", help="gates of torchvision/timm models: found, fold target, fold check, recording "
                                      "overhead (random weights, CPU)")
    b.add_argument("--models", nargs="+", default=None, help="sources (default: the table's 11 gated and 3 "
                                                             "gate-free models)")
    b.add_argument("--extra", action="store_true", help="also NF-nets, ResNeSt/SKNet (unsupported) and LRASPP")
    b.add_argument("--batch-size", type=_positive_int("--batch-size"), default=16)
    b.add_argument("--repeats", type=_positive_int("--repeats"), default=5, help="interleaved timing pairs")
    b.add_argument("--passes", type=_positive_int("--passes"), default=4, help="forwards per timing")
    b.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    b.add_argument("--no-overhead", action="store_true", help="skip the timings")
    b.add_argument("--effnet", action="store_true", help="also efficientnet_b0's overhead at batch 32, 224x224")
    b.add_argument("--ocr", action="store_true", help="also the PP-OCR classifier study (real weights, real images)")
    b.add_argument("--out", default=None, help="write every number as JSON to this file")
    b.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("collect", help="record every attention tap over the probe set at each checkpoint")
    s.add_argument("run_dir", nargs="?", default=None, help="a training run (or use --files, or --model)")
    s.add_argument("--checkpoints", default="all", help="which checkpoints of a run: all (default), last, every:K, or "
                   "epochs N,M")
    s.add_argument("--files", nargs="+", default=None,
                   help="checkpoint files of any format (this package's, a state dict, the official ASR code's): the "
                        "model is read from them (or --model-config, or --model NAME)")
    s.add_argument("--model-config", default=None,
                   help="JSON file with the model config of --files, when the files do not say it")
    s.add_argument("--model", default=None, help="the model of --weights (or --files): torchvision:NAME, timm:NAME, "
                                                 "onnx:PATH, package.module:factory")
    s.add_argument("--num-classes", type=_positive_int("--num-classes"), default=None,
                   help="classes of --model (default: its own)")
    _source_args(s)
    s.add_argument("--dataset", default=None, help="data set of the probe images: cifar10, cifar100, fashion-mnist, "
                   "imagefolder (default: the run's; an official file's from its classes)")
    s.add_argument("--data-root", default=None, help="folder the data set is read from (default: searched)")
    s.add_argument("--probe", "--probe-n", default="run", dest="probe",
                   help="run (the run's probe set), train or test (a whole split), or a number of images of "
                        "--probe-split (default: the run's; 1000 for files from elsewhere)")
    s.add_argument("--probe-split", default="train", choices=["train", "test"],
                   help="the split a number of probe images is drawn from (default train)")
    s.add_argument("--probe-seed", type=int, default=0, help="seed of the class-stratified probe sample (default 0)")
    _collect_record_args(s)
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="forward precision while recording (statistics are float64 either way)")
    s.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 …")
    s.add_argument("--out", default=None, help="recording directory (default RUN_DIR/recording)")
    s.add_argument("--overwrite", action="store_true",
                   help="record --files/--weights in place of the recording of other files in --out")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("stats", help="stripe statistics of a recording (tables + summary); several: across seeds")
    s.add_argument("recording", nargs="+", help="a recording folder; several (runs of one variant) aggregate")
    s.add_argument("--out", default=None, help="default RECORDING/tables")
    from .analysis.tables import SETTLE_EPS, STRIPE_THRESHOLD

    s.add_argument("--eps", type=float, default=SETTLE_EPS,
                   help="settling: distance of μ's channel pattern to the final one")
    s.add_argument("--threshold", type=float, default=STRIPE_THRESHOLD,
                   help="convergence: stripe index of the attention")

    s = sub.add_parser("ablate", help="replace attention by its probe-set mean (folded into BN); test accuracy")
    s.add_argument("run_dir", nargs="?", default=None, help="a training run, a checkpoint file (any format: this "
                   "package's, a state dict, the official ASR code's), a run folder of the official code, or none with "
                   "--model NAME --weights FILE")
    s.add_argument("--checkpoint", default="last", help="last (default) or an epoch")
    s.add_argument("--scope", default="all,stage", help="comma list of all, stage, tap (other models: no stages)")
    s.add_argument("--taps", nargs="+", default=["auto"], help="gates of a source model to replace (default auto)")
    s.add_argument("--model", default=None, help="without RUN_DIR: the model of --weights (timm:NAME …)")
    s.add_argument("--num-classes", type=_positive_int("--num-classes"), default=None)
    s.add_argument("--dataset", default=None, help="without RUN_DIR: the data set (probe from train, scored on test; "
                   "an official file's from its classes)")
    s.add_argument("--data-root", default=None, help="folder the data set is read from (default: searched)")
    s.add_argument("--probe-n", "--probe", type=_positive_int("--probe-n"), default=1000, dest="probe_n",
                   help="probe images, whose mean attention replaces it (default 1000)")
    s.add_argument("--test-subset", type=_positive_int("--test-subset"), default=None,
                   help="scored test images, a seeded class-stratified subset (default: all of the test split, e.g. "
                        "10,000 for CIFAR: minutes per scope for a large model on a CPU)")
    _source_args(s)
    s.add_argument("--save", default=None, help="save the fully folded plain model (scope all) to this file")
    s.add_argument("--out", default=None, help="default RUN_DIR/ablation")
    s.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 …")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("figures", help="execute notebooks/paper_figures headless: every figure and table")
    s.add_argument("source", help="a run, recording, comparison, or a folder holding them")
    s.add_argument("--out", default=None, help="default <data dir>/figures/<name of SOURCE>")
    s.add_argument("--timeout", type=_positive_int("--timeout"), default=1800, help="seconds per notebook cell")
    s.add_argument("--formats", default="png,pdf", help="figure file formats, comma-separated (png, pdf, svg)")

    s = sub.add_parser("demo", help="the main job: train 4 variants (recorded), stats, ablate, speed, figures")
    s.add_argument("--out", default=None, help="default <data dir>/demo")
    s.add_argument("--data-root", default=None, help="CIFAR-10 JPEG folder (default: search; else Fashion-MNIST)")
    s.add_argument("--tiny", action="store_true", help="a tiny run (about a minute): ResNet-8, 2 epochs on 2,000 images")
    s.add_argument("--epochs", type=_positive_int("--epochs"), default=None)
    s.add_argument("--train-subset", type=_positive_int("--train-subset"), default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="each trained run logs its metrics and stripe statistics for TensorBoard into DIR/RUN")

    from .experiments.presets import PRESETS

    s = sub.add_parser("reproduce", help="a named experiment with a time budget: " + ", ".join(PRESETS),
                       description=_presets_text(PRESETS), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("preset", choices=list(PRESETS))
    s.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="the runs the preset trains log for TensorBoard into DIR/RUN (presets that train through "
                        "the shared training step: demo-cpu, cifar10-resnet20-cpu, gpu-quick, paper-cifar10)")
    s.add_argument("--out", default=None, help="default <data dir>/reproduce/PRESET")
    s.add_argument("--data-root", default=None, help="CIFAR-10 JPEG folder (default: search)")
    s.add_argument("--budget", type=float, default=None, help="seconds for the whole preset (default: the preset's)")
    s.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: rehearse the preset end to end")
    s.add_argument("--archive-mib", type=float, default=None,
                   help="keep results.tar.gz under this size: the biggest recordings travel thinned, with the "
                        "tables of every epoch but the statistics of the last one (default: no limit)")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="the seeds every training stage runs: a count N (seeds 0 … N-1) or a list ('0,2,5', '1-3', "
                        "'4,'); default seed 0. Finished (run, seed) pairs are kept and skipped")
    g = s.add_argument_group("the attention zoo (zoo-cifar10-cpu only)")
    g.add_argument("--jobs", type=_positive_int("--jobs"), default=None,
                   help="runs trained side by side, the cores split between them (default 2)")
    g.add_argument("--only", default=None,
                   help="comma-separated groups (zoo: the 17 runs of every module; paper: baseline, +SE, +ASR(SE), "
                        "+ASR(SE)+SE; bias: +CBAM, +ASR(CBAM) with --mlp-bias; long: baseline, +SE, +ASR(SE) on 40 "
                        "epochs), runs by slug or label (e.g. plus_se,baseline); default: every run")
    g = s.add_argument_group("a campaign over several GPU slots (gpu-quick only)")
    g.add_argument("--stages", default=None, help="comma-separated stages to run (default all: train-speed, learns, "
                                                  "collect-speed, speed, science)")
    g.add_argument("--variant", default=None, help="the science run's variant: baseline, +SE (default), +ASR(SE), "
                                                   "+ASR(SE)+SE")
    g.add_argument("--seed", type=int, default=None, help="the science run's seed (default 0)")
    g.add_argument("--epochs", type=_positive_int("--epochs"), default=None,
                   help="the science run's epochs (default: as many as the measured speed fits; a campaign fixes "
                        "it so that every run has the same schedule)")
    _fill_help(p)
    return p


def _given_options(argv: Sequence[str] | None, command: str) -> set[str]:
    """The destinations of the options of ``command`` given on the command line (not left at their defaults)."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for a in sub._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv))) - {"command"}


#: help for the options that several commands share, where a command's parser gives none
COMMON_HELP = {
    "device": "auto (GPU if present), cpu, cuda, cuda:1 …", "no_progress": "no progress bars",
    "dataset": "data set: cifar10, cifar100, fashion-mnist, imagefolder", "data_root": "folder the data set is read "
    "from (default: searched)", "precision": "forward precision (statistics are float64 either way)",
    "num_classes": "classes of the model", "block": "block type (default: basic for 6n+2 depths, bottleneck for 9n+2)",
    "repeats": "timing repeats, interleaved", "batch_size": "images per batch", "batch": "batch sizes to time",
    "channels_last": "channels_last memory format", "out": "output folder", "model": "the model (cifar_resnetN)",
    "attn": "attention module", "asr": "the ASR variant", "images": "real images timed",
    "epochs": "training epochs (default: the demo's)", "train_subset": "training images (default: the demo's)",
}


def _fill_help(parser: argparse.ArgumentParser) -> None:
    """Give every option without help the shared text of its destination (:data:`COMMON_HELP`)."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                _fill_help(sub)
        elif a.option_strings and not a.help and a.dest in COMMON_HELP:
            a.help = COMMON_HELP[a.dest]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stripe`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) is not None and args.command == "train":
        args.given = _given_options(argv, "train")  # what --config's recipe gives way to
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("stripe: interrupted; everything already written is kept", file=sys.stderr)
        return 130
    except (StripeError, OSError) as e:
        if not isinstance(e, StripeError) and e.errno not in _USER_ERRNOS:
            raise  # a bug: keep the traceback (exit 1) so it can be reported
        message = " ".join(str(e).split())  # one line
        print(f"stripe {args.command}: error: {message}", file=sys.stderr)
        return 2


#: operating-system errors that are the user's files or disk, not a bug: missing, denied, full, read-only, …
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


if __name__ == "__main__":
    sys.exit(main())
