"""What every stage of a preset gets (:class:`Context`: the output folder, the budget, the :class:`Sizes`, the
data, the log) and the steps the stages share: a training config from the sizes, training with online
recording under the budget's deadline, the stripe tables of a run, the ablation of a run.

:class:`RunSizes` is the one base of every size of a trained and recorded run: the presets' :class:`Sizes`, the
demo's :class:`~stripe.experiments.demo.DemoConfig` and the zoo's :class:`~stripe.experiments.zoo.ZooSizes` hold
the model, the schedule, the data sizes and the :class:`~stripe.record.RecordConfig` of the online recording in it
(the recording's defaults live in ``RecordConfig`` alone)."""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..record.config import RecordConfig
from .budget import Budget, Deadline

if TYPE_CHECKING:
    from ..record import OnlineRecorder
    from ..train import TrainConfig

#: where the runs a preset trains log for TensorBoard (``stripe reproduce PRESET --tensorboard DIR``, ``stripe demo
#: --tensorboard DIR``): each run into ``DIR/<run folder name>``; None (the default): no logs
TENSORBOARD: ContextVar[Path | None] = ContextVar("stripe_tensorboard", default=None)


def tensorboard_callbacks(run: Path) -> list[Any]:
    """The TensorBoard logger of ``run`` when :data:`TENSORBOARD` names a folder (put after the recorder)."""
    root = TENSORBOARD.get()
    if root is None:
        return []
    from ..analysis.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(Path(root) / Path(run).name)]


@contextlib.contextmanager
def tensorboard_into(folder: str | os.PathLike[str] | None) -> Iterator[None]:
    """The runs a preset or the demo trains inside the block log for TensorBoard into ``folder`` (one subfolder per
    run; None: no logs). A missing ``tensorboard`` package is one line before anything runs."""
    if folder is None:
        yield
        return
    from ..analysis.tensorboard import summary_writer_class

    summary_writer_class()
    token = TENSORBOARD.set(Path(folder))
    try:
        yield
    finally:
        TENSORBOARD.reset(token)


@dataclass(frozen=True)
class RunSizes:
    """How big a trained and recorded run is: the model, the schedule, the data sizes and what the online recording
    keeps (its :class:`~stripe.record.RecordConfig`)."""

    model: str = "cifar_resnet20"
    epochs: int = 10
    batch_size: int = 128
    train_subset: int | None = None
    test_subset: int | None = None
    probe_n: int = 1000
    record: RecordConfig = RecordConfig()

    def train_config(self, **over: Any) -> TrainConfig:
        """The training config of these sizes (the model by name, epochs, batch, data sizes), ``over`` replacing
        fields."""
        from ..nn import ModelConfig
        from ..train import TrainConfig

        kw: dict[str, Any] = dict(model=ModelConfig(self.model), epochs=self.epochs, batch_size=self.batch_size,
                                  train_subset=self.train_subset, test_subset=self.test_subset, probe_n=self.probe_n)
        kw.update(over)
        return TrainConfig(**kw)

    def recorder(self) -> OnlineRecorder:
        """A training callback that records each checkpoint of a run as :attr:`record` says."""
        from ..record import OnlineRecorder

        return OnlineRecorder(self.record)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the recording's as :meth:`RecordConfig.to_dict` gives it)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["record"] = self.record.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


#: what a dry run's recording keeps: few raw vectors (the statistics are complete either way)
DRY_RECORD = RecordConfig(raw_n=16)


@dataclass(frozen=True)
class Sizes(RunSizes):
    """How big each stage of a preset is."""

    model: str = "cifar_resnet164"
    epochs: int = 15
    bench_steps: int = 100
    bench_warmup: int = 20
    learns_epochs: int = 2
    learns_train_subset: int | None = 10000
    collect_images: int = 10000
    speed_batches: tuple[int, ...] = (1, 128)
    speed_repeats: int = 5
    science_epochs_max: int = 164
    science_reserve_s: float = 60.0
    min_stage_s: float = 20.0  # a stage starts only with more than this left
    device: str = "cuda"
    precision: str = "bf16"
    channels_last: bool = True
    compile: str = "cudagraph"


