"""The checkpoint sweep (``stripe collect``); recording during training is :mod:`.online`.

Both write the same recording (:mod:`stripe.record.format`) through :func:`record_checkpoint`:
one forward pass per checkpoint over the probe set, every selected tap at once. A sweep is
resumable (checkpoints already recorded from the same file are skipped), atomic, locked against a
second writer, and under torchrun shares the checkpoints out between ranks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, Loader, select_probe
from ..errors import RefusedError, UserError
from ..gates import Gate
from ..nn import ModelConfig, build_model, preprocess_for
from ..train import CheckpointError, file_sha256, inferred_text, preprocess_origin, run_eval_sets
from ..device import autocast, dist_from_env, init_distributed, resolve_device
from .config import RecordConfig
from .format import FoldStats, RecordingWriter
from .recorder import Recorder
from .sources import SweepSource, resolve_weights


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
    inferred: str = ""  # what was inferred about the model, data set, preprocessing and probe (printed first)


def record_checkpoint(model: nn.Module, probe: ImageSet | Loader, record: RecordConfig = RecordConfig(), *,
                      device: torch.device | None = None, precision: str = "fp32", channels_last: bool = False,
                      preprocess: dict[str, Any] | None = None
                      ) -> tuple[dict[tuple[str, str], FoldStats], dict[str, np.ndarray], list[Gate]]:
    """One forward pass of ``model`` over the probe images with every selected tap (``record.taps``) hooked.

    Returns per-fold statistics, the first ``record.raw_n`` vectors of every (tap, kind), and the taps.
    The model is left in the mode it was in; its BN statistics never change. ``preprocess`` are
    :class:`~stripe.data.Loader` options (a model's own resize/crop/normalisation); with ``taps``
    ``auto``, gates are detected on the first two probe images.
    """
    dev = device or next(model.parameters()).device
    loader = probe if isinstance(probe, Loader) else probe_loader(probe, record.batch_size, dev,
                                                                  channels_last=channels_last, **(preprocess or {}))
    example = next(iter(loader))[0][:2] if "auto" in record.taps else None
    with Recorder(model, record.selectors, raw_n=record.raw_n, folds=record.folds, example=example) as rec, \
            torch.no_grad():
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


def recording_header(source: SweepSource, probe_spec: dict[str, Any], record: RecordConfig, *, precision: str,
                     preprocess: dict[str, Any] | None = None, order: list[int] | None = None) -> dict[str, Any]:
    """The identity and description of a recording (its manifest's header), the same online and offline."""
    probe = {**probe_spec, "raw_n": record.raw_n, "order": dict(PROBE_ORDER)}
    if preprocess is not None:  # part of the probe's identity: the images the model saw
        probe["preprocess"] = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
    header = {"model": source.model, "source_run_id": source.run_id,
              "run_dir": str(source.run_dir) if source.run_dir else None, "dataset": source.dataset,
              "probe": probe, "folds": record.folds, "precision": precision, "taps_selector": list(record.taps)}
    if order is not None:  # position i of the recorded order is in fold i mod K: what rebuilds the folds
        header["probe_order"] = order
    return header


def collect(run_dir: str | Path | None = None, record: RecordConfig | None = None, *,
            checkpoints: str | Sequence[str | Path] | None = None, model_config: dict[str, Any] | str | Path | None = None,
            dataset: str | None = None, data_root: str | None = None, out: str | Path | None = None, probe: str = "run",
            probe_seed: int = 0, probe_split: str = "train", device: str | None = "auto", precision: str = "fp32",
            progress: bool = True, model: str | None = None, weights: str | Path | None = None,
            num_classes: int | None = None, preprocess: str | dict[str, Any] | None = "auto", overwrite: bool = False,
            inform: Callable[[str], None] | None = None, **record_options: Any) -> SweepResult:
    """Record every tap over the probe set at each checkpoint; writes a recording directory.

    Either ``run_dir`` (a training run: its checkpoints, data and probe set), or a list of
    checkpoint files in ``checkpoints`` plus ``model_config`` and ``dataset`` (checkpoints from
    elsewhere), or a model name ``model`` (``timm:seresnet18``, ``torchvision:NAME`` …) with its
    ``weights`` file (or ``checkpoints`` files), ``num_classes`` and ``dataset``. ``taps="auto"``
    also records gates found by the generic detector. ``record`` (a :class:`~stripe.record.RecordConfig`, or
    its fields as keyword arguments: ``taps``, ``raw_n``, ``folds``, ``batch_size``) says what each tap
    records; ``model_config`` may be a JSON file. ``preprocess``: see :func:`stripe.nn.preprocess_for`
    (``auto``: the model's own resize/crop/normalisation for ``model`` + ``weights``).
    Resumable and atomic; under torchrun the checkpoints are shared out between ranks. A checkpoint
    recorded before is recorded again when its files are damaged or missing (the result says why); a
    recording of *other* files at the same epochs (``--files``/``--weights``) is refused unless
    ``overwrite``. Everything is checked before the recording folder is created. What was inferred (model,
    data set, preprocessing, probe: :func:`stripe.train.inferred_text`) is passed to ``inform`` before the
    first checkpoint is recorded, and kept in the result.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if record is None:
        record = RecordConfig(**{k: v for k, v in record_options.items() if v is not None})
    elif record_options:
        raise UserError(f"give the recording options in record= or as keywords, not both: {sorted(record_options)}")
    if isinstance(model_config, (str, Path)):
        from .sources import read_model_config

        model_config = read_model_config(model_config)
    info = dist_from_env()
    dev = resolve_device(device, info)
    init_distributed(info, dev)
    source = resolve_weights(run_dir, checkpoints=checkpoints, model_config=model_config, dataset=dataset,
                            data_root=data_root, model=model, weights=weights, num_classes=num_classes)
    if out is None and source.run_dir is None:
        raise UserError("give --out for a recording of checkpoint files")
    out = Path(out) if out else source.run_dir / "recording"
    probe_ds, probe_spec = _probe(source, probe, probe_seed=probe_seed, probe_split=probe_split)
    record = record.fit_probe(len(probe_ds))
    pp = preprocess_for(source.model["name"], preprocess, pretrained=model is not None, in_chans=probe_ds.in_chans)
    if source.preprocess:  # what the files imply (the official normalisation); given --mean/--std win
        pp = {**source.preprocess, **(pp or {})}
    inferred = inferred_text(source.model, model_from=source.model_from, dataset=source.dataset,
                             dataset_from=source.dataset_from, images=probe_ds, preprocess=pp,
                             preprocess_from=preprocess_origin(source.model["name"], preprocess,
                                                               pretrained=model is not None,
                                                               load_info=source.load_info),
                             probe=probe_spec)
    writer = RecordingWriter(out, recording_header(source, probe_spec, record, precision=precision, preprocess=pp,
                                                   order=probe_loader(probe_ds, record.batch_size, "cpu").order()))
    if source.run_dir is None and not source.model["name"].startswith("onnx:"):
        build_model(ModelConfig.from_dict(source.model))  # a model that cannot be built fails before anything is made
    done_box: list[Any] = [None]
    if info.main and inform is not None:
        inform(inferred)
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
        result = _sweep(source, writer, probe_ds, info, dev, t_start, record, precision=precision,
                        progress=progress, tqdm=tqdm, preprocess=pp)
        result.inferred = inferred
        return result
    finally:
        if info.main:
            writer.close()


def _probe(source: SweepSource, probe: str = "run", *, probe_seed: int = 0,
           probe_split: str = "train") -> tuple[ImageSet, dict[str, Any]]:
    """The probe images and their spec: ``run`` (the run's own probe set; 1,000 training images for files from
    elsewhere), else :func:`stripe.data.select_probe`."""
    if probe == "run" and source.run_info is not None:
        try:
            _, data = run_eval_sets(source.run_info, data_root=source.data_root)
        except ValueError as e:
            raise UserError(f"{source.run_dir}: {e}") from None
        return data.probe, data.eval.probe_spec.to_dict()
    ds, spec = select_probe(source.dataset, "1000" if probe == "run" else probe, probe_split=probe_split,
                            probe_seed=probe_seed, data_root=source.data_root)
    return ds, spec.to_dict()


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
           t_start: float, record: RecordConfig, *, precision: str, progress: bool, tqdm,
           preprocess: dict[str, Any] | None = None) -> SweepResult:
    result = SweepResult(out=writer.out)
    mine = [(e, p) for i, (e, p) in enumerate(source.jobs) if i % info.world_size == info.rank]
    for _, p in set(source.jobs) - set(mine):  # another rank records these: their models, read while resolving, go
        source.loaded.pop(p, None)
    loader = probe_loader(probe_ds, record.batch_size, dev, **(preprocess or {}))
    bar = tqdm(mine, desc="collect", unit="ckpt", disable=not progress or not info.main)
    new_entries: dict[int, dict[str, Any]] = {}
    for epoch, path in bar:
        bar.set_postfix_str(path.name)
        try:
            sha = file_sha256(path) if path.is_file() else None
            why = writer.check(epoch, sha) if sha is not None else "not recorded"
            if why is None:
                result.skipped.append(epoch)
                source.loaded.pop(path, None)
                continue
            model, ckpt = source.take(path)
            if source.run_id and ckpt.get("run_id") and ckpt["run_id"] != source.run_id:
                raise CheckpointError(f"{path}: belongs to run {ckpt['run_id']}, not to {source.run_id} "
                                      "(config.json)")
        except CheckpointError as e:
            result.failed.append((str(path), str(e)))
            bar.write(f"skipped: {e}")
            continue
        if epoch in writer.done:
            result.rerecorded.append((epoch, why))
        stats, raw, tap_list = record_checkpoint(model.to(dev), loader, record, device=dev, precision=precision)
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
    elif not writer.path.exists() and writer.done:  # nothing recorded: no manifest, the new folder goes again
        writer.write_manifest()
    result.seconds = time.perf_counter() - t_start
    return result
