"""``stripe collect`` (a recording of every tap over the probe set at each checkpoint) and ``stripe stats`` (its
stripe tables)."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .common import command, inform, positive_int, precision_option, preprocess_of, shared_options, source_options


def collect_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe collect`` and its options (what it records from :class:`stripe.record.RecordConfig`)."""
    from ..data import PROBE_SPLITS
    from ..record import add_record_args

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
    s.add_argument("--num-classes", type=positive_int("--num-classes"), default=None,
                   help="classes of --model (default: its own)")
    source_options(s)
    s.add_argument("--dataset", default=None, help="data set of the probe images: cifar10, cifar100, fashion-mnist, "
                   "imagefolder (default: the run's; an official file's from its classes)")
    s.add_argument("--data-root", default=None, help="folder the data set is read from (default: searched)")
    s.add_argument("--probe", "--probe-n", default="run", dest="probe",
                   help="run (the run's probe set), train or test (a whole split), or a number of images of "
                        "--probe-split (default: the run's; 1000 for files from elsewhere)")
    s.add_argument("--probe-split", default="train", choices=list(PROBE_SPLITS),
                   help="the split a number of probe images is drawn from (default train)")
    s.add_argument("--probe-seed", type=int, default=0, help="seed of the class-stratified probe sample (default 0)")
    add_record_args(s, title="what the recording records")
    precision_option(s, "forward precision while recording (statistics are float64 either way)")
    shared_options(s, out="recording directory (default RUN_DIR/recording)", device=True)
    s.add_argument("--overwrite", action="store_true",
                   help="record --files/--weights in place of the recording of other files in --out")
    shared_options(s, progress=True)


@command("collect", collect_parser)
def cmd_collect(args: argparse.Namespace) -> int:
    """Record (:func:`stripe.record.collect`) and say what was recorded, skipped and failed; exit 1 on a failure."""
    from ..device import dist_from_env
    from ..record import collect, record_config_from_args

    if args.run_dir is None and not args.files and not args.model:
        raise UserError("give a RUN_DIR (or a run folder of the official ASR code), checkpoint files with --files, or "
                        "--model NAME --weights FILE --dataset")
    r = collect(args.run_dir, record_config_from_args(args), checkpoints=args.files or args.checkpoints,
                model_config=args.model_config, dataset=args.dataset, data_root=args.data_root, out=args.out,
                probe=args.probe, probe_split=args.probe_split, probe_seed=args.probe_seed, device=args.device,
                precision=args.precision,
                progress=not args.no_progress, model=args.model, weights=args.weights, num_classes=args.num_classes,
                preprocess=preprocess_of(args), overwrite=args.overwrite, inform=inform)
    if dist_from_env().rank == 0:
        again = (" (" + "; ".join(f"epoch {e} re-recorded: {why}" for e, why in r.rerecorded) + ")") \
            if r.rerecorded else ""
        print(f"recording: {r.out}  recorded {len(r.recorded)} checkpoint(s){again}, skipped {len(r.skipped)} "
              f"already done, {len(r.failed)} failed ({r.images / max(r.seconds, 1e-9):.0f} images/s overall, "
              f"{r.seconds:.1f} s)")
        for _, why in r.failed:
            print(f"FAILED: {why}", file=sys.stderr)
    return 1 if r.failed else 0


def stats_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe stats`` and its options (the thresholds' defaults from :mod:`stripe.analysis.tables`)."""
    from ..analysis.tables import SETTLE_EPS, STRIPE_THRESHOLD

    s = sub.add_parser("stats", help="stripe statistics of a recording (tables + summary); several: across seeds")
    s.add_argument("recording", nargs="+", help="a recording folder; several (runs of one variant) aggregate")
    s.add_argument("--out", default=None, help="default RECORDING/tables")
    s.add_argument("--eps", type=float, default=SETTLE_EPS,
                   help="settling: distance of μ's channel pattern to the final one")
    s.add_argument("--threshold", type=float, default=STRIPE_THRESHOLD,
                   help="convergence: stripe index of the attention")


@command("stats", stats_parser)
def cmd_stats(args: argparse.Namespace) -> int:
    """Write the stripe tables (:func:`stripe.analysis.stats`) and print the summary, or the table over seeds."""
    from ..analysis import stats, summary_text

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
