"""``stripe models``: the models and attention modules with their parameter counts."""
from __future__ import annotations

import argparse

from .common import command, positive_int


def models_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe models`` and its options."""
    from ..nn import BLOCKS

    s = sub.add_parser("models", help="list models and attention modules with parameter counts")
    s.add_argument("--model", default=None, help="one model name (default: the common depths)")
    s.add_argument("--block", default=None, choices=list(BLOCKS), help="override the block type")
    s.add_argument("--num-classes", type=positive_int("--num-classes"), default=100)


@command("models", models_parser)
def cmd_models(args: argparse.Namespace) -> int:
    """Print the parameter table of the models and the attention modules that take ``--mlp-bias``."""
    from ..experiments.fold_report import text_table
    from ..nn import get_spec, list_attn, list_models, param_table

    rows = param_table(list_models() if args.model is None else [args.model], num_classes=args.num_classes,
                       block=args.block)
    print(f"Parameters with {args.num_classes} classes (attention modules: {', '.join(list_attn())}); "
          "block: basic for 6n+2 depths, bottleneck for 164 and 1001 (override with --block):")
    print(text_table(rows))
    biased = [n for n in list_attn() if "bias" in get_spec(n).options()]
    print(f"--mlp-bias ({', '.join(biased)}): biases in the attention's MLP, as in the original CBAM code (default: "
          "none, as timm's); under ASR a hidden unit dead for the constant ψ then stays trainable, where without "
          "biases a tap whose units all die outputs 0.5 for good")
    return 0
