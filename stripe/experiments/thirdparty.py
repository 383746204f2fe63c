"""Any model: the gate table, post-hoc folds, speed, and a real pretrained model offline.

* :func:`gates_benchmark` (``stripe bench gates``): for torchvision and timm models with random
  weights, the gates found (adapters, and the generic detector alone), where their constants fold,
  the float64 fold check, parameters before/after and the recording overhead against a plain eval
  forward (timed interleaved, on the CPU);
* :func:`fold_report` (``stripe fold --model NAME``): detect, fold and verify one model's gates;
* :func:`source_speed` (``stripe bench speed --model NAME``): eval images/s unfolded, with constant
  gates, and folded;
* :func:`ocr_study`: PaddleOCR's text-direction classifier (MobileNetV3-small, 9 Hardsigmoid SE
  gates) from the ``rapidocr-onnxruntime`` wheel, converted with onnx2torch, recorded on real images
  (matplotlib's sample images: a text logo and two photographs, cropped, upright and rotated 180
  degrees), folded exactly; its stripe index per gate and what folding costs in agreement.

Benchmarks print and return numbers; tests never time anything.
"""
from __future__ import annotations

import importlib.util
import math
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..gates import (Gate, detect_gates, fold_constants, randomize_norms, replace_with_constants,
                     verify_posthoc_fold)
from ..nn import build_source, count_params, preprocessing
from ..nn.sources import MissingDependency, load_onnx
from ..record import Recorder

#: (model, input size) of the gate table: every gate of these is found, and folds
MODELS: tuple[tuple[str, int], ...] = (
    ("torchvision:mobilenet_v3_small", 64), ("torchvision:mobilenet_v3_large", 64),
    ("torchvision:efficientnet_b0", 64), ("torchvision:efficientnet_v2_s", 64),
    ("torchvision:regnet_y_400mf", 64), ("torchvision:maxvit_t", 224),
    ("timm:seresnet18", 64), ("timm:ecaresnet26t", 64), ("timm:efficientnet_b0", 64),
    ("timm:mobilenetv3_small_100", 64), ("timm:ese_vovnet19b_dw", 64),
)
#: models without channel gates: nothing may be found
NEGATIVE: tuple[tuple[str, int], ...] = (
    ("torchvision:resnet50", 64), ("torchvision:convnext_tiny", 64), ("torchvision:vit_b_16", 224),
)
#: NF-nets (fold into a standardised conv's gain), softmax-over-paths modules (unsupported), LRASPP's head
EXTRA: tuple[tuple[str, int], ...] = (
    ("timm:nf_regnet_b0", 64), ("timm:nf_seresnet26", 64), ("timm:dm_nfnet_f0", 64),
    ("timm:resnest14d", 64), ("timm:skresnet18", 64), ("torchvision:lraspp_mobilenet_v3_large", 64),
)


def _images(n: int, shape: Sequence[int], seed: int) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def record_means(model: nn.Module, sites: list[Gate], x: Tensor) -> dict[str, Tensor]:
    """Per-gate mean attention ("after") over the images ``x``, by site key."""
    with Recorder(model, sites) as rec:
        model(x)
    return {key: torch.from_numpy(s.mean_).float() for (key, kind), s in rec.stats().items() if kind == "after"}


@torch.no_grad()
def recording_overhead(model: nn.Module, taps: Any, x: Tensor, repeats: int = 5, passes: int = 1) -> dict[str, float]:
    """Recorded forwards (every gate, after and before, reduced to moments and merged at the end) against plain
    eval forwards: ``repeats`` interleaved (plain, recorded) pairs of ``passes`` forwards each, after one warm-up
    of each; medians of wall time and process CPU time, the minimum, and the median of the per-pair ratios."""
    model.eval()

    def plain() -> None:
        for _ in range(passes):
            model(x)

    def recorded() -> None:
        with Recorder(model, taps) as rec:
            for _ in range(passes):
                model(x)
        rec.stats()

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    plain(), recorded()
    a = []
    b = []
    for _ in range(repeats):
        a.append(timed(plain))
        b.append(timed(recorded))
    med = statistics.median
    return {"plain_s": med(t for t, _ in a), "recorded_s": med(t for t, _ in b),
            "overhead_pct": 100 * (med(t for t, _ in b) / med(t for t, _ in a) - 1),
            "pair_overhead_pct": 100 * (med(tb / ta for (ta, _), (tb, _) in zip(a, b)) - 1),
            "cpu_overhead_pct": 100 * (med(c for _, c in b) / med(c for _, c in a) - 1),
            "min_overhead_pct": 100 * (min(t for t, _ in b) / min(t for t, _ in a) - 1), "repeats": repeats,
            "passes": passes, "batch": int(x.shape[0]), "threads": torch.get_num_threads()}


