"""Where a recording's weights come from: a training run's checkpoints, checkpoint files of any format, or another
model with its weights file (``stripe collect``'s sources), checked before anything is created.

Checkpoint files from elsewhere are read once: :func:`resolve_weights` loads each (its model, epoch and what its
file implies, :class:`~stripe.train.LoadInfo`) and keeps the models for the sweep, which takes them
(:meth:`SweepSource.take`) instead of reading the files again."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .. import fsio
from ..errors import NotFoundError, UserError
from ..nn import ModelConfig, build_model, is_source, load_weights_file
from ..train import (CheckpointError, LoadInfo, epoch_from_name, file_sha256, list_checkpoints, load_model,
                     model_text, official_files, read_run)
from ..train.config import parse_epoch_spec, epoch_matches


@dataclass
class SweepSource:
    """Where a sweep's weights come from: (epoch, file) jobs, the model config, the data set, the run if any."""

    jobs: list[tuple[int, Path]]
    model: dict[str, Any]
    dataset: str
    data_root: str | None
    run_dir: Path | None = None
    run_info: dict[str, Any] | None = None
    model_from: str = ""  # where the model config came from, in words (what collect says it inferred)
    dataset_from: str = ""  # why this data set, in words
    load_info: LoadInfo | None = None  # what the files from elsewhere imply: data set, preprocessing of the inputs
    loaded: dict[Path, nn.Module] = field(default_factory=dict, repr=False)  # models already read, by file

    @property
    def preprocess(self) -> dict[str, Any]:
        """The preprocessing the files imply (:attr:`LoadInfo.preprocess`; the official code's normalisation), or
        none."""
        return dict(self.load_info.preprocess) if self.load_info is not None else {}

    def take(self, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        """The model of ``path`` and what its file says (run id, epoch): the one read while resolving (handed over
        once, then forgotten), else read now (:func:`load_checkpoint_model`)."""
        model = self.loaded.pop(path, None)
        if model is None:
            return load_checkpoint_model(path, self.model)
        return model, {"epoch": model.load_info.epoch, "run_id": model.load_info.extra.get("run_id")}

    @property
    def run_id(self) -> str | None:
        """The run id of a training run's checkpoints (None for files from elsewhere)."""
        if self.run_info is None:
            return None
        return self.run_info.get("run_id") or "legacy:" + self.run_info["probe"]["hash"][:16]


def parse_checkpoint_spec(spec: str | None, available: list[int]) -> list[int]:
    """The epochs of ``available`` that ``spec`` selects (the one grammar: 'all' (default), 'last', 'every:K'
    (plus the last), epoch numbers, comma-separated); an epoch that is not there is refused."""
    if spec is not None and not str(spec).strip():  # '' is not 'all': train refuses it too
        parse_epoch_spec(spec, "--checkpoints")
    if not available:
        return []
    if spec in (None, "all"):
        return available
    terms = parse_epoch_spec(spec, "--checkpoints")
    last = available[-1]
    wanted = [int(t) for t in terms if t.isdigit()]
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserError(f"--checkpoints: no checkpoint for epoch(s) {missing}; available: {available}")
    every = any(t.startswith("every:") for t in terms)
    return [e for e in available if epoch_matches(terms, e, last) or (every and e == last)]


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


def resolve_weights(run_dir: str | Path | None, *, checkpoints: str | Sequence[str | Path] | None,
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
            named = epoch_from_name(weights)
            return SweepSource([(named if named is not None else 1, Path(weights))], model_config, dataset, data_root,
                               model_from=f"--model, weights {weights}", dataset_from="--dataset")
        checkpoints = files
    elif weights is not None or num_classes is not None:
        raise UserError("--weights and --num-classes go with --model NAME")
    if run_dir is not None and not (Path(run_dir) / "config.json").is_file() and Path(run_dir).is_dir() \
            and any(Path(run_dir).glob("*.pth.tar")):
        if checkpoints not in (None, "all"):
            raise UserError(f"{run_dir} is a run folder of the official ASR code: it records all its checkpoint "
                            "files; --checkpoints does not apply")
        # checkpoint.pth.tar (the last epoch) and model_best.pth.tar (the best), read below like any --files
        checkpoints = official_files(run_dir)
        run_dir = None
    if run_dir is not None and Path(run_dir).is_dir() and not (Path(run_dir) / "config.json").is_file():
        raise NotFoundError(not_a_run(Path(run_dir)))
    if run_dir is not None:
        info = read_run(run_dir)
        paths = dict(list_checkpoints(run_dir))
        if not paths:
            raise NotFoundError(f"{run_dir}: the run has no checkpoints")
        spec = checkpoints if isinstance(checkpoints, str) or checkpoints is None else ",".join(map(str, checkpoints))
        epochs = parse_checkpoint_spec(spec, sorted(paths))
        return SweepSource([(e, paths[e]) for e in epochs], info["model"], dataset or info["train"]["dataset"],
                           data_root or info["train"].get("data_root"), Path(run_dir), info,
                           model_from=f"the run's config.json, {len(epochs)} checkpoint(s)",
                           dataset_from="--dataset" if dataset else "the run's")
    if not checkpoints or isinstance(checkpoints, str):
        raise UserError("without a run directory, give checkpoint files (--files) and the data set (--dataset)")
    files = [_check_file(p, "--files") for p in checkpoints]
    models: dict[Path, nn.Module] = {}
    for p in files:  # every file read once, its model checked here and kept for the sweep
        if p not in models:
            models[p] = load_model(p, model_config)
            models[p].load_info.raw = None  # the sweep needs the weights, not the rest of the file (optimizer state)
    infos = [models[p].load_info for p in files]
    model_from = infos[0].summary() + (f"; and {len(infos) - 1} more file(s) of the same model" if len(infos) > 1
                                       else "")
    cfg = infos[0].config
    for p, i in zip(files[1:], infos[1:]):
        if i.config != cfg:
            raise UserError(f"--files: {p} holds another model ({model_text(i.config)}) than {files[0]} "
                            f"({model_text(cfg)}); record each model into its own --out folder")
    # what the files imply (the official code's data set and normalisation): the first file that says anything
    hints = next((i for i in infos if i.dataset or i.preprocess), infos[0])
    dataset_from = "--dataset"
    if dataset is None:
        if hints.dataset is None:
            raise UserError("give the data set of the probe images (--dataset)")
        dataset, dataset_from = hints.dataset, f"{hints.dataset_from}; --dataset to change"
    jobs = []
    for i, (p, li) in enumerate(zip(files, infos)):
        named = epoch_from_name(p, any_number=True)
        jobs.append((li.epoch if li.epoch is not None else named if named is not None else i, p))
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
    kept = {p for _, p in jobs}  # a file left out (the same weights twice) is not recorded: its model goes now
    return SweepSource(sorted(jobs), cfg.to_dict(), dataset, data_root, model_from=model_from,
                       dataset_from=dataset_from, load_info=hints,
                       loaded={p: m for p, m in models.items() if p in kept})


#: what weights files are called, to recognise a folder of them
WEIGHT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin", ".safetensors")


def not_a_run(folder: Path) -> str:
    """Why ``folder`` (no ``config.json``) cannot be recorded as a run, and the way forward (``--files``)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if files:
        shown = " ".join(str(p) for p in files[:2]) + (" …" if len(files) > 2 else "")
        return (f"{folder}: a folder of {len(files)} weights file(s), not a stripe run (no config.json); record them "
                f"with `stripe collect --files {shown} --out REC` (the model is read from the files; --dataset names "
                "the probe's data set)")
    if (folder / "log.txt").is_file():
        return (f"{folder}: a run folder of the official ASR code with only its log.txt (no *.pth.tar checkpoint): "
                "nothing to record; `stripe figures` draws its learning curves, and checkpoint files from elsewhere "
                "record with `stripe collect --files FILE … --out REC`")
    return (f"{folder}: not a run directory (no config.json); checkpoint files from elsewhere record with "
            "`stripe collect --files FILE … --out REC`")


def _check_file(path: str | Path, option: str) -> Path:
    """``path`` as a Path when it is a readable file; a one-line error naming ``option`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {p}: is a folder, not a weights or checkpoint file")
    if not p.is_file():
        raise NotFoundError(f"{option} {p}: no such file")
    return p


def load_checkpoint_model(path: Path, model_config: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
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


