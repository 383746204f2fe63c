"""Load a model from any checkpoint this package reads: its own, a plain state dict, or the official ASR code's.

One path, each step once and on its way down: :func:`stripe.nn.read_weights` reads the file (``weights_only=True``)
and strips the wrapper prefixes; :func:`stripe.train.normalize_names` maps the official code's names (it saves
``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}`` with DataParallel's ``module.`` prefix and its own
module names); the config is the given one, the file's own, or :func:`stripe.nn.infer_config`'s; the weights are
checked against it (:func:`stripe.nn.state_mismatch`). Like torchvision's weights that carry their transforms,
the :class:`LoadInfo` a model carries says what its file implies beyond the weights: the data set (the official
code's CIFAR-10 or CIFAR-100, by the classes) and the preprocessing of its inputs (the official normalisation), so
the commands that load a model do not tell formats apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..gates import reparameterize
from ..nn import (CheckpointError, ModelConfig, build_model, infer_config, read_weights, state_mismatch, state_shapes,
                  variant_label)
from .official import (OFFICIAL_DATASETS, OFFICIAL_MEAN, OFFICIAL_PREPROCESS_FROM, OFFICIAL_STD, deployed_state,
                       normalize_names, official_input, stale_fused)


@dataclass
class LoadInfo:
    """What :func:`load_model` read and did: the file's format and naming, the config and where it came from,
    the epoch, the key mapping, and how the deployed model was made (``model.load_info``)."""

    path: str
    format: str  # "stripe-checkpoint", "official-checkpoint" or "state-dict"
    naming: str  # "stripe" or "official" (a baseline's names are the same in both)
    config: ModelConfig  # the file's model (before any fold)
    config_from: str  # "given", "file" or "inferred"
    epoch: int | None = None
    stripped_prefix: str | None = None
    renamed: int = 0  # keys renamed from the official names
    fused: int = 0  # official ASR norms whose fused_bn (the official fold) was set aside
    deployed: str | None = None  # how the deployed model was made, None when not asked
    deployed_config: ModelConfig | None = None  # the returned model's config when deployed was asked
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # the file's acc/best_acc, or its metrics row
    fused_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the fused_bn tensors
    raw: Any = field(default=None, repr=False)  # the loaded object itself (a stripe checkpoint: every field)
    dataset: str | None = None  # the data set the file implies (the official code's: CIFAR-10/100 by the classes)
    dataset_from: str | None = None  # why that data set, in words
    preprocess: dict[str, Any] = field(default_factory=dict)  # Loader options its inputs need (e.g. mean, std)
    preprocess_from: str | None = None  # where that preprocessing comes from, in words

    def summary(self) -> str:
        """One line: file, format, model, epoch and what was mapped."""
        c = self.config
        parts = [f"{self.path}: {self.format}", f"{c.arch} {variant_label(c.attn, c.asr, c.both)}, "
                 f"{c.num_classes} classes ({self.config_from} config)"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.stripped_prefix:
            parts.append(f"prefix {self.stripped_prefix!r} stripped")
        if self.naming == "official":
            parts.append(f"{self.renamed} official names mapped")
        if self.fused:
            parts.append(f"{self.fused} fused_bn set aside")
        if self.deployed:
            parts.append(f"deployed: {self.deployed}")
            if self.deployed_config is not None and self.deployed_config != self.config:
                d = self.deployed_config
                parts[-1] += f" -> {variant_label(d.attn, d.asr, d.both)}"
        return "; ".join(parts + self.notes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the fused tensors left out)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fused_state", "raw")}
        d["notes"], d["extra"], d["preprocess"] = list(self.notes), dict(self.extra), dict(self.preprocess)
        d["config"] = self.config.to_dict()
        d["deployed_config"] = None if self.deployed_config is None else self.deployed_config.to_dict()
        return d


def _given(config: ModelConfig | dict[str, Any], weights: dict[str, torch.Tensor]) -> ModelConfig:
    """The given config, with num_classes / in_chans left open taken from the file's head and stem."""
    cfg = ModelConfig.from_dict(config) if isinstance(config, dict) else config
    fill = {}
    if cfg.num_classes is None and "fc.weight" in weights:
        fill["num_classes"] = int(weights["fc.weight"].shape[0])
    if cfg.in_chans is None and "conv1.weight" in weights:
        fill["in_chans"] = int(weights["conv1.weight"].shape[1])
    return ModelConfig(**{**cfg.to_dict(), **fill}) if fill else cfg


def _describe(cfg: ModelConfig) -> str:
    return f"{cfg.arch} {variant_label(cfg.attn, cfg.asr, cfg.both)} with {cfg.num_classes} classes"


