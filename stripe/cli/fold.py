"""``stripe fold``: ASR models folded into plain BN and checked; the gates of any model; a checkpoint's fold."""
from __future__ import annotations

import argparse
import sys

from .common import command, positive_int, shared_options, source_options


def fold_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe fold`` and its options."""
    from ..nn import BLOCKS

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
    s.add_argument("--block", default=None, choices=list(BLOCKS))
    s.add_argument("--num-classes", type=positive_int("--num-classes"), default=None,
                   help="classes (default 100; a source model's own by default)")
    s.add_argument("--atol", type=float, default=None,
                   help="tolerance (default 1e-5; for a source model 1e-9 relative to the largest output)")
    s.add_argument("--image-size", type=positive_int("--image-size"), default=None,
                   help="source model: square input side (default: its own crop size, else 224)")
    s.add_argument("--input-shape", type=lambda t: tuple(int(v) for v in t.split(",")), default=None,
                   help="source model: input C,H,W (e.g. 3,48,192)")
    s.add_argument("--save", default=None, metavar="FILE",
                   help="with --checkpoint: write the checked fold (plain BN) as a stripe checkpoint to FILE")
    shared_options(s, progress=True)
    source_options(s, preprocess=False)


@command("fold", fold_parser)
def cmd_fold(args: argparse.Namespace) -> int:
    """Fold and check (:func:`stripe.experiments.fold_report.fold_report`); exit 1 when a check fails."""
    from ..experiments.fold_report import fold_report, fold_text

    r = fold_report(args.model, attn=args.attn, all_attns=args.all, both=args.both, checkpoint=args.checkpoint,
                    weights=args.weights, num_classes=args.num_classes, block=args.block, image_size=args.image_size,
                    input_shape=args.input_shape, atol=args.atol, progress=not args.no_progress, save=args.save)
    print(fold_text(r))
    if r.get("saved"):
        print(f"saved the folded plain model to {r['saved']}")
    if not r["ok"]:
        print(f"{r.get('failed', 1)} fold check(s) FAILED", file=sys.stderr)
    return 0 if r["ok"] else 1
