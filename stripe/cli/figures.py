"""``stripe figures``: the paper-figures notebook executed headless over a run, recording or comparison."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import command, positive_int


def figures_parser(sub: argparse._SubParsersAction) -> None:
    """Declare ``stripe figures`` and its options."""
    from ..viz.save import FORMATS

    s = sub.add_parser("figures", help="execute notebooks/paper_figures headless: every figure and table")
    s.add_argument("source", help="a run, recording, comparison, or a folder holding them")
    s.add_argument("--out", default=None, help="default <data dir>/figures/<name of SOURCE>")
    s.add_argument("--timeout", type=positive_int("--timeout"), default=1800, help="seconds per notebook cell")
    s.add_argument("--formats", default=",".join(FORMATS), help="figure file formats, comma-separated (png, pdf, svg)")


@command("figures", figures_parser)
def cmd_figures(args: argparse.Namespace) -> int:
    """Say what the source holds, draw every figure of it and list the files written."""
    from ..viz.notebooks import default_figures_out, discover, render_figures

    src = discover(args.source)  # fails early, with a clear message, when there is nothing to plot
    out = Path(args.out) if args.out else default_figures_out(Path(args.source))
    print(src.describe())
    formats = tuple(f for f in args.formats.split(",") if f)
    files = render_figures(Path(args.source), out, timeout=args.timeout, formats=formats)
    print(f"{len(files)} files in {out}:")
    for p in files:
        print(f"  {p.relative_to(out)}")
    return 0