def _gate_act(model: nn.Module, sites: list[Gate]) -> str:
    names = set()
    for s in sites:
        if s.kind == "module" and s.gate_attr is not None:
            t = type(model.get_submodule(s.path).get_submodule(s.gate_attr))
            names.add(f"{t.__module__.split('.')[0]}.{t.__name__}")
    return ", ".join(sorted(names)) or "-"


def gate_row(spec: str, size: int, *, batch: int = 16, overhead: bool = True, repeats: int = 5,
             passes: int = 4) -> dict[str, Any]:
    """One model of the gate table (random weights): gates, folds, float64 check, params, recording overhead."""
    torch.manual_seed(0)
    model, _ = build_source(spec)
    model.eval()
    x_cal = _images(2, (3, size, size), 0)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sites = detect_gates(model, x_cal)
        auto = detect_gates(model, x_cal, use_adapters=False)
    unsupported = len({str(w.message) for w in caught if "not treated as a gate" in str(w.message)})
    row: dict[str, Any] = {
        "model": spec, "input": f"{size}x{size}", "gates": len(sites),
        "adapters": dict(Counter(s.adapter for s in sites)), "auto_only": len(auto),
        "same_as_auto_only": [s.path for s in sites] == [s.path for s in auto],
        "unsupported_modules": unsupported, "folds": dict(Counter(s.fold for s in sites)),
        "through_relu": sum(s.fold_through == "relu" for s in sites), "gate_act": _gate_act(model, sites),
        "notes": sorted({s.note for s in sites if s.note}), "detect_s": time.perf_counter() - t0,
    }
    if not sites:
        return row
    randomize_norms(model, seed=1)  # recorded gates are not all 0.5 then (zero-initialised gammas)
    means = record_means(model, sites, _images(batch, (3, size, size), 1))
    v = verify_posthoc_fold(model, sites, means, _images(2, (3, size, size), 2))
    row.update(max_fold_diff=v["max_abs_diff"], max_abs_out=v["max_abs_ref"], n_folded=v["n_folded"],
               params_before=v["params_before"], params_after=v["params_after"],
               gate_modules_left=len(v["gate_modules_left"]))
    if overhead:
        row["overhead"] = recording_overhead(model, sites, _images(batch, (3, size, size), 3), repeats, passes)
    return row


