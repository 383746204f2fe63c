"""The recording configuration: what every tap records, the same for ``stripe collect`` and ``train --record``.

One frozen dataclass (:class:`RecordConfig`), checked up front; its command-line options are derived from
its fields (:func:`add_record_args`, with a ``--record-`` prefix on ``train``), so a new option is added
here and nowhere else.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import UserError


def _taps(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Selectors from comma-separated text (or several such texts)."""
    parts = [text] if isinstance(text, str) else list(text)
    return tuple(t.strip() for p in parts for t in str(p).split(",") if t.strip())


@dataclass(frozen=True)
class RecordConfig:
    """Which gates a recording holds and how much of each: taps, raw vectors kept, folds, forward batch."""

    taps: tuple[str, ...] = field(default=("*",), metadata={
        "help": "taps to record, comma-separated selectors: * (all), globs on module paths or keys, an attention "
                "(se), stage:N, asr, attention, auto (also the generic gate detector)", "parse": _taps})
    raw_n: int = field(default=256, metadata={"help": "raw fp16 vectors kept per tap (for heat maps)"})
    folds: int = field(default=10, metadata={
        "help": "disjoint probe folds whose moments are kept apart, for the intervals"})
    batch_size: int = field(default=500, metadata={"help": "images per recording forward"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "taps", _taps(self.taps))
        if not self.taps:
            raise UserError("--taps: give at least one selector")
        if self.raw_n < 0:
            raise UserError(f"--raw-n must be >= 0, got {self.raw_n}")
        if self.folds < 1:
            raise UserError(f"--folds must be >= 1, got {self.folds}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")

    def fit_probe(self, n_probe: int, *, prefix: str = "") -> "RecordConfig":
        """This config for a probe set of ``n_probe`` images: no more raw vectors kept than there are images, and
        more folds than images refused (named by the option the user typed: ``--{prefix}folds``), the same for
        ``stripe collect`` and ``train --record``."""
        if self.folds > n_probe:
            raise UserError(f"--{prefix}folds {self.folds} exceeds the {n_probe} probe images")
        return replace(self, raw_n=min(self.raw_n, n_probe))

    @property
    def selectors(self) -> str | list[str]:
        """The taps as the Recorder takes them (one selector as a string)."""
        return self.taps[0] if len(self.taps) == 1 else list(self.taps)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"taps": list(self.taps), "raw_n": self.raw_n, "folds": self.folds, "batch_size": self.batch_size}


def add_record_args(parser: argparse.ArgumentParser, *, prefix: str = "", title: str | None = None) -> None:
    """One option per :class:`RecordConfig` field (``--{prefix}{field}``), defaults from the dataclass."""
    group = parser.add_argument_group(title) if title else parser
    for f in fields(RecordConfig):
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        default = f.default if not isinstance(f.default, tuple) else ",".join(f.default)
        several = isinstance(f.default, tuple)  # taps: one or more selectors, each may hold commas
        group.add_argument(flag, dest=f"record.{f.name}", default=default, nargs="+" if several else None,
                           metavar=flag.lstrip("-").upper().replace("-", "_"), type=str if several else type(f.default),
                           help=f"{f.metadata['help']} (default {default})")


def record_config_from_args(args: argparse.Namespace, *, prefix: str = "") -> RecordConfig:
    """The :class:`RecordConfig` of options added by :func:`add_record_args` (with the same ``prefix``: a refused
    value is named by the option the user typed, e.g. ``--record-folds`` on ``train``)."""
    try:
        return RecordConfig(**{k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("record.")})
    except UserError as e:
        text = str(e)
        for f in fields(RecordConfig):
            flag = f"--{f.name.replace('_', '-')}"
            if text.startswith(flag + " ") or text.startswith(flag + ":"):
                text = f"--{prefix}{text[2:]}"
                break
        raise UserError(text) from None
