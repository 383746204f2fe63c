"""``stripe ablate``: attention replaced by its probe-set mean (folded into BN), test accuracy per scope."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import command, inform, positive_int, preprocess_of, shared_options, source_options


def ablate_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe ablate`` and its options."""
    s = sub.add_parser("ablate", help="replace attention by its probe-set mean (folded into BN); test accuracy")
    s.add_argument("run_dir", nargs="?", default=None, help="a training run, a checkpoint file (any format: this "
                   "package's, a state dict, the official ASR code's), a run folder of the official code, or none with "
                   "--model NAME --weights FILE")
    s.add_argument("--checkpoint", default="last", help="last (default) or an epoch")
    s.add_argument("--scope", default="all,stage", help="comma list of all, stage, tap (other models: no stages)")
    s.add_argument("--taps", nargs="+", default=["auto"], help="gates of a source model to replace (default auto)")
    s.add_argument("--model", default=None, help="without RUN_DIR: the model of --weights (timm:NAME …)")
    s.add_argument("--num-classes", type=positive_int("--num-classes"), default=None)
    s.add_argument("--dataset", default=None, help="without RUN_DIR: the data set (probe from train, scored on test; "
                   "an official file's from its classes)")
    s.add_argument("--data-root", default=None, help="folder the data set is read from (default: searched)")
    s.add_argument("--probe-n", "--probe", type=positive_int("--probe-n"), default=1000, dest="probe_n",
                   help="probe images, whose mean attention replaces it (default 1000)")
    s.add_argument("--test-subset", type=positive_int("--test-subset"), default=None,
                   help="scored test images, a seeded class-stratified subset (default: all of the test split, e.g. "
                        "10,000 for CIFAR: minutes per scope for a large model on a CPU)")
    source_options(s)
    s.add_argument("--save", default=None, help="save the fully folded plain model (scope all) to this file")
    shared_options(s, out="default RUN_DIR/ablation", device=True, progress=True)


@command("ablate", ablate_parser)
def cmd_ablate(args: argparse.Namespace) -> int:
    """Ablate (:func:`stripe.analysis.ablate`) and print the table it wrote."""
    from ..analysis import ablate

    table = ablate(args.run_dir, model=args.model, weights=args.weights, dataset=args.dataset, out=args.out,
                   checkpoint=args.checkpoint, scopes=[s.strip() for s in args.scope.split(",") if s.strip()],
                   save=args.save, data_root=args.data_root, probe_n=args.probe_n, test_subset=args.test_subset,
                   num_classes=args.num_classes, taps=args.taps, preprocess=preprocess_of(args), device=args.device,
                   progress=not args.no_progress, inform=inform)
    out = Path(table.attrs["out"])
    print((out / "ablation.md").read_text().rstrip())
    print(f"wrote {out / 'ablation.csv'} and {out / 'ablation.md'}")
    if args.save:
        print(f"saved the folded plain model to {args.save}")
    return 0
