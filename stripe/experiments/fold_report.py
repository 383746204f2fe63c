"""Detect, fold and verify the gates of any model (``stripe fold --model NAME``), and the helpers that go
with it: random images of a model's input shape, and each gate's mean attention over images.

This module moves to the gates package later; the gate benchmark (:mod:`.gates_bench`) and the speed table
of other models (:func:`stripe.experiments.bench.inference_speed`) use its helpers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..nn import GateSite, build_source, preprocessing, verify_posthoc_fold
from ..record import Recorder, detect_gates


def random_images(n: int, shape: Sequence[int], seed: int) -> Tensor:
    """``n`` standard-normal images of ``shape`` (C, H, W) from a seeded generator: [n, C, H, W]."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def model_input_shape(spec: str, image_size: int | None = None,
                      shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The input (C, H, W) of model ``spec``: ``shape`` when given, else 3 x ``image_size``² (default: the
    model's own crop size, else 224)."""
    if shape is not None:
        return tuple(int(v) for v in shape)
    if image_size is None:
        pp = preprocessing(spec) if ":" in spec else None
        image_size = (pp or {}).get("crop") or 224
    return 3, int(image_size), int(image_size)


@torch.no_grad()
def record_means(model: nn.Module, sites: list[GateSite], x: Tensor) -> dict[str, Tensor]:
    """Per-gate mean attention ("after") over the images ``x``, by site key."""
    with Recorder(model, sites) as rec:
        model(x)
    return {key: torch.from_numpy(s.mean_).float() for (key, kind), s in rec.stats().items() if kind == "after"}


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
    shape = model_input_shape(spec, image_size, input_shape)
    x = random_images(2, shape, 0)
    sites = detect_gates(model, x)
    if not sites:
        raise UserError(f"{spec}: no channel gate found (no module of a registered adapter, no gate-shaped multiply)")
    means = record_means(model, sites, random_images(8, shape, 1))
    v = verify_posthoc_fold(model, sites, means, x)
    done = {r["key"]: r for r in v["report"]}
    rows = [{"gate": s.key, "adapter": s.adapter, "channels": s.channels, "fold": done[s.key]["fold"],
             "into": done[s.key]["fold_module"] or "-", "why": s.fold_reason if not done[s.key]["done"] else "",
             "note": s.note} for s in sites]
    ok = v["max_abs_diff"] <= atol * max(1.0, v["max_abs_ref"])
    return {"model": spec, "input": "x".join(map(str, shape)), "rows": rows, "ok": ok, "atol": atol,
            **{k: v[k] for k in ("max_abs_diff", "max_abs_ref", "n_gates", "n_folded", "params_before",
                                 "params_after", "gate_modules_left")}}

