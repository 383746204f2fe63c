"""``stripe train`` (one model, optionally recorded while it trains) and ``stripe compare`` (the four variants)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from .common import command, positive_int, shared_options, tensorboard_option


def record_options(s: argparse.ArgumentParser) -> None:
    """``--record`` and what it records (``--record-taps`` … from :class:`stripe.record.RecordConfig`)."""
    from ..record import add_record_args

    g = s.add_argument_group("recording during training")
    g.add_argument("--record", action="store_true",
                   help="record every attention tap over the probe set at each checkpoint, into RUN/recording "
                        "(the same recording as `stripe collect RUN`)")
    add_record_args(s, prefix="record-", title="what --record records")


def train_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe train`` and its options (the training config's from :func:`stripe.train.add_config_args`)."""
    from ..train import add_config_args

    s = sub.add_parser("train", help="train one model on real data with checkpoints (and recording with --record)")
    add_config_args(s)
    s.add_argument("--num-classes", dest="model.num_classes", type=positive_int("--num-classes"), default=None,
                   metavar="NUM_CLASSES", help="a source model (--model torchvision:NAME, timm:NAME …): classes, "
                   "which must be the data set's (default: the data set's)")
    record_options(s)
    s.add_argument("--out", default=None, help="run directory (default data/runs/MODEL-BLOCK-VARIANT-seedN)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the old one is deleted once the new one has its first checkpoint)")
    s.add_argument("--download", action="store_true", help="download CIFAR/Fashion-MNIST when not found (online)")
    shared_options(s, device=True, progress=True)
    s.add_argument("--config", default=None, metavar="FILE",
                   help="rerun a run's recipe: RUN/config.json (or a JSON training config); the options given on the "
                        "command line replace its values (e.g. --seed 1 --out RUN2)")
    tensorboard_option(s, "log loss, accuracy and lr per epoch (and with --record the stages' S and per-channel std "
                          "at each recorded checkpoint) for TensorBoard into DIR")


@command("train", train_parser)
def cmd_train(args: argparse.Namespace) -> int:
    """Train (with ``--record``, recording each checkpoint) and say where the run is and how it did."""
    from ..device import dist_from_env
    from ..record import record_config_from_args, train_with_recording
    from ..train import default_run_dir, list_checkpoints, train

    cfg = train_config_of(args)
    out = Path(args.out) if args.out else default_run_dir(cfg)
    finished = args.resume and any(e >= cfg.epochs for e, _ in list_checkpoints(out))
    options = dict(resume=args.resume, overwrite=args.overwrite, device=args.device, progress=not args.no_progress,
                   download=args.download, callbacks=train_callbacks(args, out))
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
        test = f" from {data['test_source']}" if data.get("test_source") else ""
        print(f"data: {data.get('dataset')}, {data.get('train_n', '?')} training images from {data['source']}, "
              f"{data.get('test_n', '?')} test images{test}")
    print(f"run: {out}  {status}: epoch {last['epoch']}/{cfg.epochs}, final test top-1 {last['test_acc']:.2f}% "
          f"(deployed model), best {best}" + (f"; recording: {out / 'recording'}" if args.record else ""))
    if args.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {args.tensorboard}")
    return 0


def train_config_of(args: argparse.Namespace):
    """The training config of ``stripe train``: the options, or ``--config``'s recipe with the given options on top."""
    from ..train import config_from_args, recipe_of

    if args.config:
        return config_from_args(args, base=recipe_of(args.config), given=args.given)
    return config_from_args(args)


def train_callbacks(args: argparse.Namespace, out: Path) -> list:
    """``stripe train``'s extra callbacks: the TensorBoard log (after the recorder, which it reads)."""
    if not args.tensorboard:
        return []
    from ..analysis.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(args.tensorboard, recording=out / "recording" if args.record else None)]


def compare_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe compare`` and its options."""
    from ..train import add_config_args

    s = sub.add_parser("compare", help="train baseline, +att, +ASR(att), +ASR(att)+att over seeds; results table")
    add_config_args(s, model_exclude=("asr", "both"))
    record_options(s)
    s.add_argument("--seeds", type=positive_int("--seeds"), default=1, help="seeds per variant (seed, seed+1, …)")
    s.add_argument("--out", default=None, help="comparison folder (default data/runs/compare-MODEL-ATTN)")
    s.add_argument("--table-only", action="store_true",
                   help="no training: the results table of the runs already under --out/runs (every seed found; "
                        "e.g. a campaign's runs from several unpacked archives)")
    shared_options(s, device=True, progress=True)


@command("compare", compare_parser)
def cmd_compare(args: argparse.Namespace) -> int:
    """Train the four variants over seeds (or, ``--table-only``, tabulate the runs there) and print the table."""
    import time

    from ..experiments.compare import run_comparison
    from ..record import record_config_from_args
    from ..train import config_from_args

    base = config_from_args(args)
    if base.model.attn is None:
        raise UserError("compare needs --attn (the attention module of the +att, +ASR(att), +ASR(att)+att variants)")
    if args.table_only:
        return compare_table_only(args, base.model.attn)
    t0 = time.perf_counter()
    table = run_comparison(base, base.model.attn, list(range(base.seed, base.seed + args.seeds)), args.out,
                           device=args.device, progress=not args.no_progress,
                           record=record_config_from_args(args, prefix="record-") if args.record else None)
    out = Path(table.attrs["out"])
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv and results.md in {time.perf_counter() - t0:.0f} s ({len(table)} variants)")
    return 0


def compare_table_only(args: argparse.Namespace, attn: str) -> int:
    """``stripe compare --table-only``: the results table of the runs already under ``--out``, no training."""
    from ..experiments.compare import table_of_existing

    if not args.out:
        raise UserError("--table-only needs --out (the folder whose runs/ to compare)")
    skipped: list[tuple[str, str]] = []
    table = table_of_existing(args.out, attn, device=args.device, skipped=skipped)
    print((Path(args.out) / "results.md").read_text())
    for run, why in skipped:
        print(f"left out {run}: {why}", file=sys.stderr)
    print(f"wrote {args.out}/results.csv and results.md ({len(table)} variants, no training)")
    return 0
