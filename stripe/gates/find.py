"""Which gates a model has, without running it, and which of them a selector picks.

This package's attention modules are found through the gate-adapter registry (adapters of kind
``taps``, generated from the attention registry), so a newly registered module is found without any
change here; where such a gate sits (stage, block, depth) comes from the model itself
(``model.tap_places()``), never from parsing module names. Modules of a registered adapter's class in
any other model are found by class (their fold is ``unknown`` until :func:`stripe.gates.detect_gates`
traces a forward). Every gate is a :class:`~stripe.gates.Gate`.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Sequence

from torch import nn

from ..errors import UserError
from ..nn import ASRNorm, Tap, is_compiled, unwrap
from .adapters import find_adapter
from .gate import Gate


def recordable(model: nn.Module) -> nn.Module:
    """The module to hook: DP/DDP unwrapped; a ``torch.compile`` wrapper refused (its graphs skip Python hooks)."""
    if is_compiled(model):
        raise UserError("the model is wrapped by torch.compile, whose graphs skip Python hooks; record the "
                        "original module (model._orig_mod) instead")
    return unwrap(model)


def site_key(path: str, i: int = 0) -> str:
    """The recording key of an owner's i-th gate: ``<path>.gate`` (``.gate<i>`` from the second on)."""
    return (f"{path}." if path else "") + ("gate" if i == 0 else f"gate{i}")


def place_of(model: nn.Module, path: str, call: int | None = None) -> dict[str, int | None]:
    """Stage, block and depth (the global block index) of the module at ``path``, when the model describes its
    places (``model.tap_places()``: path -> (stage, block or None for a stage-shared module, the global index of
    the stage's first block)); a shared module's block is the ``call`` index."""
    places = getattr(model, "tap_places", None)
    place = places().get(path) if callable(places) else None
    if place is None:
        return {"stage": None, "block": None, "depth": None}
    stage, block, first = place
    block = block if block is not None else call
    return {"stage": stage, "block": block, "depth": None if block is None else first + block}


def find_gates(model: nn.Module) -> list[Gate]:
    """Every gate found without running the model, in module order: this package's attention modules with taps
    (kind ``taps``, key ``<path>.tap``, ``asr`` for the ψ-fed ones) and modules of a registered adapter's class
    (kind ``module``, key ``<path>.gate``, fold ``unknown``)."""
    model = recordable(model)
    asr_gates = {id(m.attn) for m in model.modules() if isinstance(m, ASRNorm)}
    asr_gates |= {id(m.asr_attn) for m in model.modules() if "asr_attn" in getattr(m, "_modules", {})}
    found = []
    for name, m in model.named_modules():
        a = find_adapter(m)
        if a is None:
            continue
        if a.kind == "taps":
            if not isinstance(getattr(m, "tap", None), Tap):
                continue
            found.append(Gate(f"{name}.tap", name, "taps", a.name, a.qualname, asr=id(m) in asr_gates,
                              hidden=getattr(m, "hidden_width", None), fold=a.fold, gate_attr=a.gate_attr,
                              before_attr=a.before_attr, layout=a.layout, **place_of(model, name)))
        else:
            found.append(Gate(site_key(name), name, "module", a.name, a.qualname, fold="unknown",
                              fold_reason="found by class; detect_gates(model, example) traces where it folds",
                              gate_attr=a.gate_attr, before_attr=a.before_attr, layout=a.layout))
    return found


def _stage_of(model: nn.Module, path: str) -> int | None:
    return place_of(model, path)["stage"]


def select_gates(model: nn.Module, gates: Sequence[Gate], select: str | Sequence[str]) -> list[Gate]:
    """The gates matching ``select``: ``"*"`` or ``"auto"`` (every gate), globs on the path or the key, an
    attention type (``"se"``) or adapter name (``"tv_se"``; every detected gate is matched by ``"auto"``),
    ``"stage:2"``, ``"asr"`` or ``"attention"`` (the non-ASR ones); several selectors are OR-ed. No match is a
    :class:`~stripe.errors.UserError` that shows what the keys look like."""
    selectors = [select] if isinstance(select, str) else list(select)
    for s in selectors:
        if s.startswith("stage:") and not s[6:].isdigit():
            raise UserError(f"--taps {s!r}: expected stage:N with N a stage number")
    chosen = []
    for g in gates:
        for s in selectors:
            if (s in ("*", "auto") or fnmatch.fnmatchcase(g.path, s) or fnmatch.fnmatchcase(g.key, s)
                    or s == g.attn or (s == "asr" and g.asr) or (s == "attention" and not g.asr)
                    or (s.startswith("stage:") and _stage_of(model, g.path) == int(s[6:]))):
                chosen.append(g)
                break
    if not chosen:
        keys = [g.key for g in gates]
        sample = ", ".join(keys[:4]) or "none: the model has no attention taps"
        raise UserError(f"no tap matches {selectors!r} (taps look like: {sample}{' …' if len(keys) > 4 else ''})")
    return chosen


def gates_of(model: nn.Module, taps: Any = "*", example: Any = None) -> tuple[list[Gate], list[str]]:
    """The gates to choose from and the selectors. ``taps`` a list of gates (found earlier) is taken as it is;
    with ``"auto"`` (alone or in a list) the generic detector also runs, on ``example`` (default: two random
    images of the size in ``model.config``); with an ``example`` the adapter gates come with their fold; this
    package's modules are always read through their taps."""
    from .trace import detect_gates

    if isinstance(taps, (list, tuple)) and taps and all(isinstance(t, Gate) for t in taps):
        return list(taps), ["*"]
    selectors = [taps] if isinstance(taps, str) else list(taps)
    gates = find_gates(model)
    if "auto" in selectors or example is not None:
        traced = detect_gates(model, _example(model, example))
        if "auto" not in selectors:
            traced = [g for g in traced if g.kind != "auto"]
        gates = [g for g in gates if g.kind == "taps"] + [g for g in traced if g.kind != "taps"]
    return gates, selectors


def _example(model: nn.Module, example: Any) -> Any:
    """The calibration input of gate detection: ``example``, or two random images of ``model.config``'s size."""
    import torch

    if example is not None:
        return example
    cfg = getattr(model, "config", None)
    chans, size = getattr(cfg, "in_chans", None), getattr(cfg, "image_size", None)
    if not chans or not size:
        raise UserError("taps='auto' runs one calibration forward: give example= (a batch of the inputs to record)")
    p = next(model.parameters())
    return torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
