"""The gate table of third-party models (``stripe bench gates``): for torchvision and timm models with random
weights, the gates found (adapters, and the generic detector alone), where their constants fold, the float64
fold check, parameters before/after and the recording overhead against a plain eval forward (timed
interleaved, on the CPU); optionally efficientnet_b0's overhead at 224 x 224 and the PP-OCR study (:mod:`.ocr`).

Benchmarks print and return numbers; tests never time anything.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter
from typing import Any, Sequence

import torch
from torch import nn

from ..gates import Gate, detect_gates, randomize_norms, verify_posthoc_fold
from ..nn import build_source
from ..nn.sources import MissingDependency
from .bench import recording_overhead
from .fold_report import random_images, record_means

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


def _gate_act(model: nn.Module, sites: list[Gate]) -> str:
    """The classes of the gates' activations ('torch.Hardsigmoid, timm.…'), or '-'."""
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
    x_cal = random_images(2, (3, size, size), 0)
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
    means = record_means(model, sites, random_images(batch, (3, size, size), 1))
    v = verify_posthoc_fold(model, sites, means, random_images(2, (3, size, size), 2))
    row.update(max_fold_diff=v["max_abs_diff"], max_abs_out=v["max_abs_ref"], n_folded=v["n_folded"],
               params_before=v["params_before"], params_after=v["params_after"],
               gate_modules_left=len(v["gate_modules_left"]))
    if overhead:
        row["overhead"] = recording_overhead(model, sites, random_images(batch, (3, size, size), 3), repeats=repeats,
                                             passes=passes)
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
    x_cal, x = random_images(2, (3, size, size), 0), random_images(batch, (3, size, size), 1)
    out = {}
    for how, sites in (("adapter", detect_gates(model, x_cal)),
                       ("auto", detect_gates(model, x_cal, use_adapters=False))):
        out[how] = {"gates": len(sites), **recording_overhead(model, sites, x, repeats=repeats)}
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
            from .ocr import ocr_study

            try:
                res["ocr"] = ocr_study()
            except MissingDependency as e:
                res["ocr"] = {"skipped": str(e)}
    return res
