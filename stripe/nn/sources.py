"""Model sources: build any model by name, load its weights, and know its preprocessing.

A source name has a colon: ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``),
``timm:NAME`` (``timm.create_model(NAME, pretrained=False)``), ``onnx:PATH`` (an ONNX file converted
with onnx2torch, graph constants moved to initializers first) or ``package.module:factory`` (a callable
returning an ``nn.Module``; ``num_classes=`` is passed when given). Nothing is downloaded: weights
come from a file (:func:`load_weights_file`: a state_dict or a checkpoint holding one, read with
``weights_only=True``). timm, onnx and onnx2torch are optional and imported only when a name needs them.

:func:`stripe.nn.build_model` builds ``ModelConfig(name="timm:resnet18", num_classes=10)`` through
:func:`build_source` and keeps the config on the model (``model.config``), so such models train,
checkpoint and resume like the package's own.

:func:`preprocessing` gives a source's own evaluation preprocessing as keyword arguments of
:class:`stripe.data.Loader` (``resize``, ``crop``, ``mean``, ``std``, ``interpolation``): from timm's
pretrained config (resize = floor(crop / crop_pct)) or torchvision's default weights' transforms;
None when the source does not say (then give the options explicitly).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..fsio import require_file
from .weights import CheckpointError, read_weights

SOURCE_KINDS = ("torchvision", "timm", "onnx")
_SYNTAX = "expected torchvision:NAME, timm:NAME, onnx:PATH or package.module:factory"


class MissingDependency(ValueError):
    """An optional package needed for a model source is not installed."""


def is_source(name: str) -> bool:
    """Whether a model name is a source (``kind:target``) rather than one of this package's models."""
    return ":" in str(name)


def parse_source(spec: str) -> tuple[str, str]:
    """(kind, target) of a source name; kind is torchvision, timm, onnx or factory. Bad syntax raises ValueError."""
    kind, sep, target = str(spec).partition(":")
    if not sep or not kind or not target:
        raise UserError(f"model source {spec!r}: {_SYNTAX}")
    if kind in SOURCE_KINDS:
        return kind, target
    if not all(part.isidentifier() for part in kind.split(".")) or not target.isidentifier():
        raise UserError(f"model source {spec!r}: {_SYNTAX}")
    return "factory", spec


def _close(name: str, choices: list[str]) -> str:
    found = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return f"; close matches: {', '.join(found)}" if found else ""


