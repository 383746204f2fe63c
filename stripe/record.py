"""Hook collection: the ``Recorder`` context manager and the checkpoint sweep (``stripe collect``).

Recording hooks the taps of the attention modules (``…attn.tap`` = the attention vector,
"after"; ``…attn.tap_in`` = the pooled input that feeds it, "before"), never module internals.
Hooks only stash the tapped [B, C] tensors; after each forward the recorder reduces all taps of
one shape in one batched call (a few kernels per forward, not a few per tap), keeps per-batch
moments on the device, and merges them exactly (Chan) in float64 on the CPU at the end.
"""
from __future__ import annotations

import fnmatch
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__, fsio
from .asr import ASRNorm
from .attention import CBAM, DIACell, ECA, IEGate, SE, SPA, SRM, Tap
from .streaming import ChannelStats, batch_moments, stats_to_table, write_stats_parquet

KINDS = ("after", "before")
_ATTN_NAMES = {SE: "se", ECA: "eca", CBAM: "cbam", SRM: "srm", IEGate: "ie", SPA: "spa", DIACell: "dia"}
_STAGE = re.compile(r"(?:^|\.)layer(\d+)(?:\.(\d+))?")


@dataclass
class TapInfo:
    """Where a tap sits: its key (``<module>.tap`` or ``<module>.tap[i]`` for a shared module's call i)."""

    key: str
    module: str
    attn: str
    asr: bool
    stage: int | None
    block: int | None
    depth: int | None
    call: int | None
    channels: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _unwrap_for_recording(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if hasattr(model, "_orig_mod"):  # unlike train.unwrap: hooks would not fire inside the compiled graph
        raise ValueError("Recorder: the model is wrapped by torch.compile, whose graphs skip Python hooks; "
                         "record the original module (model._orig_mod) instead")
    return model


@dataclass
class _TapPoint:
    module_name: str  # the attention module's path, e.g. layer1.0.attn
    attn: str
    asr: bool


def find_taps(model: nn.Module) -> dict[str, _TapPoint]:
    """Every attention module that has a ``tap``, by module path, with its type and ASR flag."""
    model = _unwrap_for_recording(model)
    asr_gates = {id(m.attn) for m in model.modules() if isinstance(m, ASRNorm)}
    asr_cells = {id(m.asr_attn) for m in model.modules() if hasattr(m, "asr_attn")}
    found = {}
    for name, m in model.named_modules():
        if isinstance(getattr(m, "tap", None), Tap) and type(m) in _ATTN_NAMES:
            found[name] = _TapPoint(name, _ATTN_NAMES[type(m)], id(m) in asr_gates or id(m) in asr_cells)
    return found


def select_taps(points: dict[str, _TapPoint], select: str | Sequence[str]) -> list[str]:
    """Module paths matching ``select``: ``"*"``, globs on the path, an attention type (``"se"``),
    ``"stage:2"``, ``"asr"`` or ``"attention"`` (the non-ASR ones); several selectors are OR-ed."""
    selectors = [select] if isinstance(select, str) else list(select)
    chosen = []
    for name, p in points.items():
        stage = _STAGE.search(name)
        for s in selectors:
            if (s == "*" or fnmatch.fnmatchcase(name, s) or fnmatch.fnmatchcase(f"{name}.tap", s) or s == p.attn
                    or (s == "asr" and p.asr) or (s == "attention" and not p.asr)
                    or (s.startswith("stage:") and stage is not None and s[6:] == stage.group(1))):
                chosen.append(name)
                break
    if not chosen:
        sample = ", ".join(list(points)[:4]) or "none: the model has no attention taps"
        raise ValueError(f"no tap matches {selectors!r} (taps look like: {sample}{' …' if len(points) > 4 else ''})")
    return chosen


class Recorder:
    """Record the attention ("after") and pooled input ("before") of chosen taps over forwards.

    ::

        with Recorder(model, "*", raw_n=256) as rec:
            for x, _ in loader:
                model(x)
        stats = rec.stats()            # {(tap key, kind): ChannelStats}
        raw = rec.raw()                # {"<key>/<kind>": float16 ndarray [raw_n, C]}

    The model is put in eval mode for the duration (BN statistics never change) and restored
    after; every hook is removed in ``finally``, user hooks are left alone. An ASR tap gives one
    vector per forward (its input is ψ): it is broadcast to the batch, constant by construction.
    """

    def __init__(self, model: nn.Module, taps: str | Sequence[str] = "*", *, raw_n: int = 0,
                 raw_dtype: torch.dtype = torch.float16) -> None:
        self.model = _unwrap_for_recording(model)
        self.raw_dtype = raw_dtype
        points = find_taps(self.model)
        self.points = {n: points[n] for n in select_taps(points, taps)}
        self.raw_n = raw_n
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._moments: dict[tuple[str, str], list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._raw: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        self._raw_count: dict[tuple[str, str], int] = defaultdict(int)
        self._stash: list[tuple[str, str, torch.Tensor]] = []
        self._info: dict[str, TapInfo] = {}
        self._batch = 0
        self._was_training = False

    # -- hooks
    def _tap_hook(self, name: str, kind: str):
        point = self.points[name]

        def hook(module: Tap, inputs, output: torch.Tensor) -> None:
            a = output.detach()
            if a.dim() != 2:
                raise RuntimeError(f"tap {name}.{'tap' if kind == 'after' else 'tap_in'} gave shape "
                                   f"{tuple(a.shape)}; expected [B, C]")
            key = f"{name}.tap" if module.index is None else f"{name}.tap[{module.index}]"
            if kind == "after" and key not in self._info:
                self._info[key] = _tap_info(key, point, module.index, a.shape[1])
            self._stash.append((key, kind, a))
        return hook

    def _pre_forward(self, module, args, kwargs) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        self._batch = int(x.shape[0])
        self._stash.clear()

    def _post_forward(self, module, args, output) -> None:
        self.reduce()

    def reduce(self) -> None:
        """Reduce the stashed tensors of the last forward to per-tap moments (batched by shape)."""
        groups: dict[tuple, list[tuple[str, str, torch.Tensor]]] = defaultdict(list)
        for key, kind, a in self._stash:
            if a.shape[0] == 1 and self._batch > 1:  # input-independent (ASR): the same for every image
                self._moments[(key, kind)].append(_constant_moments(a[0], self._batch))
                a = a.expand(self._batch, -1)
            else:
                groups[(tuple(a.shape), a.dtype, a.device)].append((key, kind, a))
            if self._raw_count[(key, kind)] < self.raw_n:
                take = min(self.raw_n - self._raw_count[(key, kind)], a.shape[0])
                self._raw[(key, kind)].append(a[:take].to(self.raw_dtype))
                self._raw_count[(key, kind)] += take
        for items in groups.values():
            m = batch_moments(torch.stack([a for _, _, a in items]))  # [T, B, C] -> [T, C]
            for t, (key, kind, _) in enumerate(items):
                self._moments[(key, kind)].append({k: (v if v.dim() == 0 else v[t]) for k, v in m.items()})
        self._stash.clear()

    def __enter__(self) -> "Recorder":
        self._was_training = self.model.training
        self.model.eval()
        try:
            for name in self.points:
                attn = self.model.get_submodule(name)
                self._handles.append(attn.tap.register_forward_hook(self._tap_hook(name, "after")))
                self._handles.append(attn.tap_in.register_forward_hook(self._tap_hook(name, "before")))
            self._handles.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._post_forward))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.model.train(self._was_training)

    def __exit__(self, *exc) -> None:
        self._remove()

    # -- results
    @property
    def taps(self) -> list[TapInfo]:
        """The taps seen, in forward order."""
        return list(self._info.values())

    def stats(self) -> dict[tuple[str, str], ChannelStats]:
        """Exact per-channel statistics of every (tap key, kind) over all recorded images."""
        return {k: ChannelStats.from_moments_list(v) for k, v in self._moments.items()}

    def raw(self) -> dict[str, np.ndarray]:
        """The first ``raw_n`` recorded vectors of every (tap, kind), [n, C] in ``raw_dtype``, keyed ``<key>/<kind>``."""
        return {f"{key}/{kind}": torch.cat(v).cpu().numpy() for (key, kind), v in self._raw.items()}