@dataclass
class Context:
    """What every stage gets: the output folder, the budget, the sizes, the device, the data, the log.

    ``campaign`` is what a ``gpu-quick`` call adds to a campaign (:class:`stripe.experiments.gpu.Campaign`);
    ``notes`` carries what one stage tells a later one (and a preset's own options)."""

    out: Path
    budget: Budget
    sizes: Sizes
    device: str
    dataset: str
    data_root: str | None
    progress: bool
    dry_run: bool
    campaign: Any = None
    notes: dict[str, Any] = field(default_factory=dict)
    #: the seeds every training stage runs (``--seeds``)
    seeds: list[int] = field(default_factory=lambda: [0])

    def log(self, record: dict[str, Any]) -> None:
        """Append one measurement to ``measurements.jsonl`` (and echo it)."""
        record = {"t": round(self.budget.used(), 1), **record}
        line = json.dumps(record, default=str)
        print(line, flush=True)
        from .. import fsio

        fd = fsio.open_append(self.out / "measurements.jsonl")  # never through a symbolic link
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")


def base_config(ctx: Context, **over: Any):
    """The training config of the context's sizes and data, with ``over`` replacing fields."""
    sz = ctx.sizes
    kw: dict[str, Any] = dict(dataset=ctx.dataset, data_root=ctx.data_root, precision=sz.precision,
                              channels_last=sz.channels_last, compile=sz.compile)
    return sz.train_config(**{**kw, **over})


def train_recorded(ctx: Context, cfg, run: Path, *, reserve: float = 0.0) -> dict[str, Any]:
    """Train ``cfg`` into ``run`` (resuming a partial run) with online recording (when the model has attention),
    the budget's deadline and, with :data:`TENSORBOARD` set, a TensorBoard log."""
    from ..train import train

    rec = ctx.sizes.recorder() if cfg.model.attn else None
    deadline = Deadline(ctx.budget, reserve)
    t0 = time.perf_counter()
    rows = train(cfg, run, resume=(run / "config.json").exists(), device=ctx.sizes.device, progress=ctx.progress,
                 callbacks=[c for c in (rec, deadline) if c is not None] + tensorboard_callbacks(run))
    trained = [r for r in rows if r["epoch"] >= 1]
    return {"run": str(run), "epochs_done": rows[-1]["epoch"], "epochs": cfg.epochs,
            "stopped_by_budget_at": deadline.stopped_at, "wall_s": time.perf_counter() - t0,
            "record_s": rec.seconds if rec else 0.0, "final_test_acc": rows[-1]["test_acc"],
            "median_images_per_s": (sorted(r["images_per_s"] for r in trained)[len(trained) // 2] if trained else None),
            "train_s": sum(r["train_seconds"] for r in trained if r["train_seconds"] == r["train_seconds"])}


def record_tables(ctx: Context, run: Path, label: str) -> None:
    """The stripe tables of ``run``'s recording, written into ``recording/tables``; the summary logged."""
    from ..analysis import compute_tables, summary_text, write_tables
    from ..record.format import TABLES_DIR

    tables = compute_tables(run / "recording")
    write_tables(tables, run / "recording" / TABLES_DIR)
    ctx.log({"stage": "stats", "variant": label, "summary": summary_text(tables)})


def ablate_run(ctx: Context, run: Path, label: str, scopes: tuple[str, ...]) -> None:
    """The constant-replacement ablation of ``run`` over ``scopes``; the table logged. An ablation already complete
    for the run as it is (:func:`~stripe.analysis.finished_ablation`: every scope, the last checkpoint's epoch, no
    older than that checkpoint) is not redone: its table is logged as skipped."""
    from ..analysis import finished_ablation, run_ablation

    done = finished_ablation(run, scopes)
    if done is not None:
        ctx.log({"stage": "ablate", "variant": label, "skipped": "already complete", "ablation": done.attrs["out"],
                 "epoch": int(done["epoch"].iloc[0]), "table": done.to_dict("records")})
        return
    t0 = time.perf_counter()
    table = run_ablation(run, scopes=scopes, device=ctx.sizes.device, progress=ctx.progress)
    ctx.log({"stage": "ablate", "variant": label, "wall_s": time.perf_counter() - t0,
             "table": table.to_dict("records")})
