"""Where the gates are: discovery of every attention module that has taps, and tap selection.

A gate is found through the attention registry (:func:`stripe.nn.gate_classes`), so a newly
registered module is recorded without any change here. Where a gate sits (stage, block, depth)
comes from the model itself (``model.tap_places()``), never from parsing module names.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from torch import nn

from ..nn import ASRNorm, Tap, gate_classes, is_compiled, unwrap


@dataclass(frozen=True)
class GatePoint:
    """An attention module with taps: its path (``layer1.0.attn``), attention type, and whether it is fed by ψ."""

    module: str
    attn: str
    asr: bool


@dataclass
class TapInfo:
    """A recorded tap: its key (``<module>.tap``, or ``<module>.tap[i]`` for call i of a shared module) and place."""

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
        """A JSON-ready dict (what the recording manifest lists)."""
        return asdict(self)


def recordable(model: nn.Module) -> nn.Module:
    """The module to hook: DP/DDP unwrapped; a ``torch.compile`` wrapper refused (its graphs skip Python hooks)."""
    if is_compiled(model):
        raise ValueError("the model is wrapped by torch.compile, whose graphs skip Python hooks; record the "
                         "original module (model._orig_mod) instead")
    return unwrap(model)


def find_gates(model: nn.Module) -> dict[str, GatePoint]:
    """Every registered attention module that has a ``tap``, by module path, in module order."""
    model = recordable(model)
    classes = gate_classes()
    asr_gates = {id(m.attn) for m in model.modules() if isinstance(m, ASRNorm)}
    asr_gates |= {id(m.asr_attn) for m in model.modules() if "asr_attn" in getattr(m, "_modules", {})}
    return {name: GatePoint(name, classes[type(m)], id(m) in asr_gates)
            for name, m in model.named_modules()
            if type(m) in classes and isinstance(getattr(m, "tap", None), Tap)}


def _stage_of(model: nn.Module, module: str) -> int | None:
    places = getattr(model, "tap_places", None)
    place = places().get(module) if callable(places) else None
    return None if place is None else place.stage


def select_gates(model: nn.Module, points: dict[str, GatePoint], select: str | Sequence[str]) -> list[str]:
    """Module paths matching ``select``: ``"*"``, globs on the path, an attention type (``"se"``),
    ``"stage:2"``, ``"asr"`` or ``"attention"`` (the non-ASR ones); several selectors are OR-ed."""
    selectors = [select] if isinstance(select, str) else list(select)
    for s in selectors:
        if s.startswith("stage:") and not s[6:].isdigit():
            raise ValueError(f"--taps {s!r}: expected stage:N with N a stage number")
    chosen = []
    for name, p in points.items():
        for s in selectors:
            if (s == "*" or fnmatch.fnmatchcase(name, s) or fnmatch.fnmatchcase(f"{name}.tap", s) or s == p.attn
                    or (s == "asr" and p.asr) or (s == "attention" and not p.asr)
                    or (s.startswith("stage:") and _stage_of(model, name) == int(s[6:]))):
                chosen.append(name)
                break
    if not chosen:
        sample = ", ".join(list(points)[:4]) or "none: the model has no attention taps"
        raise ValueError(f"no tap matches {selectors!r} (taps look like: {sample}{' …' if len(points) > 4 else ''})")
    return chosen


def tap_info(model: nn.Module, key: str, point: GatePoint, call: int | None, channels: int) -> TapInfo:
    """A tap's :class:`TapInfo`, its place read from the model (``tap_places``) when the model describes it."""
    places = getattr(model, "tap_places", None)
    place = places().get(point.module) if callable(places) else None
    stage = block = depth = None
    if place is not None:
        stage = place.stage
        block = place.block if place.block is not None else call
        depth = None if block is None else place.first_depth + block
    return TapInfo(key=key, module=point.module, attn=point.attn, asr=point.asr, stage=stage, block=block,
                   depth=depth, call=call, channels=channels)