def load_model(path: str | Path, config: ModelConfig | dict[str, Any] | None = None, *, deployed: bool = False,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """A model from a checkpoint of this package, a plain state dict, or an official ASR checkpoint (eval mode).

    Without ``config`` the file's own config is used (this package's checkpoints) or it is inferred
    from the tensors (:func:`stripe.nn.infer_config`); a given ``config`` is checked
    against the file (``CheckpointError`` listing missing and unexpected keys). With ``deployed``
    the ASR norms are folded: from the file's ``fused_bn`` (the official fold) when it holds one,
    else by :func:`stripe.nn.reparameterize`. The model carries ``.config`` and ``.load_info``
    (a :class:`LoadInfo`, with the data set and preprocessing the file implies). The file is read once.
    """
    path = Path(path)
    wf = read_weights(path, map_location=map_location)
    state, fmt, file_cfg, epoch = wf.state, wf.format, wf.meta.get("model_config"), wf.meta.get("epoch")
    extra = {k: v for k, v in wf.meta.items() if k not in ("epoch", "model_config", "train_config")}
    if wf.key not in (None, "model", "state_dict"):
        extra["checkpoint_key"] = wf.key
    weights, fused, names = normalize_names(state)
    if config is not None:
        cfg, source = _given(config, weights), "given"
    elif file_cfg is not None:
        cfg, source = ModelConfig.from_dict(file_cfg), "file"
    else:
        try:
            cfg, source = infer_config(weights), "inferred"
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; give the model config") from None
    try:
        model = build_model(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model config cannot be built ({e})") from None
    cfg = model.config
    problem = state_mismatch(state_shapes(model.state_dict()), state_shapes(weights))
    if problem:
        hint = ""
        if source != "inferred":
            try:
                hint = f"; the file looks like {_describe(infer_config(weights).resolved())}"
            except ValueError:
                pass
        raise CheckpointError(f"{path}: the weights do not fit {_describe(cfg)} ({source} config): {problem}{hint}")
    model.load_state_dict(weights, strict=True)
    info = LoadInfo(path=str(path), format=fmt, naming=names["naming"], config=cfg, config_from=source, epoch=epoch,
                    stripped_prefix="".join(wf.stripped) or None, renamed=names["renamed"], fused=names["fused"],
                    extra=extra, fused_state=fused, raw=wf.raw)
    if fmt == "official-checkpoint":  # the one place a format says what the inputs are (collect and ablate read it)
        info.dataset = OFFICIAL_DATASETS.get(cfg.num_classes)
        info.dataset_from = f"from the file's {cfg.num_classes} classes" if info.dataset else None
        info.preprocess = {"mean": OFFICIAL_MEAN, "std": OFFICIAL_STD}
        info.preprocess_from = OFFICIAL_PREPROCESS_FROM
    ours = reparameterize(model) if fused and cfg.asr else None  # this package's fold, to judge the file's own
    stale = stale_fused(weights, fused, ours.state_dict()) if ours is not None else []
    if stale:  # said on every load: any work that deploys the file must not take its fused_bn for the fold
        info.notes.append(f"{len(stale)} fused_bn do not hold the official fold of the file's weights (stale: their "
                          f"running statistics or weights differ, e.g. {stale[0]}); stripe folds the file itself")
    if deployed:
        model, info.deployed = _deploy(model, cfg, weights, fused, stale, ours)
        info.deployed_config = model.config
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    model.eval()
    model.load_info = info
    return model


def _deploy(model: nn.Module, cfg: ModelConfig, weights: dict[str, torch.Tensor], fused: dict[str, torch.Tensor],
            stale: list[str], ours: nn.Module | None) -> tuple[nn.Module, str]:
    """The deployed model and how it was made: the official fused_bn when the file holds a valid one (none of it
    ``stale``), else our fold (``ours`` when already made)."""
    if not cfg.asr:
        return model, "nothing to fold (no ASR)"
    if fused and not stale:
        folded = build_model(cfg.folded())
        folded.load_state_dict(deployed_state(weights, fused), strict=True)
        return folded, "the file's fused_bn (the official fold)"
    return (ours if ours is not None else reparameterize(model)), "this package's fold"


def fold_vs_official(path: str | Path | nn.Module, images: Any = None) -> dict[str, Any]:
    """Max |Δ| between this package's fold of an official ASR checkpoint and the file's ``fused_bn``.

    ``path`` the file, or the model :func:`load_model` made of it (not read again). Per BN quantity (``weight``,
    ``bias``, ``running_mean``, ``running_var``) over every ASR norm; with ``images`` (uint8 [N, H, W, 3],
    normalised as the official test transform, or a float tensor [N, 3, H, W] as is) also the logits of the two
    deployed models (``logits``) and of the ASR model against this package's fold (``logits_asr_vs_fold``).
    """
    model = path if isinstance(path, nn.Module) else load_model(path)
    info = model.load_info
    if info.deployed:
        raise UserError(f"{info.path}: give the model as load_model reads it, not deployed (its fold is what is "
                        "compared)")
    if not info.fused:
        raise UserError(f"{info.path}: holds no fused_bn tensors (not an ASR checkpoint of the official code)")
    ours = reparameterize(model).eval()
    folded = ours.state_dict()
    prefixes = sorted({k.split(".fused_bn.")[0] for k in info.fused_state})
    out: dict[str, Any] = {"norms": len(prefixes), "stale": stale_fused(model.state_dict(), info.fused_state, folded)}
    for n in ("weight", "bias", "running_mean", "running_var"):
        out[n] = max((folded[f"{p}.{n}"] - info.fused_state[f"{p}.fused_bn.{n}"]).abs().max().item() for p in prefixes)
    if images is not None:
        x = images if torch.is_tensor(images) and images.is_floating_point() else official_input(images)
        # deployed as load_model(path, deployed=True) deploys it, from what was read
        theirs, out["deployed_from"] = _deploy(model, info.config, model.state_dict(), info.fused_state, out["stale"],
                                               ours)
        with torch.no_grad():
            y_ours, y_theirs, y_asr = ours(x), theirs.eval()(x), model(x)
        out["logits"] = (y_ours - y_theirs).abs().max().item()
        out["logits_asr_vs_fold"] = (y_asr - y_ours).abs().max().item()
    return out
