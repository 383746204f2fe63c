"""The checkpoint sweep (``stripe collect``) and recording during training (:class:`OnlineRecorder`).

Both write the same recording (:mod:`stripe.record.format`) through :func:`record_checkpoint`:
one forward pass per checkpoint over the probe set, every selected tap at once. A sweep is
resumable (checkpoints already recorded from the same file are skipped), atomic, locked against a
second writer, and under torchrun shares the checkpoints out between ranks.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import fsio
from ..errors import NotFoundError, RefusedError, UserError
from ..data import ImageSet, Loader, PROBE_SPLITS, load_dataset, probe_hash, stratified_indices, take
from ..nn import ModelConfig, build_model, is_source, load_weights_file, preprocess_for
from ..train.official import OFFICIAL_MEAN, OFFICIAL_STD
from ..train import (CheckpointError, autocast, dist_from_env, file_sha256, init_distributed, list_checkpoints,
                     load_model, load_weights, read_run, resolve_device, run_eval_sets)
from ..train.loading import official_run
from ..train.config import epoch_matches, parse_epoch_spec
from .format import FoldStats, RecordingWriter
from ..gates import Gate
from .recorder import Recorder


@dataclass
class SweepResult:
    """What a sweep did: the recording folder, checkpoints recorded now, skipped (already done), failed."""

    out: Path
    recorded: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rerecorded: list[tuple[int, str]] = field(default_factory=list)  # (epoch, why it was recorded again)
    seconds: float = 0.0
    images: int = 0


@dataclass
class SweepSource:
    """Where a sweep's weights come from: (epoch, file) jobs, the model config, the data set, the run if any."""

    jobs: list[tuple[int, Path]]
    model: dict[str, Any]
    dataset: str
    data_root: str | None
    run_dir: Path | None = None
    run_info: dict[str, Any] | None = None
    official: bool = False  # files written by the official ASR code (their inputs normalised its way)

    @property
    def run_id(self) -> str | None:
        """The run id of a training run's checkpoints (None for files from elsewhere)."""
        if self.run_info is None:
            return None
        return self.run_info.get("run_id") or "legacy:" + self.run_info["probe"]["hash"][:16]


def parse_checkpoint_spec(spec: str | None, available: list[int]) -> list[int]:
    """'all' (default), 'last', 'every:K' (plus the last), or a comma list of epochs; bad text names the option."""
    if not available:
        return []
    if spec in (None, "", "all"):
        return available
    terms = parse_epoch_spec(spec, "--checkpoints")
    last = available[-1]
    wanted = [int(t) for t in terms if t.isdigit()]
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserError(f"--checkpoints: no checkpoint for epoch(s) {missing}; available: {available}")
    every = any(t.startswith("every:") for t in terms)
    return [e for e in available if epoch_matches(terms, e, last) or (every and e == last)]


