"""The attention zoo at CPU scale: the baseline and every attention module as +att and +ASR(att), over seeds.

``stripe reproduce zoo-cifar10-cpu``: CIFAR ResNet-20 (basic blocks) on all 50,000 CIFAR-10 training
images, 10 epochs of the paper's schedule shape (SGD lr 0.1, x0.1 at 50 % and 75 % of the steps), every epoch
recorded online on the 1,000-image probe; then, per run, the stripe tables, the constant-replacement ablation
(all taps, each stage) of every input-dependent attention, the final predictions on the full test set and,
for ASR models, the fold checked after real training (deployed predictions = trained predictions, deployed
parameters = the baseline's).

The catalogue (:func:`zoo_runs`) is grouped (``--only GROUP`` picks a group, or runs by slug or label):

* ``zoo``: the baseline, +att and +ASR(att) for the seven modules, and the **SE-width control**: SE with
  reduction 4, whose hidden widths on 16/32/64 channels (4/8/16) are ResNet-164's at r = 16 (17 runs);
* ``paper``: the paper's four variants of SE (baseline, +SE, +ASR(SE), +ASR(SE)+SE);
* ``bias``: +CBAM and +ASR(CBAM) with biases in the channel MLP (``--mlp-bias``, as the original CBAM), where
  the bias-free ASR(CBAM) gates freeze at 0.5;
* ``long``: baseline, +SE and +ASR(SE) on a 40-epoch schedule of the same shape (does the attention's spread
  fall after the lr drops?).

Every run is trained at each seed of ``seeds`` (the seed sets the initialisation and the data order; the probe
images stay the same across seeds). One worker process per (run, seed) (``python -m stripe.experiments.zoo RUN
--seed N …``); ``jobs`` workers run side by side with the cores split between them, and end with the campaign
(a killed campaign leaves no worker behind; rerunning it resumes each run from its last checkpoint). A
finished (run, seed) copies its small outputs into ``OUT/results/SLUG/seedN/`` and writes ``DONE.json`` there
last; a pair whose ``DONE.json`` exists is skipped, so a campaign continues from committed results: copy them
to ``OUT/results/`` and run the preset again. (Results of the first, one-seed campaign, in
``OUT/results/SLUG/`` itself, are read as seed 0.)
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import UserError
from .. import fsio
from ..nn.variants import Variant, slug
from .context import DRY_RECORD, RunSizes
from .cpuenv import describe_env, worker_env


@dataclass(frozen=True)
class ZooRun:
    """One run of the catalogue: a variant, the reduction (None: the module's own), biases in the attention's
    MLP, and the number of epochs (None: the campaign's)."""

    variant: Variant
    reduction: int | None = None
    mlp_bias: bool = False
    epochs: int | None = None

    @property
    def label(self) -> str:
        """'+SE', '+ASR(SE)', 'baseline'; '+SE r=4', '+CBAM bias', '+SE 40 epochs' for the other recipes."""
        return (self.variant.label + (f" r={self.reduction}" if self.reduction else "")
                + (" bias" if self.mlp_bias else "") + (f" {self.epochs} epochs" if self.epochs else ""))

    @property
    def slug(self) -> str:
        """File-name form of the label."""
        return slug(self.label)

    @property
    def recipe(self) -> str:
        """What the run shares with the runs it is compared with: the label without the variant ('', 'r=4',
        'bias', '40 epochs')."""
        return self.label[len(self.variant.label):].strip()

    def att(self) -> "ZooRun":
        """The +att run of the same module and recipe (what +ASR(att) is compared with)."""
        return replace(self, variant=Variant(self.variant.attn))

    def baseline(self) -> "ZooRun":
        """The baseline of the same schedule (reduction and biases do not apply to it)."""
        return ZooRun(Variant(), epochs=self.epochs)


ZOO_ATTNS = ("se", "cbam", "srm", "eca", "ie", "spa", "dia")
LONG_EPOCHS = 40


def zoo_groups() -> dict[str, list[ZooRun]]:
    """The catalogue's groups, each in the order its runs are trained (the reference of a comparison right
    after or before what it is compared with)."""
    zoo = [ZooRun(Variant("se")), ZooRun(Variant("se", True)), ZooRun(Variant()),
           ZooRun(Variant("se"), 4), ZooRun(Variant("se", True), 4)]
    for a in ZOO_ATTNS[1:]:
        zoo += [ZooRun(Variant(a)), ZooRun(Variant(a, True))]
    return {
        "zoo": zoo,
        "paper": [ZooRun(Variant()), ZooRun(Variant("se")), ZooRun(Variant("se", True)),
                  ZooRun(Variant("se", True, True))],
        "bias": [ZooRun(Variant("cbam"), mlp_bias=True), ZooRun(Variant("cbam", True), mlp_bias=True)],
        "long": [ZooRun(Variant(), epochs=LONG_EPOCHS), ZooRun(Variant("se"), epochs=LONG_EPOCHS),
                 ZooRun(Variant("se", True), epochs=LONG_EPOCHS)],
    }


def zoo_runs() -> list[ZooRun]:
    """Every run of the catalogue once, group by group."""
    return list(dict.fromkeys(r for g in zoo_groups().values() for r in g))


def run_by_slug(name: str) -> ZooRun:
    """The catalogue run whose slug (or label) is ``name``."""
    for r in zoo_runs():
        if name in (r.slug, r.label):
            return r
    raise UserError(f"unknown zoo run {name!r}; known: {', '.join(r.slug for r in zoo_runs())} "
                    f"(or a group: {', '.join(zoo_groups())})")


def select_runs(only: Iterable[str] | None) -> list[ZooRun]:
    """The runs that ``only`` names (groups, slugs or labels, in catalogue order); None: the whole catalogue.
    A selection that names nothing is refused (it would otherwise mean every run: hours)."""
    if only is None:
        return zoo_runs()
    names = [o.strip() for o in only if o.strip()]
    if not names:
        raise UserError("--only names no run; give groups (" + ", ".join(zoo_groups()) + "), slugs or labels")
    groups = zoo_groups()
    picked: set[ZooRun] = set()
    for n in names:
        picked.update(groups[n] if n in groups else [run_by_slug(n)])
    return [r for r in zoo_runs() if r in picked]


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """Seeds from ``--seeds``: a count N (seeds 0 … N-1), or a list of seeds and ranges ('0,2,5', '1-3', '4,');
    a list of ints passes through. Negative seeds, an empty list and repeats are refused."""
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
    elif text.strip().isdigit():
        n = int(text)
        if n < 1:
            raise UserError(f"--seeds: a count must be >= 1, got {text!r}")
        seeds = list(range(n))
    else:
        seeds = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise UserError(f"--seeds: {part!r} is not a seed or a range a-b of seeds (e.g. 4, '0,2,5', '1-3')")
            if sep and int(hi) < int(lo):
                raise UserError(f"--seeds: the range {part!r} is empty")
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    if not seeds:
        raise UserError(f"--seeds names no seed: {text!r}")
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds must be >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds names a seed twice: {text!r}")
    return seeds


@dataclass(frozen=True)
class ZooSizes(RunSizes):
    """How big each run is: ResNet-20, 10 epochs, the full data (:class:`~stripe.experiments.context.RunSizes`'
    defaults), on the CPU fast path; ``max_epochs`` caps a run's own epochs (a dry run's long schedule)."""

    fast: bool = True  # the CPU fast path: channels_last + torch.compile
    max_epochs: int | None = None


ZOO = ZooSizes()
ZOO_DRY = ZooSizes(epochs=2, train_subset=512, test_subset=300, probe_n=100, record=DRY_RECORD, fast=False,
                   max_epochs=3)

#: what a finished run keeps in ``results/SLUG/seedN`` (paths relative to the run directory; those under
#: ``recording/`` packed, :func:`pack_result`)
RESULT_FILES = ("config.json", "metrics.csv", "recording/manifest.json", "recording/tables/taps.csv",
                "recording/tables/stages.csv", "recording/tables/convergence.csv", "recording/tables/trend.csv",
                "recording/tables/channel_std.csv", "ablation/ablation.csv", "ablation/ablation.md")

#: the suffix of the recording files a result keeps (its manifest and tables, :func:`pack_result`): compressed with
#: xz they take about a sixth of their size, and they are most of a campaign's committed bytes (``pandas.read_csv``
#: and ``xz -d`` read them as they are)
PACKED = ".xz"


def pack_result(dest: Path) -> list[Path]:
    """Compress every file under the result folder ``dest``'s ``recording/`` in place (``X`` becomes ``X.xz``), the
    form in which results keep their recording files; returns the files written."""
    import lzma

    written = []
    for src in sorted((Path(dest) / "recording").rglob("*")):
        if src.is_file() and not src.is_symlink() and not src.name.startswith(".") and src.suffix != PACKED:
            data = lzma.compress(src.read_bytes(), preset=9 | lzma.PRESET_EXTREME)
            written.append(fsio.write_bytes(src.with_name(src.name + PACKED), data))
            src.unlink()  # a file this result's writer made a moment ago; its packed copy is in place
    return written


def result_file(dest: Path, rel: str) -> Path | None:
    """The result folder ``dest``'s recording file ``rel`` (``recording/tables/taps.csv``) as it is kept: packed
    (:func:`pack_result`), or plain in results written before packing; None when it has neither."""
    for path in (Path(dest) / (rel + PACKED), Path(dest) / rel):
        if path.is_file():
            return path
    return None


#: the columns of a run's ``channel_std.csv``: the channels table at a few epochs, enough to draw the paper's
#: Fig. 1b form (per-channel std across images, attention and its input, per stage) without the whole table
CHANNEL_STD_COLUMNS = ("epoch", "tap", "kind", "channel", "stage", "asr", "mean", "std")


def channel_std_rows(channels: "pd.DataFrame") -> "pd.DataFrame":
    """The rows of a recording's channels table kept with a run's results: epochs 0 (initialisation), 1 and the
    last one recorded, the columns of :data:`CHANNEL_STD_COLUMNS`."""
    epochs = sorted(int(e) for e in channels["epoch"].unique())
    keep = sorted({e for e in epochs if e in (0, 1)} | set(epochs[-1:]))
    return channels.loc[channels["epoch"].isin(keep), list(CHANNEL_STD_COLUMNS)].reset_index(drop=True)


def write_result_tables(tables: dict[str, "pd.DataFrame"], dest: Path) -> list[Path]:
    """A run's stripe tables as its results keep them, in ``dest`` (a ``recording/tables`` folder): the tables a
    recording keeps as CSV (``taps``, ``stages``, ``convergence``, ``trend``) and ``channel_std.csv``, a few
    epochs of the channels table; no Parquet."""
    from ..analysis.tables import CSV_TABLES

    return [fsio.write_text(dest / f"{k}.csv", v.to_csv(index=False, float_format="%.6g"))
            for k, v in tables.items() if k in CSV_TABLES] + write_channel_std(tables, dest)


def write_channel_std(tables: dict[str, "pd.DataFrame"], dest: Path) -> list[Path]:
    """``dest/channel_std.csv`` (:func:`channel_std_rows`) when ``tables`` hold a channels table."""
    ch = tables.get("channels")
    if ch is None or not len(ch):
        return []
    return [fsio.write_text(dest / "channel_std.csv", channel_std_rows(ch).to_csv(index=False, float_format="%.6g"))]


def epochs_of(run: ZooRun, sizes: ZooSizes) -> int:
    """How many epochs ``run`` trains at ``sizes``."""
    n = run.epochs or sizes.epochs
    return min(n, sizes.max_epochs) if sizes.max_epochs else n


def train_config(run: ZooRun, sizes: ZooSizes, data_root: str | None, seed: int = 0):
    """The :class:`~stripe.train.TrainConfig` of one campaign run at one seed."""
    from ..nn import ModelConfig
    from ..train import fast_path

    fast = fast_path("cpu") if sizes.fast else {}
    model = replace(ModelConfig(sizes.model), **run.variant.overrides(), reduction=run.reduction,
                    mlp_bias=run.mlp_bias)
    return sizes.train_config(model=model, dataset="cifar10", data_root=data_root, epochs=epochs_of(run, sizes),
                              seed=seed, **fast)


def run_folder(out: str | Path, run: ZooRun, seed: int) -> Path:
    """Where the (run, seed) pair trains: ``OUT/runs/SLUG_seedN``."""
    return Path(out) / "runs" / f"{run.slug}_seed{seed}"


def result_dir(out: str | Path, run: ZooRun, seed: int) -> Path:
    """Where the (run, seed) pair's small results are: ``OUT/results/SLUG/seedN``, or for seed 0 of a campaign
    of the first, one-seed layout, ``OUT/results/SLUG`` itself."""
    base = Path(out) / "results" / run.slug
    if seed == 0 and (base / "DONE.json").is_file():
        return base
    return base / f"seed{seed}"


def done_seeds(out: str | Path, run: ZooRun) -> list[int]:
    """The seeds of ``run`` that have finished in campaign folder ``out``, ascending."""
    base = Path(out) / "results" / run.slug
    seeds = {0} if (base / "DONE.json").is_file() else set()
    if base.is_dir():
        for d in base.iterdir():
            if d.name.startswith("seed") and d.name[4:].isdigit() and (d / "DONE.json").is_file():
                seeds.add(int(d.name[4:]))
    return sorted(seeds)


def is_done(out: str | Path, run: ZooRun, seed: int = 0) -> bool:
    """Whether ``run`` at ``seed`` has finished in campaign folder ``out`` (its results hold ``DONE.json``)."""
    return (result_dir(out, run, seed) / "DONE.json").is_file()


def _fold_check(run_dir: Path, device: str) -> dict[str, Any]:
    """An ASR model after real training: logits and predictions of the trained (unfolded) model against the
    deployed (folded) one on the scored test images, and the parameter counts."""
    import torch

    from ..data import Loader
    from ..nn import ModelConfig, build_model, count_params
    from ..train import deployed, list_checkpoints, load_model, read_run, run_eval_sets

    info = read_run(run_dir)
    epoch, path = list_checkpoints(run_dir)[-1]
    model = load_model(path, info["model"])  # in eval mode
    folded = deployed(model).eval()
    _, data = run_eval_sets(info)
    diff, changed, n = 0.0, 0, 0
    with torch.no_grad():
        for x, _ in Loader(data.test, 500, train=False, device=device):
            a, b = model(x), folded(x)
            diff = max(diff, float((a - b).abs().max()))
            changed += int((a.argmax(1) != b.argmax(1)).sum())
            n += len(x)
    cfg = ModelConfig.from_dict(info["model"])
    return {"epoch": epoch, "n_test": n, "max_abs_logit_diff": diff, "changed_predictions": changed,
            "params_trained": count_params(model), "params_deployed": count_params(folded),
            "params_baseline": count_params(build_model(cfg.plain()))}


def _save_predictions(run_dir: Path, dest: Path, device: str) -> dict[str, Any]:
    """Final deployed predictions on the scored test images, in the one predictions format (with the run id and
    the scored set's hash)."""
    from ..train import read_run
    from .compare import final_predictions, write_predictions

    pred, labels = final_predictions(run_dir, device)
    write_predictions(dest / "predictions.npz", pred, labels, read_run(run_dir))
    return {"n_test": int(len(labels)), "top1": 100.0 * float((pred == labels).mean()), "correct": int((pred == labels).sum())}


def run_one(run: ZooRun, out: str | Path, *, seed: int = 0, sizes: ZooSizes = ZOO, data_root: str | None = None,
            device: str = "cpu", progress: bool = False, tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Train, record, tabulate, ablate and fold-check one campaign run at one seed; its small outputs go to
    ``out/results/SLUG/seedN`` (with ``DONE.json`` last). Resumes a partial run. ``tensorboard``: a folder the
    run logs into for TensorBoard (``tensorboard/SLUG_seedN``), after its recorder; None: no logs."""
    from ..analysis import compute_tables, run_ablation, write_tables
    from ..train import train

    out = Path(out)
    run_dir = run_folder(out, run, seed)
    dest = result_dir(out, run, seed)
    cfg = train_config(run, sizes, data_root, seed)
    t0 = time.perf_counter()
    rec = sizes.recorder() if cfg.model.attn else None
    logs = []
    if tensorboard is not None:
        from ..analysis.tensorboard import TensorBoardLogger

        logs = [TensorBoardLogger(Path(tensorboard) / run_dir.name, recording=run_dir / "recording" if rec else None)]
    rows = train(cfg, run_dir, resume=(run_dir / "config.json").exists(), device=device, progress=progress,
                 callbacks=([rec] if rec else []) + logs + [_EpochLine(f"{run.label} seed {seed}", cfg.epochs)])
    done: dict[str, Any] = {"label": run.label, "slug": run.slug, "seed": seed, "epochs": rows[-1]["epoch"],
                            "train_wall_s": time.perf_counter() - t0, "record_s": rec.seconds if rec else 0.0,
                            "threads": _threads(), "fast_path": sizes.fast}
    trained = [r for r in rows if r["epoch"] >= 1]
    done["median_images_per_s"] = float(np.median([r["images_per_s"] for r in trained])) if trained else None
    if cfg.model.attn:
        tables = compute_tables(run_dir / "recording")
        write_tables(tables, run_dir / "recording" / "tables")
        write_channel_std(tables, run_dir / "recording" / "tables")
    if cfg.model.attn and (not cfg.model.asr or cfg.model.both):
        t1 = time.perf_counter()
        run_ablation(run_dir, scopes=("all", "stage"), device=device, progress=progress)
        done["ablation_s"] = time.perf_counter() - t1
    if cfg.model.asr:
        done["fold"] = _fold_check(run_dir, device)
    dest.mkdir(parents=True, exist_ok=True)
    done["predictions"] = _save_predictions(run_dir, dest, device)
    for rel in RESULT_FILES:
        src = run_dir / rel
        if src.is_file():
            fsio.write_bytes(dest / rel, src.read_bytes())
    pack_result(dest)
    done["wall_s"] = time.perf_counter() - t0
    fsio.write_json(dest / "DONE.json", done)
    return done


class _EpochLine:
    """Prints one line per finished epoch (the worker's log: how far a run is)."""

    def __init__(self, label: str, epochs: int):
        self.label, self.epochs = label, epochs

    def on_checkpoint(self, state: Any) -> None:
        r = state.row
        if state.epoch == 0:
            print(f"{self.label}: epoch 0/{self.epochs}, test top-1 {r['test_acc']:.2f}%", flush=True)
        else:
            print(f"{self.label}: epoch {state.epoch}/{self.epochs}, loss {r['train_loss']:.3f}, test top-1 "
                  f"{r['test_acc']:.2f}%, {r['images_per_s']:.0f} images/s, {r['epoch_seconds']:.0f} s", flush=True)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# --------------------------------------------------------------------------- workers that end with the campaign
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux; elsewhere the worker's own
    watch of its parent does it)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int, every: float = 2.0) -> None:
    """In a worker: end the process as soon as the campaign that started it (pid ``parent``) is gone."""
    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(143)  # what SIGTERM would give; every file is written atomically, so none is half-written
    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def run_campaign(out: str | Path, *, seeds: Iterable[int] = (0,), jobs: int = 2, sizes: ZooSizes = ZOO,
                 data_root: str | None = None, only: list[str] | None = None, log=print,
                 deadline: float | None = None, tensorboard: str | Path | None = None) -> list[dict[str, Any]]:
    """Every unfinished (run, seed) pair of the selection in ``jobs`` worker processes (cores split between
    them), seed by seed (so each seed's comparisons complete early); returns what each worker reported.
    ``deadline`` (a ``time.monotonic()`` value): start no run after it. ``tensorboard``: each run logs into
    ``tensorboard/SLUG_seedN`` (None: no logs). A SIGTERM or Ctrl-C of the campaign ends its workers too."""
    out = Path(out)
    runs = select_runs(only)
    seeds = parse_seeds(list(seeds))
    todo = [(r, s) for s in seeds for r in runs if not is_done(out, r, s)]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, jobs))
    pending = list(todo)
    active: dict[subprocess.Popen, tuple[ZooRun, int, float, int]] = {}
    reports: list[dict[str, Any]] = []
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = worker_env(threads)  # the measured-faster settings that exist here (stripe.experiments.cpuenv)

    def log_name(r: ZooRun, s: int) -> Path:
        return logs / (f"{r.slug}.log" if s == 0 else f"{r.slug}_seed{s}.log")

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        while pending or active:
            while pending and len(active) < jobs and (deadline is None or time.monotonic() < deadline):
                r, s = pending.pop(0)
                cmd = [sys.executable, "-m", "stripe.experiments.zoo", r.slug, "--seed", str(s), "--out", str(out),
                       "--threads", str(threads), "--parent", str(os.getpid())] + \
                      (["--data-root", data_root] if data_root else []) + (["--dry-run"] if sizes == ZOO_DRY else []) + \
                      (["--tensorboard", str(Path(tensorboard).resolve())] if tensorboard is not None else [])
                logfd = fsio.open_append(log_name(r, s))
                try:
                    p = subprocess.Popen(cmd, stdout=logfd, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                finally:
                    os.close(logfd)
                active[p] = (r, s, time.monotonic(), 0)
                log({"stage": "zoo-start", "run": r.label, "seed": s, "threads": threads, "pid": p.pid,
                     "env": describe_env(env)})
            if not pending or len(active) >= jobs or (deadline is not None and time.monotonic() >= deadline):
                if not active:
                    break
                time.sleep(2)
            for p in [p for p in active if p.poll() is not None]:
                r, s, t0, _ = active.pop(p)
                report = {"stage": "zoo-run", "run": r.label, "seed": s, "rc": p.returncode,
                          "wall_s": round(time.monotonic() - t0, 1)}
                if p.returncode == 0 and is_done(out, r, s):
                    report.update(json.loads((result_dir(out, r, s) / "DONE.json").read_text()))
                else:
                    report["log_tail"] = log_name(r, s).read_text(errors="replace")[-2000:]
                reports.append(report)
                log(report)
            if pending and deadline is not None and time.monotonic() >= deadline and not active:
                log({"stage": "zoo", "skipped": [f"{r.label} seed {s}" for r, s in pending], "reason": "out of budget"})
                break
    finally:
        for p in active:  # an interrupted campaign takes its workers with it; they resume from their checkpoints
            p.terminate()
        for p in active:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return reports


def main(argv: list[str] | None = None) -> int:
    """One campaign run at one seed in this process (what :func:`run_campaign` starts)."""
    p = argparse.ArgumentParser(prog="python -m stripe.experiments.zoo", description=__doc__.splitlines()[0])
    p.add_argument("run", help="slug of the run: " + ", ".join(r.slug for r in zoo_runs()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--parent", type=int, default=None, help="end when the process with this pid is gone")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--tensorboard", default=None, help="log for TensorBoard into DIR/SLUG_seedN")
    args = p.parse_args(argv)
    if args.parent is not None:
        _watch_parent(args.parent)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = run_one(run_by_slug(args.run), args.out, seed=parse_seeds([args.seed])[0],
                     sizes=ZOO_DRY if args.dry_run else ZOO, data_root=args.data_root, tensorboard=args.tensorboard)
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def refresh_recording(out: str | Path, run: ZooRun, seed: int = 0, *, device: str = "cpu") -> Path | None:
    """Record a finished run's checkpoints again with today's recorder (hidden layers, probe order, file hashes)
    into ``runs/SLUG_seedN/recording_v2`` and write its tables there and into the run's results; None when the
    run's checkpoints are not here (a campaign continued from committed results)."""
    from ..analysis import compute_tables, write_tables
    from ..record import collect

    out = Path(out)
    run_dir = run_folder(out, run, seed)
    if not (run_dir / "checkpoints").is_dir() or not run.variant.attn:
        return None
    rec = run_dir / "recording_v2"
    collect(run_dir, out=rec, device=device, progress=False)
    tables = compute_tables(rec)
    write_tables(tables, rec / "tables")
    dest = result_dir(out, run, seed) / "recording"
    write_result_tables(tables, dest / "tables")
    fsio.write_bytes(dest / "manifest.json", (rec / "manifest.json").read_bytes())
    pack_result(dest.parent)
    return rec
