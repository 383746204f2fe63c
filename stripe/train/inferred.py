"""What a command that loads a model inferred, said in one place.

``stripe collect``, ``stripe ablate`` and ``stripe fold`` print :func:`inferred_text` before they work: the
model and its classes (and where its config came from: the run, the file's own config, the tensors), the
data set (and why that one), the images the model is fed (their size, resize, crop, interpolation,
mean/std, and where that preprocessing came from, with the options that change it) and the probe and
scored images. The same text is kept with the result (``SweepResult.inferred``, the ablation table's
``attrs["inferred"]``, the fold report's ``inferred``).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..data import ImageSet
from ..nn import ModelConfig, is_source, parse_source, preprocessing, variant_label
from .loading import LoadInfo

#: the options that change the preprocessing of a model from elsewhere (said next to it)
PREPROCESS_OPTIONS = "--input-size N, --no-resize, --resize/--crop/--mean/--std/--interpolation, --preprocess none"


def _numbers(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def model_text(config: ModelConfig | Mapping[str, Any]) -> str:
    """A model config in a few words: ``cifar_resnet164 (bottleneck) +ASR(SE), 100 classes`` or
    ``timm:seresnet18, 10 classes``."""
    cfg = ModelConfig.from_dict(dict(config)) if isinstance(config, Mapping) else config
    classes = f"{cfg.num_classes} classes" if cfg.num_classes is not None else "its own classes"
    if cfg.is_source:
        return f"{cfg.name}, {classes}"
    try:
        cfg = cfg.resolved()
    except (TypeError, ValueError):
        pass
    block = f" ({cfg.block})" if getattr(cfg, "block", None) else ""
    return f"{cfg.name}{block} {variant_label(cfg.attn, cfg.asr, cfg.both)}, {classes}"


def preprocess_text(images: ImageSet | str | None, preprocess: Mapping[str, Any] | None) -> str:
    """The images a model is fed: size, then resize/crop/interpolation when any, then the normalisation (``images``
    a text: said as it is, e.g. random inputs)."""
    pp = dict(preprocess or {})
    if images is None or isinstance(images, str):
        return (images or "random images") + ("" if not pp else ", " + ", ".join(f"{k} {v}" for k, v in pp.items()))
    _, c, h, w = images.images.shape
    steps = [f"{images.name} images {h}x{w}x{c}"]
    if pp.get("channels") and pp["channels"] != c:
        steps.append(f"gray repeated to {pp['channels']} channels")
    out_h, out_w = h, w
    if pp.get("resize"):
        r = int(pp["resize"])
        out_h, out_w = (r, int(r * w / min(h, w))) if h <= w else (int(r * h / min(h, w)), r)
        steps.append(f"resized to {out_h}x{out_w} ({pp.get('interpolation') or 'bilinear'})")
    if pp.get("crop"):
        out_h = out_w = int(pp["crop"])
        steps.append(f"centre-cropped to {out_h}x{out_w}")
    if not pp.get("resize") and not pp.get("crop"):
        steps.append("fed at their own size")
    mean = pp.get("mean") if pp.get("mean") is not None else images.mean
    std = pp.get("std") if pp.get("std") is not None else images.std
    own = " (the data set's)" if pp.get("mean") is None and pp.get("std") is None else ""
    steps.append(f"normalised with mean {_numbers(mean)}, std {_numbers(std)}{own}")
    return ", ".join(steps)


def preprocess_origin(name: str, preprocess: str | Mapping[str, Any] | None = "auto", *, pretrained: bool,
                      load_info: LoadInfo | None = None) -> str:
    """Where the preprocessing of model ``name`` comes from (the arguments of :func:`stripe.nn.preprocess_for`, and
    the :class:`~stripe.train.LoadInfo` of its file when it says, e.g. the official code's normalisation), and for
    a model from elsewhere the options that change it."""
    opts = dict(preprocess) if isinstance(preprocess, Mapping) else {"base": preprocess or "none"}
    given = [f"--{k} {v}" for k, v in opts.items() if k in ("resize", "crop", "interpolation") and v is not None]
    given += [f"--{k} {_numbers(v)}" for k, v in opts.items() if k in ("mean", "std") and v is not None]
    if opts.get("input_size") is not None:
        given.insert(0, f"--input-size {opts['input_size']}")
    if opts.get("no_resize"):
        given.insert(0, "--no-resize")
    source = is_source(name)
    if load_info is not None and load_info.preprocess_from:
        origin = load_info.preprocess_from
    elif opts.get("base", "auto") == "auto" and pretrained and source and preprocessing(name) is not None:
        kind = parse_source(name)[0]
        whose = {"timm": "timm's pretrained config", "torchvision": "its torchvision weights' transforms"}.get(kind, kind)
        origin = f"{name}'s own evaluation preprocessing ({whose})"
    elif source and pretrained and opts.get("base", "auto") == "auto":
        origin = f"{name} states no preprocessing of its own: the data set's"
    else:
        origin = "the data set's own, as a model trained here saw it"
    text = origin + (", with " + ", ".join(given) if given else "")
    return text + (f"; change with {PREPROCESS_OPTIONS}" if source else "")


def subset_text(spec: Mapping[str, Any] | None, what: str) -> str | None:
    """A probe or scored subset (a :class:`~stripe.data.SubsetSpec` dict) in words."""
    if not spec:
        return None
    seed = spec.get("seed")
    how = f"class-stratified, seed {seed}" if seed is not None else "all of it"
    apart = ", disjoint from the probe" if spec.get("excludes") == "probe" else ""
    return f"{spec.get('n')} images of the {spec.get('split')} split ({how}{apart}), {what}"


def inferred_text(config: ModelConfig | Mapping[str, Any], *, model_from: str, dataset: str | None = None,
                  dataset_from: str | None = None, images: ImageSet | str | None = None,
                  preprocess: Mapping[str, Any] | None = None, preprocess_from: str | None = None,
                  probe: Mapping[str, Any] | None = None, scored: Mapping[str, Any] | None = None,
                  notes: list[str] | None = None) -> str:
    """The lines a command prints about what it inferred: model, data set, preprocessing, probe, scored images.

    ``model_from`` says where the config came from (e.g. a :meth:`~stripe.train.LoadInfo.summary`);
    ``dataset_from`` why this data set; ``preprocess`` the :class:`~stripe.data.Loader` options the model's images
    go through and ``preprocess_from`` where they came from; ``probe``/``scored`` subset specs (dicts)."""
    lines = [f"model: {model_text(config)} ({model_from})"]
    if dataset is not None:
        lines.append(f"data set: {dataset}" + (f" ({dataset_from})" if dataset_from else ""))
    lines.append(f"input: {preprocess_text(images, preprocess)}")
    if preprocess_from:
        lines.append(f"preprocessing: {preprocess_from}")
    for name, spec, what in (("probe", probe, "whose attention is measured"), ("scored", scored, "scored for accuracy")):
        text = subset_text(spec, what)
        if text:
            lines.append(f"{name}: {text}")
    lines += [f"note: {n}" for n in notes or []]
    return "\n".join(lines)