def gates_markdown(rows: list[dict[str, Any]]) -> str:
    """The gate table as Markdown."""
    lines = ["| model | input | gates (adapter / generic detector alone) | gate activation | fold target | "
             "max fold diff, float64 (max abs output) | params before -> after | recording overhead: median wall / "
             "CPU / min wall (forwards x batch) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ad = ", ".join(f"{k}:{v}" for k, v in r["adapters"].items()) or "-"
        if r["unsupported_modules"]:
            ad += f"; {r['unsupported_modules']} unsupported skipped"
        folds = ", ".join(f"{k}:{v}" for k, v in r["folds"].items()) or "-"
        if r["through_relu"]:
            folds += " (through ReLU)"
        diff = f"{r['max_fold_diff']:.1e} ({r['max_abs_out']:.2g})" if "max_fold_diff" in r else "-"
        par = f"{r['params_before']:,} -> {r['params_after']:,}" if "params_before" in r else "-"
        o = r.get("overhead")
        ov = (f"{o['overhead_pct']:+.1f}% / {o['cpu_overhead_pct']:+.1f}% / {o['min_overhead_pct']:+.1f}% "
              f"({o['passes']} x {o['batch']})" if o else "-")
        lines.append(f"| {r['model']} | {r['input']} | {r['gates']} ({ad} / {r['auto_only']}) | {r['gate_act']} | "
                     f"{folds} | {diff} | {par} | {ov} |")
    return "\n".join(lines) + "\n"


def effnet_overhead(*, batch: int = 32, size: int = 224, repeats: int = 5) -> dict[str, Any]:
    """Recording overhead of torchvision efficientnet_b0 (random weights) on a batch of ``size`` images: its 16
    gates through the adapter (hooks) and through the generic detector (a TorchFunctionMode in each owner)."""
    torch.manual_seed(0)
    model, _ = build_source("torchvision:efficientnet_b0")
    model.eval()
    x_cal, x = _images(2, (3, size, size), 0), _images(batch, (3, size, size), 1)
    out = {}
    for how, sites in (("adapter", detect_gates(model, x_cal)),
                       ("auto", detect_gates(model, x_cal, use_adapters=False))):
        out[how] = {"gates": len(sites), **recording_overhead(model, sites, x, repeats)}
    return out


def gates_benchmark(*, models: Sequence[str] | None = None, extra: bool = False, batch: int = 16, repeats: int = 5,
                    passes: int = 4, threads: int = 0, overhead: bool = True, effnet: bool = False, ocr: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """The gate table (``stripe bench gates``): rows for :data:`MODELS` and :data:`NEGATIVE` (and :data:`EXTRA`),
    or the named ``models``; optionally efficientnet_b0's recording overhead at 224 and the OCR study."""
    from tqdm.auto import tqdm

    if threads:
        torch.set_num_threads(threads)
    known = dict(MODELS + NEGATIVE + EXTRA)
    chosen = [(m, known.get(m, 64)) for m in models] if models else list(MODELS + NEGATIVE + (EXTRA if extra else ()))
    res: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec, size in tqdm(chosen, desc="gates", unit="model", disable=not progress):
            res["rows"].append(gate_row(spec, size, batch=batch, overhead=overhead and (spec, size) in MODELS,
                                        repeats=repeats, passes=passes))
        if effnet:
            res["effnet_b0"] = effnet_overhead(repeats=repeats)
        if ocr:
            try:
                res["ocr"] = ocr_study()
            except MissingDependency as e:
                res["ocr"] = {"skipped": str(e)}
    return res


# --------------------------------------------------------------------------- fold and speed of one model
def _input_shape(spec: str, image_size: int | None, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(v) for v in input_shape)
    if image_size is None:
        pp = preprocessing(spec) if ":" in spec else None
        image_size = (pp or {}).get("crop") or 224
    return 3, int(image_size), int(image_size)


def fold_report(spec: str, *, num_classes: int | None = None, weights: str | Path | None = None,
                image_size: int | None = None, input_shape: Sequence[int] | None = None,
                atol: float = 1e-9) -> dict[str, Any]:
    """Detect the gates of model ``spec``, fold each constant (the mean attention over random images), and check
    the fold in float64 against constant replacement with perturbed BN statistics.

    Returns ``rows`` (one per gate), the check's numbers and ``ok`` (max difference <= ``atol`` relative to the
    largest output). The input is ``input_shape`` (C, H, W), or 3 x ``image_size``² (default: the model's
    own crop size, else 224)."""
    model, _ = build_source(spec, num_classes=num_classes, weights=weights)
    model.eval()
    shape = _input_shape(spec, image_size, input_shape)
    x = _images(2, shape, 0)
    sites = detect_gates(model, x)
    if not sites:
        raise UserError(f"{spec}: no channel gate found (no module of a registered adapter, no gate-shaped multiply)")
    means = record_means(model, sites, _images(8, shape, 1))
    v = verify_posthoc_fold(model, sites, means, x)
    done = {r["key"]: r for r in v["report"]}
    rows = [{"gate": s.key, "adapter": s.adapter, "channels": s.channels, "fold": done[s.key]["fold"],
             "into": done[s.key]["fold_module"] or "-", "why": s.fold_reason if not done[s.key]["done"] else "",
             "note": s.note} for s in sites]
    ok = v["max_abs_diff"] <= atol * max(1.0, v["max_abs_ref"])
    return {"model": spec, "input": "x".join(map(str, shape)), "rows": rows, "ok": ok, "atol": atol,
            **{k: v[k] for k in ("max_abs_diff", "max_abs_ref", "n_gates", "n_folded", "params_before",
                                 "params_after", "gate_modules_left")}}


def source_speed(spec: str, *, num_classes: int | None = None, weights: str | Path | None = None,
                 batches: Sequence[int] = (1, 32), image_size: int | None = None, device: str | None = "auto",
                 repeats: int = 5, min_seconds: float = 0.25, precision: str = "fp32", progress: bool = True):
    """Eval images/s of model ``spec`` as it is, with every gate replaced by a constant, and folded (gates
    removed where they fold), timed interleaved (medians of ``repeats``) on random input."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..train import autocast, resolve_device

    dev = resolve_device(device)
    model, _ = build_source(spec, num_classes=num_classes, weights=weights)
    model.eval()
    shape = _input_shape(spec, image_size, None)
    sites = detect_gates(model, _images(2, shape, 0))
    means = record_means(model, sites, _images(8, shape, 1)) if sites else {}
    variants = [("unfolded", model), ("constant gates", replace_with_constants(model, sites, means)),
                ("folded", fold_constants(model, sites, means)[0])]
    variants = [(name, m.to(dev).eval()) for name, m in variants]
    rows = []
    for batch in batches:
        x = _images(batch, shape, 2).to(dev)

        def run(m: nn.Module, iters: int) -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(dev, precision):
                for _ in range(iters):
                    m(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - t0

        iters = {}
        for name, m in variants:
            run(m, 1)
            iters[name] = max(1, int(min_seconds / max(run(m, 1), 1e-6)))
        times: dict[str, list[float]] = {name: [] for name, _ in variants}
        for _ in tqdm(range(repeats), desc=f"speed b{batch}", disable=not progress):
            for name, m in variants:
                times[name].append(batch * iters[name] / run(m, iters[name]))
        base = statistics.median(times["unfolded"])
        for name, m in variants:
            ips = statistics.median(times[name])
            rows.append({"model": spec, "variant": name, "gates": len(sites), "device": str(dev), "batch": batch,
                         "input": "x".join(map(str, shape)), "params": count_params(m), "images_per_s": ips,
                         "change_pct": 100.0 * (ips / base - 1.0), "repeats": repeats, "precision": precision})
    return pd.DataFrame(rows)


def source_speed_markdown(speed) -> str:
    """The speed table of :func:`source_speed` as Markdown."""
    lines = ["| model | device | batch | input | variant | params (M) | images/s | vs unfolded |",
             "|---|---|---:|---|:---|---:|---:|---:|"]
    for _, r in speed.iterrows():
        lines.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['input']} | {r['variant']} | "
                     f"{r['params'] / 1e6:.3f} | {r['images_per_s']:,.1f} | {r['change_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"


def write_source_speed(speed, out: str | Path) -> list[Path]:
    """Write :func:`source_speed`'s table as ``speed.csv`` and ``speed.md`` under ``out``."""
    from .. import fsio

    out = Path(out)
    return [fsio.write_text(out / "speed.csv", speed.to_csv(index=False)),
            fsio.write_text(out / "speed.md", source_speed_markdown(speed))]


# --------------------------------------------------------------------------- a real pretrained model: PP-OCR
CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLS_LABELS = ("0", "180")
CLS_SHAPE = (3, 48, 192)


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (rapidocr_onnxruntime imports cv2 on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"the optional package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def ppocr_cls_path() -> Path:
    """The PP-OCR mobile v2.0 direction classifier shipped in the rapidocr-onnxruntime wheel."""
    path = _package_dir("rapidocr_onnxruntime") / "models" / CLS_FILE
    if not path.is_file():
        raise MissingDependency(f"{CLS_FILE} not found in {path.parent}")
    return path


def load_ppocr_cls(*, logits: bool = False) -> nn.Module:
    """The PP-OCR text-direction classifier as an eval GraphModule (``onnx:PATH``); ``logits=True`` returns
    the input of its final softmax (what a float64 comparison needs: probabilities saturate)."""
    for pkg in ("onnx", "onnx2torch"):
        _package_dir(pkg)
    gm = load_onnx(ppocr_cls_path())
    if logits:
        soft = [n for n in gm.graph.nodes
                if n.op == "call_module" and "Softmax" in type(gm.get_submodule(n.target)).__name__]
        if not soft:
            raise UserError(f"{CLS_FILE}: no softmax to cut")
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = (soft[-1].args[0],)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.delete_all_unused_submodules()
    return gm


def paddle_cls_preprocess(img: Tensor) -> Tensor:
    """uint8 [3, H, W] -> float [3, 48, 192] as PaddleOCR's classifier does: resize to height 48 keeping the
    ratio (width <= 192), x / 255, (x - 0.5) / 0.5, right-pad with 0."""
    c, h, w = CLS_SHAPE
    rw = min(w, int(math.ceil(h * img.shape[2] / img.shape[1])))
    x = F.interpolate(img[None].float(), size=(h, rw), mode="bilinear", align_corners=False)[0]  # [3, 48, rw]
    out = torch.zeros(c, h, w)
    out[:, :, :rw] = (x / 255.0 - 0.5) / 0.5
    return out


def _read_rgb(path: Path) -> Tensor:
    """uint8 [3, H, W]; transparency composited on white, gray repeated."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)  # [H, W, 4]
    rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255.0
    out = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()  # [H, W, 3] -> [3, H, W]


def sample_images() -> dict[str, Tensor]:
    """Real images on disk: matplotlib's ``mpl-data/sample_data`` (``logo2.png`` is a line of text)."""
    folder = _package_dir("matplotlib") / "mpl-data" / "sample_data"
    found = {p.name: _read_rgb(p) for p in sorted(folder.glob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    if not found:
        raise MissingDependency(f"no sample images in {folder}")
    return found


def text_direction_set(images: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
    """Crops of each image (the whole image, then windows of 3 heights x ratios 4:1/3:1/2:1), each upright
    (label 0) and rotated 180 degrees (label 1): x [N, 3, 48, 192], labels [N], names."""
    xs, ys, names = [], [], []
    for name, img in images.items():
        _, h, w = img.shape
        crops = [(0, 0, h, w)]
        for ch in (h, (3 * h) // 4, h // 2):
            for ratio in (4, 3, 2):
                cw = min(w, ratio * ch)
                for x0 in range(0, w - cw + 1, max(cw // 2, 1)):
                    for y0 in sorted({0, (h - ch) // 2, h - ch}):
                        crops.append((y0, x0, ch, cw))
        for y0, x0, ch, cw in dict.fromkeys(crops):
            c = img[:, y0:y0 + ch, x0:x0 + cw]
            for label, cc in ((0, c), (1, c.flip(1, 2))):
                xs.append(paddle_cls_preprocess(cc))
                ys.append(label)
                names.append(f"{name}[{y0}:{y0 + ch},{x0}:{x0 + cw}]{'/rot180' if label else ''}")
    return torch.stack(xs), torch.tensor(ys), names


def _batched(model: nn.Module, x: Tensor, batch: int) -> Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def ocr_study(batch: int = 64) -> dict[str, Any]:
    """Gates of the PP-OCR direction classifier found by ``taps="auto"``, recorded on real images, the stripe
    index per gate (after and before), every gate folded with its mean, the fold checked in float64, and the
    agreement of the folded model's predictions with the unfolded (dynamic-gate) ones."""
    model = load_ppocr_cls()
    imgs = sample_images()
    x, y, names = text_direction_set(imgs)
    with Recorder(model, "auto", example=x[:2]) as rec:
        p = _batched(model, x, batch)
    stats, sites = rec.stats(), rec.sites
    means = {s.key: torch.from_numpy(stats[(s.key, "after")].mean_).float() for s in sites}
    folded, report = fold_constants(model, sites, means)
    pf = _batched(folded, x, batch)
    pc = _batched(replace_with_constants(model, sites, means), x, batch)
    logits_model = load_ppocr_cls(logits=True)
    v_random = verify_posthoc_fold(logits_model, sites, means, x[:8])
    v_real = verify_posthoc_fold(logits_model, sites, means, x[:8], randomize=False)
    source = [n.split("[")[0] for n in names]
    agree = (pf.argmax(1) == p.argmax(1))
    whole = {names[i]: {"label": CLS_LABELS[int(y[i])], "p_unfolded": [round(float(v), 4) for v in p[i]],
                        "p_folded": [round(float(v), 4) for v in pf[i]]}
             for i in range(len(names)) if f"[0:{imgs[source[i]].shape[1]},0:{imgs[source[i]].shape[2]}]" in names[i]}
    per_source = {}
    for s in dict.fromkeys(source):
        idx = torch.tensor([i for i, t in enumerate(source) if t == s])
        per_source[s] = {"n": len(idx), "agree": float(agree[idx].float().mean()),
                         "acc_unfolded": float((p[idx].argmax(1) == y[idx]).float().mean()),
                         "acc_folded": float((pf[idx].argmax(1) == y[idx]).float().mean())}
    return {
        "model": f"onnx:{ppocr_cls_path()}", "n_images": len(x),
        "gates": [{"key": s.key, "owner": s.qualname, "adapter": s.adapter, "channels": s.channels, "fold": s.fold,
                   "fold_module": s.fold_module, "S_after": stats[(s.key, "after")].stripe_index(),
                   "S_before": stats[(s.key, "before")].stripe_index(),
                   "after_min": float(stats[(s.key, "after")].min_.min()),
                   "after_max": float(stats[(s.key, "after")].max_.max())} for s in sites],
        "agree_folded_vs_unfolded": float(agree.float().mean()),
        "agree_folded_vs_constant": float((pf.argmax(1) == pc.argmax(1)).float().mean()),
        "max_prob_diff_folded_vs_constant_f32": float((pf - pc).abs().max()),
        "max_prob_diff_folded_vs_unfolded": float((pf - p).abs().max()),
        "acc_unfolded": float((p.argmax(1) == y).float().mean()),
        "acc_folded": float((pf.argmax(1) == y).float().mean()),
        "per_source": per_source, "whole_images": whole, "fold_report": report,
        "f64_random_bn": {k: v_random[k] for k in ("max_abs_diff", "max_abs_ref", "n_folded")},
        "f64_real_bn": {k: v_real[k] for k in ("max_abs_diff", "max_abs_ref", "n_folded")},
        "params_before": count_params(model), "params_after": count_params(folded),
        "buffers_before": sum(b.numel() for b in model.buffers()),
        "buffers_after": sum(b.numel() for b in folded.buffers()),
        "modules_before": len(list(model.modules())), "modules_after": len(list(folded.modules())),
    }


def ocr_markdown(o: dict[str, Any]) -> str:
    """The OCR study's per-gate table and summary as Markdown."""
    lines = ["| gate (owner node) | C | fold -> module | stripe index after | stripe index before | after range |",
             "|---|---:|---|---:|---:|---|"]
    for g in o["gates"]:
        lines.append(f"| {g['key']} | {g['channels']} | {g['fold']} -> {g['fold_module']} | {g['S_after']:.3f} | "
                     f"{g['S_before']:.3f} | [{g['after_min']:.2f}, {g['after_max']:.2f}] |")
    lines += ["", f"{o['n_images']} real inputs; folded (all {sum(r['done'] for r in o['fold_report'])} gates) vs "
              f"unfolded argmax agreement {100 * o['agree_folded_vs_unfolded']:.1f}% (max probability change "
              f"{o['max_prob_diff_folded_vs_unfolded']:.2f}); folded vs constant gates: agreement "
              f"{100 * o['agree_folded_vs_constant']:.1f}%, max probability difference "
              f"{o['max_prob_diff_folded_vs_constant_f32']:.1e} (float32); float64 check "
              f"{o['f64_real_bn']['max_abs_diff']:.1e} (real BN statistics), {o['f64_random_bn']['max_abs_diff']:.1e} "
              f"(perturbed, logits up to {o['f64_random_bn']['max_abs_ref']:.3g}); parameters {o['params_before']:,} "
              f"-> {o['params_after']:,}; direction accuracy {100 * o['acc_unfolded']:.1f}% -> "
              f"{100 * o['acc_folded']:.1f}%."]
    return "\n".join(lines) + "\n"
