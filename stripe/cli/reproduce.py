"""``stripe demo`` (the main job) and ``stripe reproduce`` (a named experiment with a time budget)."""
from __future__ import annotations

import argparse

from ..errors import UserError
from .common import command, positive_int, shared_options, tensorboard_option


def demo_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe demo`` and its options."""
    s = sub.add_parser("demo", help="the main job: train 4 variants (recorded), stats, ablate, speed, figures")
    s.add_argument("--out", default=None, help="default <data dir>/demo")
    s.add_argument("--data-root", default=None, help="CIFAR-10 JPEG folder (default: search; else Fashion-MNIST)")
    s.add_argument("--tiny", action="store_true", help="a tiny run (about a minute): ResNet-8, 2 epochs on 2,000 images")
    s.add_argument("--epochs", type=positive_int("--epochs"), default=None)
    s.add_argument("--train-subset", type=positive_int("--train-subset"), default=None)
    shared_options(s, device=True, progress=True)
    tensorboard_option(s, "each trained run logs its metrics and stripe statistics for TensorBoard into DIR/RUN")


@command("demo", demo_parser)
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (:func:`stripe.experiments.demo.run_demo`), the tiny one with ``--tiny``."""
    from dataclasses import replace

    from ..experiments.context import tensorboard_into
    from ..experiments.demo import TINY, DemoConfig, run_demo

    cfg = TINY if args.tiny else DemoConfig()
    over = {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.train_subset)) if v is not None}
    with tensorboard_into(args.tensorboard):
        run_demo(args.out, cfg=replace(cfg, **over), data_root=args.data_root, device=args.device,
                 progress=not args.no_progress)
    return 0


def reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe reproduce`` (its description: what each preset runs) and its options."""
    from ..experiments.presets import PRESETS, presets_text

    s = sub.add_parser("reproduce", help="a named experiment with a time budget: " + ", ".join(PRESETS),
                       description=presets_text(PRESETS), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("preset", choices=list(PRESETS))
    tensorboard_option(s, "the runs the preset trains log for TensorBoard into DIR/RUN (zoo-cifar10-cpu: "
                          "DIR/RUN_seedN, from its worker processes)")
    s.add_argument("--out", default=None, help="default <data dir>/reproduce/PRESET")
    s.add_argument("--data-root", default=None, help="CIFAR-10 JPEG folder (default: search)")
    s.add_argument("--budget", type=float, default=None, help="seconds for the whole preset (default: the preset's)")
    s.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: rehearse the preset end to end")
    s.add_argument("--archive-mib", type=float, default=None,
                   help="keep results.tar.gz under this size: the biggest recordings travel thinned, with the "
                        "tables of every epoch but the statistics of the last one (default: no limit)")
    shared_options(s, device=True, progress=True)
    s.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="the seeds every training stage runs: a count N (seeds 0 … N-1) or a list ('0,2,5', '1-3', "
                        "'4,'); default seed 0. Finished (run, seed) pairs are kept and skipped")
    g = s.add_argument_group("the attention zoo (zoo-cifar10-cpu only)")
    g.add_argument("--jobs", type=positive_int("--jobs"), default=None,
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
    g.add_argument("--epochs", type=positive_int("--epochs"), default=None,
                   help="the science run's epochs (default: as many as the measured speed fits; a campaign fixes "
                        "it so that every run has the same schedule)")


@command("reproduce", reproduce_parser)
def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the preset (:func:`stripe.experiments.presets.run_preset`); its exit status is the command's."""
    from ..experiments.context import tensorboard_into
    from ..experiments.gpu import GPU_STAGES, Campaign
    from ..experiments.presets import run_preset

    campaign = None
    if args.seed is not None and args.seeds is not None:
        raise UserError("--seed and --seeds: give one (--seed N is the same as --seeds N,)")
    if args.stages or args.variant or args.seed is not None or args.epochs is not None:
        campaign = Campaign(stages=tuple(x.strip() for x in args.stages.split(",")) if args.stages else GPU_STAGES,
                            variant=args.variant or "+SE", seed=args.seed or 0, epochs=args.epochs)
    with tensorboard_into(args.tensorboard):
        return run_preset(args.preset, out=args.out, data_root=args.data_root, budget=args.budget,
                          dry_run=args.dry_run, jobs=args.jobs,
                          only=args.only.split(",") if args.only is not None else None, device=args.device,
                          progress=not args.no_progress, campaign=campaign, archive_mib=args.archive_mib,
                          seeds=args.seeds)