def _epoch_of(path: Path, position: int) -> int:
    import re

    m = re.search(r"(\d+)(?!.*\d)", path.stem)
    return int(m.group(1)) if m else position


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A model config from a JSON file (a bare config, or a run's ``config.json``); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"--model-config {path}: no such file")
    obj = fsio.read_json(path, "--model-config")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "train" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise UserError(f"--model-config {path}: expected a JSON object with a model config, got "
                         f"{type(obj).__name__}")
    try:
        return ModelConfig.from_dict(obj).to_dict()
    except (TypeError, ValueError) as e:
        raise UserError(f"--model-config {path}: {e}") from None


def resolve_source(run_dir: str | Path | None, *, checkpoints: str | Sequence[str | Path] | None,
                   model_config: dict[str, Any] | None, dataset: str | None,
                   data_root: str | None, model: str | None = None, weights: str | Path | None = None,
                   num_classes: int | None = None) -> SweepSource:
    """The checkpoints to record: those of a run (selected by ``checkpoints``), or files from elsewhere
    (``checkpoints`` files with ``model_config``, or ``weights`` / ``checkpoints`` files of the model
    named ``model``, e.g. ``timm:seresnet18`` with ``num_classes``). A ``weights`` file is recorded as
    epoch 1 (a trained model) unless its name says ``epoch_N``."""
    if model is not None:
        if run_dir is not None or model_config is not None:
            raise UserError("--model names the model of --weights/--files; it excludes a RUN_DIR and --model-config")
        if weights is None and checkpoints is None and model.startswith("onnx:"):
            weights = model[len("onnx:"):]  # an ONNX file holds its weights
        files = [weights] if weights is not None else checkpoints
        if not files or isinstance(files, str):
            raise UserError(f"--model {model}: give its weights (--weights FILE, or checkpoint files with --files)")
        model_config = ModelConfig(name=model, num_classes=num_classes).to_dict()
        if dataset is None:
            raise UserError(f"--model {model}: give the data set of the probe images (--dataset)")
        for f in files:
            _check_file(f, "--weights" if weights is not None else "--files")
        if weights is not None:  # trained weights: epoch 1 unless the file name says epoch N
            m = re.search(r"epoch[_-]?(\d+)", Path(weights).name)
            return SweepSource([(int(m.group(1)) if m else 1, Path(weights))], model_config, dataset, data_root)
        checkpoints = files
    elif weights is not None or num_classes is not None:
        raise UserError("--weights and --num-classes go with --model NAME")
    if run_dir is not None and not (Path(run_dir) / "config.json").is_file() and Path(run_dir).is_dir() \
            and any(Path(run_dir).glob("*.pth.tar")):
        if checkpoints is not None:
            raise UserError(f"{run_dir} is a run folder of the official ASR code: it records all its checkpoint "
                            "files; --checkpoints does not apply")
        run = official_run(run_dir)  # checkpoint.pth.tar (the last epoch) and model_best.pth.tar (the best)
        checkpoints = [c.path for c in run.checkpoints.values()]
        run_dir = None
    if run_dir is not None:
        info = read_run(run_dir)
        paths = dict(list_checkpoints(run_dir))
        if not paths:
            raise NotFoundError(f"{run_dir}: the run has no checkpoints")
        spec = checkpoints if isinstance(checkpoints, str) or checkpoints is None else ",".join(map(str, checkpoints))
        epochs = parse_checkpoint_spec(spec, sorted(paths))
        return SweepSource([(e, paths[e]) for e in epochs], info["model"], dataset or info["train"]["dataset"],
                           data_root or info["train"].get("data_root"), Path(run_dir), info)
    if not checkpoints or isinstance(checkpoints, str):
        raise UserError("without a run directory, give checkpoint files (--files) and the data set (--dataset)")
    files = [_check_file(p, "--files") for p in checkpoints]
    infos = [load_model(p, model_config).load_info for p in files]  # every file read, its model checked
    cfg = infos[0].config
    for p, i in zip(files[1:], infos[1:]):
        if i.config != cfg:
            raise UserError(f"--files: {p} holds another model ({i.config.arch}, {i.config.attn}) than {files[0]}")
    official = any(i.format == "official-checkpoint" for i in infos)
    if dataset is None:
        guess = {10: "cifar10", 100: "cifar100"}.get(cfg.num_classes) if official else None
        if guess is None:
            raise UserError("give the data set of the probe images (--dataset)")
        dataset = guess  # the official code trains on CIFAR-10 or CIFAR-100, told apart by the classes
    jobs = []
    for i, (p, li) in enumerate(zip(files, infos)):
        jobs.append((li.epoch if li.epoch is not None else _epoch_of(p, i), p))
    if len({e for e, _ in jobs}) != len(jobs):  # two files of one epoch (an official run's last and best)
        seen, unique = set(), []
        for (e, p), li in zip(jobs, infos):
            key = (e, file_sha256(p))
            if e in {x for x, _ in seen}:
                if key in seen:
                    continue  # the same weights twice
                raise UserError(f"--files: two different files for epoch {e} ({p} and another); record them into "
                                "separate --out folders")
            seen.add(key)
            unique.append((e, p))
        jobs = unique
    return SweepSource(sorted(jobs), cfg.to_dict(), dataset, data_root, official=official)


def _check_file(path: str | Path, option: str) -> Path:
    """``path`` as a Path when it is a readable file; a one-line error naming ``option`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {p}: is a folder, not a weights or checkpoint file")
    if not p.is_file():
        raise NotFoundError(f"{option} {p}: no such file")
    return p


def select_probe(source: SweepSource, probe: str = "run", *, probe_seed: int = 0,
                 probe_split: str = "train") -> tuple[ImageSet, dict[str, Any]]:
    """The probe images and their spec: ``run`` (the run's probe set; 1,000 training images for files from
    elsewhere), ``train``/``test`` (a whole split) or a number N (a stratified sample of ``probe_split``)."""
    if probe == "run" and source.run_info is not None:
        try:
            _, data = run_eval_sets(source.run_info, data_root=source.data_root)
        except ValueError as e:
            raise UserError(f"{source.run_dir}: {e}") from None
        return data.probe, data.eval.probe_spec.to_dict()
    if probe == "run":
        probe = "1000"
    if probe in PROBE_SPLITS:
        ds = load_dataset(source.dataset, probe, root=source.data_root)
        idx = np.arange(len(ds))
        return ds, {"split": probe, "n": len(ds), "seed": None, "hash": probe_hash(ds.source_hash, idx),
                    "excludes": None}
    if not probe.isdigit() or int(probe) < 1:
        raise UserError(f"--probe must be run, train, test or a positive number of images, got {probe!r}")
    if probe_split not in PROBE_SPLITS:
        raise UserError(f"--probe-split must be one of {', '.join(PROBE_SPLITS)}, got {probe_split!r}")
    full = load_dataset(source.dataset, probe_split, root=source.data_root)
    if int(probe) > len(full):
        raise UserError(f"--probe {probe} is larger than the {len(full)} images of the {probe_split} split")
    idx = stratified_indices(full.labels, int(probe), probe_seed)
    return take(full, idx), {"split": probe_split, "n": len(idx), "seed": probe_seed,
                             "hash": probe_hash(full.source_hash, idx), "excludes": None}


def record_checkpoint(model: nn.Module, probe: ImageSet | Loader, *, taps: str | Sequence[str] = "*",
                      raw_n: int = 256, folds: int = 10, batch_size: int = 500, device: torch.device | None = None,
                      precision: str = "fp32", channels_last: bool = False, preprocess: dict[str, Any] | None = None
                      ) -> tuple[dict[tuple[str, str], FoldStats], dict[str, np.ndarray], list[Gate]]:
    """One forward pass of ``model`` over the probe images with every selected tap hooked.

    Returns per-fold statistics, the first ``raw_n`` vectors of every (tap, kind), and the taps.
    The model is left in the mode it was in; its BN statistics never change. ``preprocess`` are
    :class:`~stripe.data.Loader` options (a model's own resize/crop/normalisation); with ``taps``
    ``auto``, gates are detected on the first two probe images.
    """
    dev = device or next(model.parameters()).device
    loader = probe if isinstance(probe, Loader) else probe_loader(probe, batch_size, dev,
                                                                  channels_last=channels_last, **(preprocess or {}))
    example = None
    if "auto" in ([taps] if isinstance(taps, str) else list(taps)):
        example = next(iter(loader))[0][:2]
    with Recorder(model, taps, raw_n=raw_n, folds=folds, example=example) as rec, torch.no_grad():
        for x, _ in loader:
            with autocast(dev, precision):
                model(x)
    return rec.fold_stats(), rec.raw(), rec.taps


#: the probe images are recorded in one seeded random order (the same online and offline): image i of that
#: order falls in fold i mod K, and the raw vectors kept for heat maps are a random sample, not the
#: first images of the split (which a data set sorted by class would make one class)
PROBE_ORDER = {"shuffle": True, "seed": 0}


def probe_loader(ds: ImageSet, batch_size: int, device: torch.device | str, **kw: Any) -> Loader:
    """The probe set in recording order (:data:`PROBE_ORDER`), un-augmented."""
    return Loader(ds, batch_size, train=False, device=device, shuffle=PROBE_ORDER["shuffle"],
                  seed=PROBE_ORDER["seed"], **kw)


def _header(source: SweepSource, probe_spec: dict[str, Any], *, raw_n: int, folds: int, precision: str,
            taps: str | Sequence[str], preprocess: dict[str, Any] | None = None,
            order: list[int] | None = None) -> dict[str, Any]:
    probe = {**probe_spec, "raw_n": raw_n, "order": dict(PROBE_ORDER)}
    if preprocess is not None:  # part of the probe's identity: the images the model saw
        probe["preprocess"] = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
    header = {"model": source.model, "source_run_id": source.run_id,
              "run_dir": str(source.run_dir) if source.run_dir else None, "dataset": source.dataset,
              "probe": probe, "folds": folds, "precision": precision,
              "taps_selector": [taps] if isinstance(taps, str) else list(taps)}
    if order is not None:  # position i of the recorded order is in fold i mod K: what rebuilds the folds
        header["probe_order"] = order
    return header


def _load_model(path: Path, model_config: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint file and what it says (run id, epoch): this package's checkpoints, plain state
    dicts and the official ASR code's files through :func:`stripe.train.load_model`; for a source model any
    weights file :func:`stripe.nn.load_weights_file` reads (an ONNX model holds its weights)."""
    if is_source(model_config["name"]):
        try:
            model = build_model(ModelConfig.from_dict(model_config))
            info = {} if model_config["name"] == f"onnx:{path}" else load_weights_file(model, path)
        except (ValueError, FileNotFoundError) as e:
            raise CheckpointError(str(e)) from None
        return model, {"epoch": None, "run_id": None, **info}
    model = load_model(path, model_config)
    return model, {"epoch": model.load_info.epoch, "run_id": model.load_info.extra.get("run_id")}


def collect(run_dir: str | Path | None = None, *, checkpoints: str | Sequence[str | Path] | None = None,
            model_config: dict[str, Any] | None = None, dataset: str | None = None, data_root: str | None = None,
            out: str | Path | None = None, probe: str = "run", probe_seed: int = 0, probe_split: str = "train",
            taps: str | Sequence[str] = "*", raw_n: int = 256, folds: int = 10, batch_size: int = 500,
            device: str | None = "auto", precision: str = "fp32", progress: bool = True, model: str | None = None,
            weights: str | Path | None = None, num_classes: int | None = None,
            preprocess: str | dict[str, Any] | None = "auto", overwrite: bool = False) -> SweepResult:
    """Record every tap over the probe set at each checkpoint; writes a recording directory.

    Either ``run_dir`` (a training run: its checkpoints, data and probe set), or a list of
    checkpoint files in ``checkpoints`` plus ``model_config`` and ``dataset`` (checkpoints from
    elsewhere), or a model name ``model`` (``timm:seresnet18``, ``torchvision:NAME`` …) with its
    ``weights`` file (or ``checkpoints`` files), ``num_classes`` and ``dataset``. ``taps="auto"``
    also records gates found by the generic detector. ``preprocess``: see :func:`stripe.nn.preprocess_for`
    (``auto``: the model's own resize/crop/normalisation for ``model`` + ``weights``).
    Resumable and atomic; under torchrun the checkpoints are shared out between ranks. A checkpoint
    recorded before is recorded again when its files are damaged or missing (the result says why); a
    recording of *other* files at the same epochs (``--files``/``--weights``) is refused unless
    ``overwrite``. Everything is checked before the recording folder is created.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if folds < 1:
        raise UserError(f"--folds must be >= 1, got {folds}")
    if raw_n < 0:
        raise UserError(f"--raw-n must be >= 0, got {raw_n}")
    info = dist_from_env()
    dev = resolve_device(device, info)
    init_distributed(info, dev)
    source = resolve_source(run_dir, checkpoints=checkpoints, model_config=model_config, dataset=dataset,
                            data_root=data_root, model=model, weights=weights, num_classes=num_classes)
    if out is None and source.run_dir is None:
        raise UserError("give --out for a recording of checkpoint files")
    out = Path(out) if out else source.run_dir / "recording"
    probe_ds, probe_spec = select_probe(source, probe, probe_seed=probe_seed, probe_split=probe_split)
    if folds > len(probe_ds):
        raise UserError(f"--folds {folds} exceeds the {len(probe_ds)} probe images")
    raw_n = min(raw_n, len(probe_ds))
    pp = preprocess_for(source.model["name"], preprocess, pretrained=model is not None, in_chans=probe_ds.in_chans)
    if source.official:  # the official code normalises CIFAR-100 with CIFAR-10's values (given --mean/--std win)
        pp = {"mean": OFFICIAL_MEAN, "std": OFFICIAL_STD, **(pp or {})}
    writer = RecordingWriter(out, _header(source, probe_spec, raw_n=raw_n, folds=folds, precision=precision,
                                          taps=taps, preprocess=pp,
                                          order=probe_loader(probe_ds, batch_size, "cpu").order()))
    if source.run_dir is None and not source.model["name"].startswith("onnx:"):
        build_model(ModelConfig.from_dict(source.model))  # a model that cannot be built fails before anything is made
    done_box: list[Any] = [None]
    if info.main:
        writer.open()
        try:
            _refuse_other_files(source, writer, overwrite)
        except BaseException:
            writer.close()
            raise
        done_box[0] = writer.done
    try:
        if info.enabled:
            import torch.distributed as dist

            dist.broadcast_object_list(done_box, src=0)
            writer.done = done_box[0]
        return _sweep(source, writer, probe_ds, info, dev, t_start, taps=taps, raw_n=raw_n, folds=folds,
                      batch_size=batch_size, precision=precision, progress=progress, tqdm=tqdm, preprocess=pp)
    finally:
        if info.main:
            writer.close()


def _refuse_other_files(source: SweepSource, writer: RecordingWriter, overwrite: bool) -> None:
    """Checkpoint files from elsewhere recorded into a folder that holds the recording of other files at the same
    epochs: refused unless ``overwrite`` (a run's own checkpoints that changed are simply recorded again)."""
    if source.run_id is not None or overwrite:
        return
    other = []
    for epoch, path in source.jobs:
        entry = writer.done.get(epoch)
        if entry and entry.get("checkpoint_sha256") and entry["checkpoint_sha256"] != file_sha256(path):
            other.append(f"epoch {epoch}: {entry.get('checkpoint')}")
    if other:
        raise RefusedError(f"{writer.out} holds the recording of other files ({'; '.join(other[:3])}); choose "
                           "another --out, or pass --overwrite to record these files in their place")


def _sweep(source: SweepSource, writer: RecordingWriter, probe_ds: ImageSet, info, dev: torch.device,
           t_start: float, *, taps, raw_n: int, folds: int, batch_size: int, precision: str, progress: bool,
           tqdm, preprocess: dict[str, Any] | None = None) -> SweepResult:
    result = SweepResult(out=writer.out)
    mine = [(e, p) for i, (e, p) in enumerate(source.jobs) if i % info.world_size == info.rank]
    loader = probe_loader(probe_ds, batch_size, dev, **(preprocess or {}))
    bar = tqdm(mine, desc="collect", unit="ckpt", disable=not progress or not info.main)
    new_entries: dict[int, dict[str, Any]] = {}
    for epoch, path in bar:
        bar.set_postfix_str(path.name)
        try:
            sha = file_sha256(path) if path.is_file() else None
            why = writer.check(epoch, sha) if sha is not None else "not recorded"
            if why is None:
                result.skipped.append(epoch)
                continue
            model, ckpt = _load_model(path, source.model)
            if source.run_id and ckpt.get("run_id") and ckpt["run_id"] != source.run_id:
                raise CheckpointError(f"{path}: belongs to run {ckpt['run_id']}, not to {source.run_id} "
                                      "(config.json)")
        except CheckpointError as e:
            result.failed.append((str(path), str(e)))
            bar.write(f"skipped: {e}")
            continue
        if epoch in writer.done:
            result.rerecorded.append((epoch, why))
        stats, raw, tap_list = record_checkpoint(model.to(dev), loader, taps=taps, raw_n=raw_n, folds=folds,
                                                 device=dev, precision=precision)
        entry = writer.add(epoch, stats, raw, [t.record() for t in tap_list], checkpoint=str(path),
                           checkpoint_sha256=sha, write_manifest=not info.enabled)
        new_entries[epoch] = entry
        result.recorded.append(epoch)
        result.images += len(probe_ds)
    if info.enabled:  # rank 0 gathers what every rank recorded and writes the manifest once
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (new_entries, writer.manifest["taps"], result.failed))
        result.failed = [f for _, _, failed in gathered for f in failed]
        for entries, tap_list, _ in gathered:
            writer.done.update(entries)
            writer.manifest["taps"] = writer.manifest["taps"] or tap_list
        if info.main:
            writer.write_manifest()
        dist.barrier()
    elif not writer.path.exists():
        writer.write_manifest()
    result.seconds = time.perf_counter() - t_start
    return result


class OnlineRecorder:
    """A training callback that records every selected tap over the run's probe set at each checkpoint epoch,
    into ``RUN/recording`` (the same recording a later ``stripe collect RUN`` writes, equal to it).

    At the start (or resume) of training it records any kept checkpoint not yet recorded, so a crash
    between saving a checkpoint and recording it loses nothing that is still on disk.
    """

    def __init__(self, *, out: str | Path | None = None, taps: str | Sequence[str] = "*", raw_n: int = 256,
                 folds: int = 10, batch_size: int | None = None) -> None:
        self.out, self.taps, self.raw_n, self.folds, self.batch_size = out, taps, raw_n, folds, batch_size
        self.writer: RecordingWriter | None = None
        self.seconds = 0.0
        self.loader: Loader | None = None

    def on_train_start(self, state) -> None:
        """Open (lock) the recording and catch up on kept checkpoints not recorded yet."""
        cfg = state.cfg
        info = read_run(state.run_dir)
        source = SweepSource([], info["model"], cfg.dataset, cfg.data_root, state.run_dir, info)
        out = Path(self.out) if self.out else state.run_dir / "recording"
        probe = state.data.probe
        raw_n = min(self.raw_n, len(probe))
        if self.folds > len(probe):
            raise UserError(f"--record-folds {self.folds} exceeds the {len(probe)} probe images")
        self.writer = RecordingWriter(out, _header(source, state.data.eval.probe_spec.to_dict(), raw_n=raw_n,
                                                   folds=self.folds, precision=cfg.precision, taps=self.taps,
                                                   order=probe_loader(probe, 1, "cpu").order())).open()
        self.raw_n = raw_n
        self.loader = probe_loader(probe, self.batch_size or cfg.eval_batch_size, state.device,
                                   channels_last=cfg.channels_last)
        for epoch, path in list_checkpoints(state.run_dir):
            sha = file_sha256(path)
            if not self.writer.is_done(epoch, sha):
                model, _ = load_weights(path, info["model"], map_location="cpu")
                self._record(model.to(state.device), epoch, path, sha, cfg.precision, state.device)

    def on_checkpoint(self, state) -> None:
        """Record the model as it is at this checkpoint (the file was just written)."""
        if self.writer is None:
            self.on_train_start(state)
        self._record(state.model, state.epoch, state.checkpoint, file_sha256(state.checkpoint), state.cfg.precision,
                     state.device)

    def _record(self, model: nn.Module, epoch: int, path: Path, sha: str, precision: str, dev: torch.device) -> None:
        t0 = time.perf_counter()
        stats, raw, tap_list = record_checkpoint(model, self.loader, taps=self.taps, raw_n=self.raw_n,
                                                 folds=self.folds, device=dev, precision=precision)
        self.writer.add(epoch, stats, raw, [t.record() for t in tap_list], checkpoint=str(path),
                        checkpoint_sha256=sha)
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Release the recording's lock (called when training ends, however it ends)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
