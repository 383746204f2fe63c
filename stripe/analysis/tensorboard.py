"""TensorBoard logs of training (``stripe train --tensorboard DIR``, ``stripe reproduce … --tensorboard DIR``).

:class:`TensorBoardLogger` is a training callback: per epoch it writes the metrics row (``loss/train``,
``loss/test``, ``accuracy/train``, ``accuracy/test``, ``lr``, ``images_per_s``) and, when the run is recorded
(``--record``: the :class:`~stripe.record.OnlineRecorder` runs before it), at each recorded checkpoint the stage
table's means (:func:`stripe.analysis.tables.stage_summary`: ``stripe/S_after/stage1``, ``stripe/S_before/…``,
``stripe/std_after/…``, ``stripe/std_before/…``, non-ASR taps; ASR taps under ``…/stage1_asr``) and the
per-channel std across probe images of each tap as a histogram (``channel_std_after/<tap>``). The step is the
epoch (0: the initialisation). Needs the ``tensorboard`` package (``make install`` installs it).
"""
from __future__ import annotations

import math

import pandas as pd
from pathlib import Path
from typing import Any

from ..errors import UserError

#: the metrics-row columns written, and their TensorBoard tags
METRIC_TAGS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
               "test_acc": "accuracy/test", "lr": "lr", "images_per_s": "images_per_s"}
#: the stage-table columns written (means over a stage's taps), and their tags
STAGE_TAGS = {"stripe_after": "stripe/S_after", "stripe_before": "stripe/S_before", "std_after": "stripe/std_after",
              "std_before": "stripe/std_before"}


def summary_writer_class() -> Any:
    """torch's ``SummaryWriter``; a one-line error naming the package when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed (pip install "
                        "tensorboard; `make install` installs it)") from None
    return SummaryWriter


class TensorBoardLogger:
    """A training callback writing each epoch's metrics and, when the run is recorded, each recorded checkpoint's
    stage means of S and std and per-tap histograms of the per-channel std, into ``log_dir``."""

    def __init__(self, log_dir: str | Path, *, recording: str | Path | None = None) -> None:
        """``recording``: the recording to read (default ``RUN/recording`` when there is one)."""
        self.log_dir = Path(log_dir)
        self.recording = recording
        self._writer_class = summary_writer_class()  # fails before the run starts when the package is missing
        self._writer: Any = None
        self.logged: set[int] = set()

    @property
    def writer(self) -> Any:
        """The event writer, made on first use (nothing is written before training writes its first row)."""
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir))
        return self._writer

    def _metrics(self, state: Any) -> None:
        row = state.row or {}
        epoch = int(row.get("epoch", state.epoch))
        if epoch in self.logged:
            return
        for col, tag in METRIC_TAGS.items():
            v = row.get(col)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(tag, float(v), epoch)
        self.logged.add(epoch)

    def _recorded(self, state: Any) -> None:
        from ..record import Recording
        from .tables import stage_summary

        path = Path(self.recording) if self.recording else state.run_dir / "recording"
        if not (path / "manifest.json").is_file():
            return
        rec = Recording.open(path)
        if state.epoch not in rec.epochs:
            return
        stages = stage_summary(rec)
        for _, r in stages[stages["epoch"] == state.epoch].iterrows():
            where = "all" if pd.isna(r["stage"]) else f"stage{int(r['stage'])}"
            where += "_asr" if bool(r["asr"]) else ""
            for col, tag in STAGE_TAGS.items():
                v = r.get(col)
                if v is not None and math.isfinite(float(v)):
                    self.writer.add_scalar(f"{tag}/{where}", float(v), state.epoch)
        for (tap, kind), st in rec.stats(state.epoch)[state.epoch].items():
            if kind == "after" and st.count_ > 0:
                self.writer.add_histogram(f"channel_std_after/{tap}", st.std_, state.epoch)

    def on_checkpoint(self, state: Any) -> None:
        """The epoch's metrics (epoch 0 included) and, when recorded, its stripe statistics."""
        self._metrics(state)
        self._recorded(state)
        self.writer.flush()

    def on_epoch_end(self, state: Any) -> None:
        """The metrics of an epoch without a checkpoint."""
        self._metrics(state)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file (called when training ends, however it ends)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