def _constant_moments(v: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Exact moments of n identical rows v [C] (no rounding from averaging equal numbers)."""
    v = v.to(torch.promote_types(v.dtype, torch.float32))
    norm = torch.linalg.vector_norm(v)
    unit = v / torch.where(norm > 0, norm, torch.ones_like(norm))
    return {"count": torch.full((), n, dtype=torch.int64, device=v.device), "mean": v, "m2": torch.zeros_like(v),
            "min": v, "max": v, "unit_sum": unit * n}


def _tap_info(key: str, point: _TapPoint, call: int | None, channels: int) -> TapInfo:
    m = _STAGE.search(point.module_name)
    stage = int(m.group(1)) if m else None
    block = int(m.group(2)) if m and m.group(2) is not None else call
    return TapInfo(key=key, module=point.module_name, attn=point.attn, asr=point.asr, stage=stage, block=block,
                   depth=None, call=call, channels=channels)


def _assign_depth(taps: list[TapInfo], model: nn.Module) -> None:
    """Global block index: blocks of earlier stages + the block index."""
    sizes = {int(n[5:]): m.num_blocks for n, m in model.named_children() if n.startswith("layer")}
    for t in taps:
        if t.stage is not None and t.block is not None:
            t.depth = sum(sizes.get(s, 0) for s in range(1, t.stage)) + t.block


# --------------------------------------------------------------------------- the sweep
RECORDING_FORMAT = "stripe-recording/1"


@dataclass
class SweepResult:
    """What a sweep did: the recording folder, checkpoints recorded now, skipped (already done), failed."""

    out: Path
    recorded: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0


def _epoch_of(path: Path, position: int) -> int:
    m = re.search(r"(\d+)(?!.*\d)", path.stem)
    return int(m.group(1)) if m else position


def parse_checkpoint_spec(spec: str | None, available: list[int]) -> list[int]:
    """'all' (default), 'last', 'every:K' (plus the last), or a comma list of epochs."""
    if spec in (None, "", "all"):
        return available
    if spec == "last":
        return available[-1:]
    if spec.startswith("every:"):
        k = int(spec[6:])
        return [e for e in available if e % k == 0 or e == available[-1]]
    wanted = [int(t) for t in spec.split(",") if t.strip()]
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(f"no checkpoint for epoch(s) {missing}; available: {available}")
    return wanted


def collect(run_dir: str | Path | None = None, *, checkpoints: str | Sequence[str | Path] | None = None,
            model_config: dict[str, Any] | None = None, dataset: str | None = None, data_root: str | None = None,
            out: str | Path | None = None, probe: str = "run", probe_seed: int = 0, taps: str | Sequence[str] = "*",
            raw_n: int = 256, batch_size: int = 500, device: str | None = "auto", precision: str = "fp32",
            progress: bool = True) -> SweepResult:
    """Record every tap over the probe set at each checkpoint; writes a recording directory.

    Either ``run_dir`` (a training run: its checkpoints, data and probe set) or a list of
    checkpoint files in ``checkpoints`` plus ``model_config`` and ``dataset`` (checkpoints from
    elsewhere). ``probe``: ``run`` (the run's probe set), ``test`` or ``train`` (a whole split), or
    a number of images (a stratified subset of the test split). Resumable and atomic; under
    torchrun the checkpoints are shared out between ranks.
    """
    from tqdm.auto import tqdm

    from .checkpoint import CheckpointError, list_checkpoints, load_weights
    from .data import Loader, load_dataset, probe_hash, probe_indices, stratified_indices, take
    from .models import ModelConfig
    from .train import autocast, dist_from_env, init_distributed, read_run, resolve_device, run_probe

    t_start = time.perf_counter()
    info = dist_from_env()
    dev = resolve_device(device, info)
    init_distributed(info, dev)

    run_info: dict[str, Any] | None = None
    if run_dir is not None:
        run_info = read_run(run_dir)
        available = [e for e, _ in list_checkpoints(run_dir)]
        if not available:
            raise FileNotFoundError(f"{run_dir}: the run has no checkpoints")
        paths = {e: p for e, p in list_checkpoints(run_dir)}
        epochs = parse_checkpoint_spec(checkpoints if isinstance(checkpoints, str) or checkpoints is None
                                       else ",".join(map(str, checkpoints)), available)
        jobs = [(e, paths[e]) for e in epochs]
        model_cfg = run_info["model"]
        dataset = dataset or run_info["train"]["dataset"]
        data_root = data_root or run_info["train"]["data_root"]
        out = Path(out) if out else Path(run_dir) / "recording"
    else:
        if not checkpoints or isinstance(checkpoints, str) or model_config is None or dataset is None:
            raise ValueError("without a run directory, give checkpoint files, a model config and a dataset")
        files = [Path(p) for p in checkpoints]
        jobs = [(_epoch_of(p, i), p) for i, p in enumerate(files)]
        if len({e for e, _ in jobs}) != len(jobs):
            jobs = [(i, p) for i, (_, p) in enumerate(jobs)]
        model_cfg = ModelConfig.from_dict(model_config).to_dict()
        if out is None:
            raise ValueError("give --out for a recording of checkpoint files")
        out = Path(out)

    test_full = load_dataset(dataset, "test", root=data_root)
    if probe == "run" and run_info:
        try:
            probe_ds = run_probe(run_info, test_full)
        except ValueError as e:
            raise ValueError(f"{run_dir}: {e}") from None
        idx = probe_indices(test_full, n=run_info["probe"]["n"], seed=run_info["probe"]["seed"])
        probe_desc = {"split": "test", "n": len(idx), "seed": run_info["probe"]["seed"]}
    elif probe == "run":  # checkpoint files from elsewhere: the default probe set
        idx = probe_indices(test_full, n=1000, seed=probe_seed)
        probe_ds, probe_desc = take(test_full, idx), {"split": "test", "n": len(idx), "seed": probe_seed}
    elif probe in ("test", "train"):
        probe_ds = test_full if probe == "test" else load_dataset(dataset, "train", root=data_root)
        idx = np.arange(len(probe_ds))
        probe_desc = {"split": probe, "n": len(probe_ds), "seed": None}
    elif probe.isdigit():
        idx = stratified_indices(test_full.labels, int(probe), probe_seed)
        probe_ds, probe_desc = take(test_full, idx), {"split": "test", "n": len(idx), "seed": probe_seed}
    else:
        raise ValueError(f"unknown probe {probe!r}: use run, test, train or a number of images")
    probe_desc["hash"] = probe_hash((test_full if probe_desc["split"] == "test" else probe_ds).source_hash, idx)
    probe_desc["raw_n"] = min(raw_n, len(probe_ds))

    manifest_path = out / "manifest.json"
    manifest = {"format": RECORDING_FORMAT, "stripe_version": __version__, "model": model_cfg,
                "run_dir": str(run_dir) if run_dir else None, "dataset": dataset, "probe": probe_desc,
                "precision": precision, "taps": [], "checkpoints": []}
    done: dict[int, dict[str, Any]] = {}
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        for k in ("model", "probe", "precision"):
            if old.get(k) != manifest[k]:
                raise ValueError(f"{manifest_path}: recorded with a different {k}; choose another --out")
        manifest["taps"] = old["taps"]
        done = {c["epoch"]: c for c in old["checkpoints"] if (out / c["stats"]).exists()}

    result = SweepResult(out=out)
    mine = [(e, p) for i, (e, p) in enumerate(jobs) if i % info.world_size == info.rank]
    todo = [(e, p) for e, p in mine if e not in done]
    result.skipped = [e for e, _ in mine if e in done]
    loader = Loader(probe_ds, batch_size, train=False, device=dev)
    bar = tqdm(todo, desc="collect", unit="ckpt", disable=not progress or not info.main)
    new_entries: dict[int, dict[str, Any]] = {}
    for epoch, path in bar:
        bar.set_postfix_str(path.name)
        try:
            model, _ = load_weights(path, model_cfg, map_location="cpu")
        except CheckpointError as e:
            result.failed.append((str(path), str(e)))
            bar.write(f"skipped: {e}")
            continue
        model.to(dev)
        with Recorder(model, taps, raw_n=raw_n) as rec, torch.no_grad():
            for x, _ in loader:
                with autocast(dev, precision):
                    model(x)
        taps_info = rec.taps
        _assign_depth(taps_info, model)
        stats_rel, raw_rel = f"stats/epoch_{epoch:04d}.parquet", f"raw/epoch_{epoch:04d}.safetensors"
        write_stats_parquet(out / stats_rel, stats_to_table(epoch, rec.stats()))
        _save_safetensors(rec.raw(), out / raw_rel)
        entry = {"epoch": epoch, "stats": stats_rel, "raw": raw_rel, "checkpoint": str(path)}
        new_entries[epoch] = entry
        result.recorded.append(epoch)
        result.images += len(probe_ds)
        if not manifest["taps"]:
            manifest["taps"] = [t.to_dict() for t in taps_info]
        if not info.enabled:  # single process: the manifest grows checkpoint by checkpoint
            done[epoch] = entry
            _write_manifest(manifest_path, manifest, done)
    if info.enabled:  # rank 0 gathers what every rank recorded and writes the manifest once
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (new_entries, manifest["taps"], result.failed))
        result.failed = [f for _, _, failed in gathered for f in failed]
        for entries, tap_list, _ in gathered:
            done.update(entries)
            manifest["taps"] = manifest["taps"] or tap_list
        if info.main:
            _write_manifest(manifest_path, manifest, done)
        dist.barrier()
    elif not manifest_path.exists():
        _write_manifest(manifest_path, manifest, done)
    result.seconds = time.perf_counter() - t_start
    return result


def _write_manifest(path: Path, manifest: dict[str, Any], done: dict[int, dict[str, Any]]) -> None:
    manifest["checkpoints"] = [done[e] for e in sorted(done)]
    fsio.write_json(path, manifest)


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save

    fsio.write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))
