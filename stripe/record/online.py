"""Recording during training: a training callback (:class:`OnlineRecorder`) that writes the recording a later
``stripe collect RUN`` would write (the same header, probe order and tables), and ``train`` with it as one call."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..data import Loader
from ..errors import UserError
from ..train import TrainConfig, file_sha256, list_checkpoints, read_run, train
from .config import RecordConfig
from .format import RecordingWriter
from .sources import SweepSource, load_checkpoint_model
from .sweep import probe_loader, record_checkpoint, recording_header


class OnlineRecorder:
    """A training callback that records every selected tap over the run's probe set at each checkpoint epoch,
    into ``RUN/recording`` (the same recording a later ``stripe collect RUN`` writes, equal to it).

    At the start (or resume) of training it records any kept checkpoint not yet recorded, so a crash
    between saving a checkpoint and recording it loses nothing that is still on disk.
    """

    def __init__(self, record: RecordConfig | None = None, *, out: str | Path | None = None, **options: Any) -> None:
        """``record`` (or its fields as keyword arguments: ``taps``, ``raw_n``, ``folds``, ``batch_size``) says what
        each tap records; ``out`` defaults to ``RUN/recording``."""
        if record is not None and options:
            raise UserError(f"give the recording options in record= or as keywords, not both: {sorted(options)}")
        self.record = record or RecordConfig(**options)
        self.out = out
        self.writer: RecordingWriter | None = None
        self.seconds = 0.0
        self.loader: Loader | None = None

    def check(self, cfg: TrainConfig, data: Any, model: nn.Module) -> None:
        """Refuse, before anything is created, what would fail once training runs: more folds than probe images,
        taps that match nothing, a model without attention (nothing to record)."""
        from ..gates import find_gates, gates_of, select_gates

        self.record.fit_probe(len(data.probe), prefix="record-")
        if not find_gates(model) and "auto" not in self.record.taps:
            raise UserError(f"--record: {cfg.model.resolved().arch} without attention (a baseline) has no attention "
                            "taps to record; leave out --record")
        try:
            select_gates(model, *gates_of(model, self.record.selectors))
        except UserError as e:
            raise UserError(f"--record-taps: {e}") from None

    def on_train_start(self, state) -> None:
        """Open (lock) the recording and catch up on kept checkpoints not recorded yet."""
        cfg = state.cfg
        info = read_run(state.run_dir)
        source = SweepSource([], info["model"], cfg.dataset, cfg.data_root, state.run_dir, info)
        out = Path(self.out) if self.out else state.run_dir / "recording"
        probe = state.data.probe
        self.record = self.record.fit_probe(len(probe), prefix="record-")
        header = recording_header(source, state.data.eval.probe_spec.to_dict(), self.record, precision=cfg.precision,
                                  order=probe_loader(probe, 1, "cpu").order())
        self.writer = RecordingWriter(out, header).open()
        self.loader = probe_loader(probe, self.record.batch_size, state.device, channels_last=cfg.channels_last)
        for epoch, path in list_checkpoints(state.run_dir):
            sha = file_sha256(path)
            if not self.writer.is_done(epoch, sha):
                model, _ = load_checkpoint_model(path, info["model"])
                self._record(model.to(state.device), epoch, path, sha, cfg.precision, state.device)

    def on_checkpoint(self, state) -> None:
        """Record the model as it is at this checkpoint (the file was just written)."""
        if self.writer is None:
            self.on_train_start(state)
        self._record(state.model, state.epoch, state.checkpoint, file_sha256(state.checkpoint), state.cfg.precision,
                     state.device)

    def _record(self, model: nn.Module, epoch: int, path: Path, sha: str, precision: str, dev: torch.device) -> None:
        t0 = time.perf_counter()
        stats, raw, tap_list = record_checkpoint(model, self.loader, self.record, device=dev, precision=precision)
        self.writer.add(epoch, stats, raw, [t.record() for t in tap_list], checkpoint=str(path),
                        checkpoint_sha256=sha)
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Release the recording's lock (called when training ends, however it ends)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def train_with_recording(cfg: TrainConfig, run_dir: str | Path | None = None, record: RecordConfig | None = None, *,
                   callbacks: Sequence[Any] = (), **train_options: Any) -> list[dict[str, Any]]:
    """:func:`stripe.train.train` with every checkpoint recorded while training (``record``: what each tap records);
    returns the metrics rows. ``run_dir`` None: the run's default folder (:func:`stripe.train.default_run_dir`)."""
    return train(cfg, run_dir, callbacks=[OnlineRecorder(record or RecordConfig()), *callbacks], **train_options)