def _need(module: str, spec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{spec} needs the optional package {module.split('.')[0]} ({e}); install it (pip "
                                "install timm onnx onnx2torch; the Makefile pins the versions)") from None


def _kwargs_for(fn: Any, spec: str, **wanted: Any) -> dict[str, Any]:
    """The given keyword arguments ``fn`` accepts; one it does not accept raises ValueError."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {}
    for k, v in wanted.items():
        if v is None:
            continue
        if k not in params and not open_kw:
            raise UserError(f"model source {spec!r}: {getattr(fn, '__name__', fn)}() does not accept {k}=")
        out[k] = v
    return out


def _torchvision(name: str, spec: str, num_classes: int | None, in_chans: int | None) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise UserError(f"unknown torchvision model {name!r}{_close(name, names)}")
    if in_chans not in (None, 3):
        raise UserError(f"{spec}: torchvision models take 3-channel images, not {in_chans}")
    builder = torchvision.models.get_model_builder(name)
    kw: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kw["weights_backbone"] = None  # segmentation/detection builders would otherwise download a backbone
    if num_classes is not None:
        kw["num_classes"] = num_classes
    return builder(**kw)


def _timm(name: str, spec: str, num_classes: int | None, in_chans: int | None) -> nn.Module:
    timm = _need("timm", spec)
    if not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}{_close(name, timm.list_models())}")
    kw = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
    return timm.create_model(name, pretrained=False, **kw)


def _factory(spec: str, num_classes: int | None, in_chans: int | None) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"model source {spec!r}: cannot import {mod_name!r} ({e})") from None
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        public = [n for n in dir(mod) if not n.startswith("_")]
        raise UserError(f"model source {spec!r}: {mod_name} has no callable {attr!r}{_close(attr, public)}")
    kwargs = _kwargs_for(fn, spec, num_classes=num_classes, in_chans=None if in_chans == 3 else in_chans)
    try:
        model = fn(**kwargs)
    except SystemExit as e:  # a factory must not end the program
        raise UserError(f"model factory {spec!r} called sys.exit({e.code!r}) instead of returning a model") from None
    except Exception as e:  # noqa: BLE001 - the user's code failed: one line that says whose
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"model factory {spec!r} raised {type(e).__name__}: {msg}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model source {spec!r}: {attr}() returned {type(model).__name__}, not an nn.Module")
    return model


def constants_to_initializers(model_proto: Any) -> int:
    """Move an ONNX graph's top-level ``Constant`` nodes into initializers (in place); returns how many moved.

    onnx2torch reads weights from initializers only; exporters that emit every weight as a
    ``Constant`` node (PaddlePaddle's) fail to convert otherwise (``KeyError: 'conv1_weights'``).
    """
    from onnx import numpy_helper

    keep, moved = [], 0
    for node in model_proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            model_proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(attrs["value"].t),
                                                                         node.output[0]))
            moved += 1
        else:
            keep.append(node)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(keep)
    return moved


def load_onnx(path: str | Path) -> nn.Module:
    """An ONNX file as a ``torch.fx.GraphModule`` (onnx2torch), in eval mode."""
    spec = f"onnx:{path}"
    path = require_file(path, f"model source {spec!r}", "an ONNX file")
    onnx = _need("onnx", spec)
    onnx2torch = _need("onnx2torch", spec)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - a protobuf parse error of any kind becomes one line
        raise UserError(f"model source {spec!r}: not an ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
    constants_to_initializers(proto)
    try:
        return onnx2torch.convert(proto).eval()
    except Exception as e:  # noqa: BLE001 - an unsupported op of any kind becomes one line
        msg = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"model source {spec!r}: onnx2torch cannot convert it ({type(e).__name__}: {msg})") from None


def build_source(spec: str, *, num_classes: int | None = None, in_chans: int | None = None,
                 weights: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model, info) of a source name, with the weights of ``weights`` loaded strictly when given.

    ``num_classes``/``in_chans`` None keep the source's defaults. ``info`` says what was built
    (source, name, num_classes, weights, the checkpoint key the weights came from).
    """
    kind, target = parse_source(spec)
    if kind == "torchvision":
        model = _torchvision(target, spec, num_classes, in_chans)
    elif kind == "timm":
        model = _timm(target, spec, num_classes, in_chans)
    elif kind == "onnx":
        if num_classes is not None or in_chans not in (None, 3):
            raise UserError(f"model source {spec!r}: an ONNX model has a fixed head and input; "
                             "num_classes/in_chans cannot be changed")
        model = load_onnx(target)
    else:
        model = _factory(spec, num_classes, in_chans)
    info: dict[str, Any] = {"source": kind, "name": target, "spec": spec, "num_classes": num_classes}
    if weights is not None:
        info.update(load_weights_file(model, weights))
    return model, info


def load_weights_file(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a weights file (any format :func:`stripe.nn.weights.read_weights` reads) into ``model``, strictly.

    ``module.``/``_orig_mod.`` prefixes (DDP, ``torch.compile``) are stripped. Every problem is one line naming
    the file, listing both missing and unexpected keys when they do not fit.
    """
    wf = read_weights(path, option="--weights")
    state = wf.state
    info: dict[str, Any] = {"weights": str(path), "checkpoint_key": wf.key,
                            "stripped_prefix": "".join(wf.stripped) or None}
    want = model.state_dict()
    missing, unexpected = [k for k in want if k not in state], [k for k in state if k not in want]
    if missing or unexpected:
        parts = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})"
                 for what, v in (("missing", missing), ("unexpected", unexpected)) if v]
        raise CheckpointError(f"--weights {path}: does not fit the model: {'; '.join(parts)}")
    bad = [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(f"--weights {path}: does not fit the model: {len(bad)} shape mismatch(es), e.g. {k} "
                              f"is {tuple(state[k].shape)} in the file and {tuple(want[k].shape)} in the model")
    model.load_state_dict(state, strict=True)
    return info


def preprocessing(spec: str) -> dict[str, Any] | None:
    """The source's evaluation preprocessing as Loader keyword arguments, or None when it is not known."""
    kind, target = parse_source(spec)
    if kind == "timm":
        timm = _need("timm", spec)
        try:
            cfg = timm.models.get_pretrained_cfg(target)
        except (RuntimeError, ValueError, KeyError):
            cfg = None
        if cfg is None or not cfg.input_size or not cfg.mean:
            return None
        crop = int(cfg.input_size[-1])
        crop_pct = float(cfg.crop_pct or 0.875)
        return {"resize": int(math.floor(crop / crop_pct)), "crop": crop, "mean": tuple(map(float, cfg.mean)),
                "std": tuple(map(float, cfg.std)), "interpolation": str(cfg.interpolation or "bilinear")}
    if kind == "torchvision":
        import torchvision

        try:
            t = torchvision.models.get_model_weights(target).DEFAULT.transforms()
        except (ValueError, KeyError, AttributeError, TypeError):
            return None
        resize, crop = getattr(t, "resize_size", None), getattr(t, "crop_size", None)
        if not resize or not hasattr(t, "mean"):
            return None
        return {"resize": int(resize[0]), "crop": int(crop[0]) if crop else None, "mean": tuple(map(float, t.mean)),
                "std": tuple(map(float, t.std)), "interpolation": str(t.interpolation.value)}
    return None


def resolve_preprocess(base: dict[str, Any] | None, *, mode: str = "auto", resize: int | None = None,
                       crop: int | None = None, mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None, interpolation: str | None = None) -> dict[str, Any] | None:
    """The preprocessing to use: ``base`` (a source's own, for mode ``auto``) with the explicit options on top;
    mode ``none`` ignores ``base``. None means the data set's own normalisation and size."""
    if mode not in ("auto", "none"):
        raise UserError(f"--preprocess must be auto or none, got {mode!r}")
    pp = dict(base or {}) if mode == "auto" else {}
    pp.update({k: v for k, v in (("resize", resize), ("crop", crop), ("mean", mean), ("std", std),
                                  ("interpolation", interpolation)) if v is not None})
    pp = {k: v for k, v in pp.items() if v is not None}
    return pp or None


def preprocess_for(name: str, preprocess: str | dict[str, Any] | None = "auto", *, pretrained: bool,
                   in_chans: int = 3) -> dict[str, Any] | None:
    """The Loader preprocessing for model ``name`` on images of ``in_chans`` channels.

    ``preprocess``: ``auto`` is the source's own (:func:`preprocessing`) when its weights come from
    elsewhere (``pretrained``) and none otherwise (a model trained here saw the data set's own
    normalisation); ``none``/None is none; a dict gives options (resize, crop, mean, std,
    interpolation, channels) over ``dict["base"]`` (``auto`` or ``none``, default ``auto``);
    ``input_size`` N feeds N x N images (resize N, centre crop N) and ``no_resize`` True the data set's images
    at their own size, both keeping the normalisation (for weights trained at another size than the
    source's own, e.g. timm weights trained on 32 x 32 CIFAR images). Gray images for a 3-channel
    normalisation are repeated to RGB.
    """
    opts = dict(preprocess) if isinstance(preprocess, dict) else {"base": preprocess or "none"}
    base = opts.pop("base", "auto")
    channels = opts.pop("channels", None)
    size, native = opts.pop("input_size", None), bool(opts.pop("no_resize", False))
    unknown = set(opts) - {"resize", "crop", "mean", "std", "interpolation"}
    if unknown:
        raise UserError(f"unknown preprocessing options {sorted(unknown)}")
    if size is not None and native:
        raise UserError("--input-size and --no-resize: give one (N x N images, or the images at their own size)")
    if (size is not None or native) and (opts.get("resize") is not None or opts.get("crop") is not None):
        raise UserError(f"{'--input-size' if size is not None else '--no-resize'} replaces --resize/--crop: give one "
                        "or the other")
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
        raise UserError(f"--input-size must be a positive number of pixels, got {size!r}")
    own = preprocessing(name) if base == "auto" and pretrained and is_source(name) else None
    pp = resolve_preprocess(own, mode=base, **opts)
    if size is not None:
        pp = {**(pp or {}), "resize": int(size), "crop": int(size)}
    elif native and pp:
        pp = {k: v for k, v in pp.items() if k not in ("resize", "crop", "interpolation")} or None
    if pp is not None and (channels or (in_chans == 1 and len(pp.get("mean", ())) == 3)):
        pp["channels"] = channels or 3
    return pp
