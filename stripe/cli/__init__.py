"""The ``stripe`` command: parsing and dispatch only. ``main(argv)`` is callable from tests.

One module per command (or per small group of commands) holds the command's parser beside its handler; each
handler turns its options into one call of the library and prints what it returned (report text is rendered by the
library); the work itself lives in the subpackages. :mod:`.common` holds the registry of commands and the options
several commands share. Errors the user can fix (:class:`~stripe.errors.StripeError`, and the operating system's
missing / denied / disk-full errors) are one line on stderr, exit 2; anything else is a bug and keeps its traceback
(exit 1).
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Sequence

from ..errors import StripeError
# each module registers its commands on import, in the order ``stripe --help`` lists them
from . import models, fold, train, bench, collect, ablate, figures, reproduce  # noqa: F401,I001
from .common import COMMANDS, PARSERS, fill_help

__all__ = ["COMMANDS", "build_parser", "main"]

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
    """The argument parser of every command (each declared by its own module)."""
    from .. import __version__

    p = argparse.ArgumentParser(prog="stripe", description="Measure the Stripe Observation; train with ASR and fold it.",
                                epilog=FIRST_STEPS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"stripe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for declare in PARSERS.values():
        declare(sub)
    fill_help(p)
    return p


def given_options(argv: Sequence[str] | None, command: str) -> set[str]:
    """The destinations of the options of ``command`` given on the command line (not left at their defaults)."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for a in sub._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv))) - {"command"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stripe`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) is not None and args.command == "train":
        args.given = given_options(argv, "train")  # what --config's recipe gives way to
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("stripe: interrupted; everything already written is kept", file=sys.stderr)
        return 130
    except (StripeError, OSError) as e:
        if not isinstance(e, StripeError) and e.errno not in USER_ERRNOS:
            raise  # a bug: keep the traceback (exit 1) so it can be reported
        message = " ".join(str(e).split())  # one line
        print(f"stripe {args.command}: error: {message}", file=sys.stderr)
        return 2


#: operating-system errors that are the user's files or disk, not a bug: missing, denied, full, read-only, …
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
               errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}
