"""Which gates a model has, without running it, and which of them a selector picks.

This package's attention modules are found through the gate-adapter registry (adapters of kind
``taps``, generated from the attention registry), so a newly registered module is found without any
change here; where such a gate sits (stage, block, depth) and where its constant folds come from the
model itself (``model.tap_places()``, ``model.gate_folds()``), never from parsing module names. Modules of
a registered adapter's class in any other model are found by class (their fold is ``unknown`` until
:func:`stripe.gates.detect_gates` traces a forward). Every gate is a :class:`~stripe.gates.Gate`.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

from torch import nn

from ..errors import UserError
from ..nn import ASRNorm, Tap
from .adapters import find_adapter
from .gate import Gate, recordable, site_key

#: the fold of this package's gate in a model that does not say where its gates fold (no ``gate_folds()``)
_NOT_DESCRIBED = ("none", None, "the model does not say where its attention folds (no gate_folds()); constant "
                  "replacement forces the constant at the gate's tap")


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
    (kind ``taps``, key ``<path>.tap``, ``asr`` for the ψ-fed ones, the fold the model gives) and modules of a
    registered adapter's class (kind ``module``, key ``<path>.gate``, fold ``unknown``)."""
    model = recordable(model)
    asr_gates = {id(m.attn) for m in model.modules() if isinstance(m, ASRNorm)}
    asr_gates |= {id(m.asr_attn) for m in model.modules() if "asr_attn" in getattr(m, "_modules", {})}
    describe = getattr(model, "gate_folds", None)
    folds = describe() if callable(describe) else {}
    found = []
    for name, m in model.named_modules():
        a = find_adapter(m)
        if a is None:
            continue
        if a.kind == "taps":
            if not isinstance(getattr(m, "tap", None), Tap):
                continue
            fold, fold_module, reason = folds.get(name, _NOT_DESCRIBED)
            found.append(Gate(f"{name}.tap", name, "taps", a.name, a.qualname, asr=id(m) in asr_gates,
                              hidden=getattr(m, "hidden_width", None), fold=fold, fold_module=fold_module,
                              fold_reason=reason, gate_attr=a.gate_attr, before_attr=a.before_attr, layout=a.layout,
                              **place_of(model, name)))
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
