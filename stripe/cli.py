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
