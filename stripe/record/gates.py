"""Where the gates are: this package's attention taps, gates of any model (adapters and detection), selection.

This package's attention modules are found through the gate-adapter registry
(:func:`stripe.nn.find_adapter`, adapters of kind ``taps`` generated from the attention registry), so
a newly registered module is recorded without any change here. Where such a gate sits (stage,
block, depth) comes from the model itself (``model.tap_places()``), never from parsing module names.

Gates of other models (torchvision, timm, ONNX, your own) are gate sites (:class:`stripe.nn.GateSite`):

* :func:`adapter_sites` finds the modules of a registered adapter's class, without running the model;
* :func:`detect_gates` runs one eval, no-grad calibration forward under a ``TorchFunctionMode`` with
  hooks on every module, and finds (1) the gate multiply of every adapter module and (2) any other
  multiply of a [B, C, H, W] map (H·W > 1) by a [B, C, 1, 1] (or H/W-expanded) tensor that is not a
  parameter, depends on the model input and lies in [0, 1]: an ``auto`` gate, owned by the innermost
  module running it. Multiplies inside adapter or unsupported modules, and multiplies by an
  adapter's own attention (a package gate used by its parent, e.g. IEBN or DIA), are not auto gates.
  For each gate the same trace decides where a constant folds (see :mod:`stripe.nn.posthoc`); a
  fold is reported only when the trace proves it, else ``none`` with the reason.

Limits: only ops that pass through ``__torch_function__`` are seen; the generic detector needs
maps larger than 1 x 1 (adapters do not), and recording taps an auto gate by its position among
the gate-shaped multiplies of its owner's call, so calibrate on inputs of the size you record.
"""
from __future__ import annotations

import fnmatch
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import UserError
from ..nn import ASRNorm, Tap, is_compiled, unwrap
from ..nn.adapters import AUTO_ONLY, UNSUPPORTED, GateAdapter, find_adapter, qualname_of
from ..nn.posthoc import MUL_FUNCS, STD_CONVS, GateSite, split_gate


@dataclass(frozen=True)
class GatePoint:
    """An attention module with taps: its path (``layer1.0.attn``), attention type, and whether it is fed by ψ."""

    module: str
    attn: str
    asr: bool


@dataclass
class TapInfo:
    """A recorded tap: its key (``<module>.tap``, or ``<module>.tap[i]`` for call i of a shared module) and place.

    For a gate of another model the key is the site's (``<owner>.gate``), ``attn`` the adapter's name
    or ``auto``, ``depth`` the gate's position in forward order and stage/block None.
    """

    key: str
    module: str
    attn: str
    asr: bool
    stage: int | None
    block: int | None
    depth: int | None
    call: int | None
    channels: int
    hidden: int | None = None  # width of the gate's hidden layer (recorded as kind "hidden"), None without one

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the recording manifest lists)."""
        return asdict(self)


def recordable(model: nn.Module) -> nn.Module:
    """The module to hook: DP/DDP unwrapped; a ``torch.compile`` wrapper refused (its graphs skip Python hooks)."""
    if is_compiled(model):
        raise UserError("the model is wrapped by torch.compile, whose graphs skip Python hooks; record the "
                         "original module (model._orig_mod) instead")
    return unwrap(model)


def find_gates(model: nn.Module) -> dict[str, GatePoint]:
    """Every attention module of this package that has a ``tap``, by module path, in module order."""
    model = recordable(model)
    asr_gates = {id(m.attn) for m in model.modules() if isinstance(m, ASRNorm)}
    asr_gates |= {id(m.asr_attn) for m in model.modules() if "asr_attn" in getattr(m, "_modules", {})}
    found = {}
    for name, m in model.named_modules():
        a = find_adapter(m)
        if a is not None and a.kind == "taps" and isinstance(getattr(m, "tap", None), Tap):
            found[name] = GatePoint(name, a.name, id(m) in asr_gates)
    return found


def _key(path: str, i: int = 0) -> str:
    return (f"{path}." if path else "") + ("gate" if i == 0 else f"gate{i}")


def adapter_sites(model: nn.Module) -> list[GateSite]:
    """Gates of third-party adapter classes, found by class without running the model (fold ``unknown``)."""
    out = []
    for name, m in recordable(model).named_modules():
        a = find_adapter(m)
        if a is not None and a.kind == "module":
            out.append(GateSite(name, a.qualname, a.name, _key(name), None, "unknown", None,
                                "found by class; detect_gates(model, example) traces where it folds",
                                gate_attr=a.gate_attr, before_attr=a.before_attr, layout=a.layout))
    return out


# --------------------------------------------------------------------------- the calibration trace
RELU_FUNCS: frozenset[Any] = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})
BN_FUNCS: frozenset[Any] = frozenset({F.batch_norm, torch.batch_norm})
CONV_FUNCS: frozenset[Any] = frozenset({F.conv2d, torch.conv2d})


def _flat(obj: Any, out: list[Tensor]) -> list[Tensor]:
    """The tensors in nested tuples, lists and dicts."""
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flat(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat(o, out)
    return out


@dataclass
class _Mul:
    """A gate-shaped multiply: (map id, gate id, channels) candidates; the strict one counts for auto gates."""

    strict: tuple[int, int, int] | None
    loose: list[tuple[int, int, int]]
    ordinal: int
    ok: dict[int, bool]  # gate id -> depends on the input and lies in [0, 1]


@dataclass
class _Event:
    """One tensor-producing torch call of the calibration forward."""

    idx: int
    func: Any
    stack: tuple[int, ...]  # module-call uids, outermost first
    arg_ids: tuple[int | None, ...]
    in_ids: frozenset[int]
    out_ids: tuple[int, ...]
    mul: _Mul | None = None


@dataclass
class _Call:
    """One module call of the calibration forward."""

    uid: int
    name: str
    in_ids: tuple[int | None, ...]
    start: int
    end: int = -1
    out_ids: tuple[int, ...] = ()


@dataclass
class _Trace:
    """Op- and module-level log of one forward."""

    names: dict[int, str]
    attention: set[str]  # modules whose outputs are an adapter's attention (gate_attr / tap)
    events: list[_Event] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    stack: list[int] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    ncalls: Counter = field(default_factory=Counter)
    dep: set[int] = field(default_factory=set)  # tensors that depend on the model input
    taint: set[int] = field(default_factory=set)  # tensors computed from an adapter's attention
    keep: list[Any] = field(default_factory=list)  # every tensor stays alive, so ids stay unique
    producers: dict[int, list[int]] = field(default_factory=dict)
    consumers: dict[int, list[int]] = field(default_factory=dict)
    outputs: frozenset[int] = frozenset()


class _TraceMode(TorchFunctionMode):
    """Logs every tensor-producing torch call with the module stack."""

    def __init__(self, trace: _Trace) -> None:
        super().__init__()
        self.t = trace

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = _flat(out, [])
        if not outs:
            return out
        t = self.t
        ins = _flat(args, _flat(kwargs, []))
        t.keep.append((ins, outs))
        ev = _Event(len(t.events), func, tuple(t.stack), tuple(id(a) if isinstance(a, Tensor) else None for a in args),
                    frozenset(id(a) for a in ins), tuple(id(o) for o in outs))
        if any(i in t.dep for i in ev.in_ids):
            t.dep.update(ev.out_ids)
        tainted_in = any(i in t.taint for i in ev.in_ids)
        if func in MUL_FUNCS and len(args) >= 2:
            ev.mul = self._mul(args[0], args[1])
            # a product is an attention only when an attention operand is not broadcast up (weight * a is,
            # map * a is not) and it is not a map scaled by an attention
            tainted_in = any(isinstance(a, Tensor) and id(a) in t.taint and a.shape == outs[0].shape for a in args[:2])
            if ev.mul is not None and any(g in t.taint and m not in t.taint for m, g, _ in ev.mul.loose):
                tainted_in = False
        if tainted_in:
            t.taint.update(ev.out_ids)
        for i in ev.in_ids:
            t.consumers.setdefault(i, []).append(ev.idx)
        for o in ev.out_ids:
            t.producers.setdefault(o, []).append(ev.idx)
        t.events.append(ev)
        return out

    def _mul(self, a: Any, b: Any) -> _Mul | None:
        t = self.t
        strict = split_gate(a, b)
        loose = [sp for sp in (split_gate(a, b, allow_1x1=True), split_gate(b, a, allow_1x1=True)) if sp is not None]
        if not loose:
            return None
        ordinal = -1
        if strict is not None:
            ordinal = t.counters[t.stack[-1] if t.stack else -1]
            for uid in t.stack:
                t.counters[uid] += 1
        ok = {id(g): id(g) in t.dep and bool(g.min() >= 0) and bool(g.max() <= 1) for _, g, _ in loose}
        ids = lambda sp: (id(sp[0]), id(sp[1]), int(sp[0].shape[1]))  # noqa: E731
        return _Mul(None if strict is None else ids(strict), [ids(sp) for sp in loose], ordinal, ok)


def _hook_all(model: nn.Module, trace: _Trace) -> list[Any]:
    """Pre/post hooks on every module keeping the call stack (and tainting adapters' attention outputs)."""
    def pre(mod: nn.Module, args: tuple) -> None:
        uid = len(trace.calls)
        name = trace.names[id(mod)]
        trace.calls[uid] = _Call(uid, name, tuple(id(a) if isinstance(a, Tensor) else None for a in args),
                                 len(trace.events))
        trace.ncalls[name] += 1
        trace.keep.append(args)
        trace.stack.append(uid)

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        call = trace.calls[trace.stack.pop()]
        call.end = len(trace.events)
        outs = _flat(out, [])
        trace.keep.append(outs)
        call.out_ids = tuple(id(o) for o in outs)
        if call.name in trace.attention:
            trace.taint.update(call.out_ids)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, always_call=True))
    return handles


def _run_trace(model: nn.Module, example: Any, attention: set[str]) -> _Trace:
    """One eval-mode, no-grad calibration forward under the trace mode; the model's modes are restored."""
    trace = _Trace({id(m): n for n, m in model.named_modules(remove_duplicate=False)}, attention)
    inputs = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    trace.dep.update(id(x) for x in _flat(inputs, []))
    trace.keep.append(inputs)
    modes = {m: m.training for m in model.modules()}
    handles = _hook_all(model, trace)
    try:
        model.eval()
        with torch.no_grad(), _TraceMode(trace):
            out = model(*inputs)
        trace.keep.append(out)
        trace.outputs = frozenset(id(o) for o in _flat(out, []))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return trace


def _producer(t: _Trace, tid: int | None, before: int) -> int | None:
    """Index of the last event before ``before`` that produced tensor ``tid``."""
    ps = [p for p in t.producers.get(tid, []) if p < before] if tid is not None else []
    return ps[-1] if ps else None


def _value_consumers(t: _Trace, tid: int, since: int) -> list[int]:
    """Events reading tensor ``tid`` after event ``since``, up to its next in-place overwrite."""
    res = []
    for e in t.consumers.get(tid, []):
        if e <= since:
            continue
        res.append(e)
        if tid in t.events[e].out_ids:
            break
    return res


def _inner_name(t: _Trace, ev: _Event) -> str | None:
    return t.calls[ev.stack[-1]].name if ev.stack else None


def _fname(t: _Trace, idx: int | None) -> str:
    return "the model input" if idx is None else str(getattr(t.events[idx].func, "__name__", t.events[idx].func))


def _depends_on(t: _Trace, gate_id: int, map_id: int, at: int) -> bool:
    """Whether the gate tensor was computed (through logged ops) from the map it scales."""
    floor = _producer(t, map_id, at)
    todo, seen = [gate_id], set()
    while todo:
        tid = todo.pop()
        if tid == map_id:
            return True
        if tid in seen:
            continue
        seen.add(tid)
        for p in t.producers.get(tid, []):  # every producer: in-place ops produce the same tensor again
            if p < at and (floor is None or p >= floor):
                todo.extend(t.events[p].in_ids)
    return False


def _analyse_fold(t: _Trace, ev: _Event, map_id: int, mods: dict[str, nn.Module]) -> tuple[Any, ...]:
    """(fold, fold module, reason, map_arg, fold_through) of the gate multiply ``ev`` scaling tensor ``map_id``."""
    p_id = ev.out_ids[0]
    call = t.calls[ev.stack[-1]]
    if t.ncalls[call.name] != 1:
        return "none", None, f"owner {call.name or '<root>'} runs {t.ncalls[call.name]} times per forward", None, None
    later = [p for p in t.producers.get(p_id, []) if ev.idx < p < call.end]
    if call.out_ids != (p_id,) or later or map_id not in call.in_ids:
        return "none", None, (f"gate multiply is inline in {call.name or '<root>'}.forward (the owner's output is "
                              "not the gated map); removing it needs a source rewrite"), None, None
    p_map = _producer(t, map_id, ev.idx)
    if p_map is not None and p_map >= call.start:
        return "none", None, "the map is modified inside the owner before the multiply", None, None
    map_arg = call.in_ids.index(map_id)

    def inside(idx: int) -> bool:
        return call.uid in t.events[idx].stack

    map_private = (p_map is not None and map_id not in t.outputs
                   and all(inside(e) for e in _value_consumers(t, map_id, p_map)))

    def module_at(idx: int) -> tuple[str | None, nn.Module | None]:
        name = _inner_name(t, t.events[idx])
        return name, (mods.get(name) if name is not None else None)

    def bn_at(idx: int) -> str | None:
        name, mod = module_at(idx)
        e = t.events[idx]
        if e.func not in BN_FUNCS or not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return None
        if mod.weight is None or mod.bias is None or t.ncalls[name] != 1:
            return None
        return name if id(mod.weight) in e.in_ids and id(mod.bias) in e.in_ids else None

    if map_private and (bn := bn_at(p_map)) is not None:  # (a) BN output scaled directly
        return "bn_before", bn, f"the gated map is the output of {bn} and is used only by the gate", map_arg, None
    cons = _value_consumers(t, p_id, ev.idx)
    if len(cons) == 1 and p_id not in t.outputs:  # (b) the product feeds one conv only
        ce = t.events[cons[0]]
        name, mod = module_at(cons[0])
        if (ce.func in CONV_FUNCS and isinstance(mod, nn.Conv2d) and ce.arg_ids[:2] == (p_id, id(mod.weight))
                and t.ncalls[name] == 1):
            return "conv_after", name, f"the gated map feeds only {name} (groups={mod.groups})", map_arg, None
    if map_private and t.events[p_map].func in RELU_FUNCS:  # (a') BN -> ReLU -> gate: relu(c z) = c relu(z), c >= 0
        r = t.events[p_map]
        z_id = r.arg_ids[0] if r.arg_ids else None
        p_z = _producer(t, z_id, p_map)
        if p_z is not None and z_id not in t.outputs and _value_consumers(t, z_id, p_z) == [p_map]:
            bn = bn_at(p_z)
            if bn is not None:
                return "bn_before", bn, (f"the gated map is ReLU({bn}); folds since relu(c z) = c relu(z) "
                                         "for c >= 0"), map_arg, "relu"
    if map_private:  # (c) conv output scaled directly: plain weight, or a standardised conv's gain
        e = t.events[p_map]
        name, mod = module_at(p_map)
        if e.func in CONV_FUNCS and isinstance(mod, nn.Conv2d) and t.ncalls[name] == 1:
            if e.arg_ids[1:2] == (id(mod.weight),):
                return "conv_before", name, f"the gated map is the output of {name}", map_arg, None
            if qualname_of(mod) in STD_CONVS and isinstance(getattr(mod, "gain", None), nn.Parameter):
                return "conv_before", name, f"the gated map is the output of {name} (folds into gain and bias)", \
                    map_arg, None
    why = ["the gated map is also used outside the gate" if not map_private
           else f"the gated map comes from {_fname(t, p_map)}"]
    why.append(f"the product has {len(cons)} consumers" if len(cons) != 1
               else f"the product feeds {_fname(t, cons[0])} in {_inner_name(t, t.events[cons[0]]) or '<root>'}")
    return "none", None, "; ".join(why), map_arg, None


def _note(t: _Trace, ev: _Event, map_id: int, gate_id: int) -> str:
    if _depends_on(t, gate_id, map_id, ev.idx):
        return ""
    return ("the gate is not computed from the map it scales: 'before' is the spatial mean of the gated map, "
            "not the gate's input")


def _adapter_event(t: _Trace, name: str, call_uids: set[int]) -> tuple[_Event, tuple[int, int, int]] | None:
    """The gate multiply of an adapter module: in its own forward, by its attention (or by a valid gate)."""
    fallback = None
    for ev in t.events:
        if ev.mul is None or not ev.stack or ev.stack[-1] not in call_uids:
            continue
        call = t.calls[ev.stack[-1]]
        for cand in ev.mul.loose:
            m_id, g_id, _ = cand
            if g_id in t.taint and (m_id in call.in_ids or ev.mul.strict is not None):
                return ev, cand
            if fallback is None and ev.mul.ok.get(g_id) and m_id in call.in_ids:
                fallback = (ev, cand)
    return fallback


def detect_gates(model: nn.Module, example: Any, *, use_adapters: bool = True) -> list[GateSite]:
    """Every channel gate of ``model`` in module order: the modules of registered adapters, and the gates the
    generic detector finds elsewhere (``adapter="auto"``), each with where its constant folds.

    ``example`` is one calibration input (a tensor or a tuple of arguments; two images are plenty),
    of the size the model will see. Unsupported modules (softmax over paths) are warned about and
    skipped. ``use_adapters=False`` runs the generic detector alone (what it finds by itself).
    """
    model = recordable(model)
    mods = dict(model.named_modules(remove_duplicate=False))
    covered: dict[str, GateAdapter | None] = {}
    for name, m in mods.items():
        q = qualname_of(m)
        if q in UNSUPPORTED:
            warnings.warn(f"{name or '<root>'} ({q}): {UNSUPPORTED[q]}; not treated as a gate", stacklevel=2)
            covered[name] = None
        elif use_adapters and (a := find_adapter(m)) is not None:
            covered[name] = a
    attention = {f"{n}.{a.gate_attr}" if n else a.gate_attr for n, a in covered.items() if a is not None}
    t = _run_trace(model, example, attention)
    calls_of: dict[str, set[int]] = {}
    for uid, c in t.calls.items():
        calls_of.setdefault(c.name, set()).add(uid)
    sites: list[GateSite] = []
    for name, a in covered.items():
        if a is None:
            continue
        found = _adapter_event(t, name, calls_of.get(name, set()))
        if found is None:
            if a.kind != "taps":  # a package gate called by its parent (IEBN, DIA) is recorded through its taps
                warnings.warn(f"{name}: {a.qualname} did not run (or scaled nothing) in the calibration forward; "
                              "skipped", stacklevel=2)
            continue
        ev, (m_id, g_id, channels) = found
        fold, fmod, reason, map_arg, through = _analyse_fold(t, ev, m_id, mods)
        sites.append(GateSite(name, a.qualname, a.name, _key(name), channels, fold, fmod, reason, a.kind, a.gate_attr,
                              a.before_attr, a.layout, 0, map_arg, through, t.ncalls[name], _note(t, ev, m_id, g_id)))
    seen: set[tuple[str, int]] = set()
    per_owner: Counter = Counter()
    for ev in t.events:
        if ev.mul is None or ev.mul.strict is None or not ev.stack:
            continue
        m_id, g_id, channels = ev.mul.strict
        if not ev.mul.ok.get(g_id) or g_id in t.taint:
            continue
        names = [t.calls[u].name for u in ev.stack]
        if any(n in covered for n in names):
            continue
        owner = names[-1]
        if (owner, ev.mul.ordinal) in seen:
            continue  # the owner runs again: one site per multiply of the owner's forward
        seen.add((owner, ev.mul.ordinal))
        fold, fmod, reason, map_arg, through = _analyse_fold(t, ev, m_id, mods)
        note = _note(t, ev, m_id, g_id)
        q = qualname_of(mods[owner])
        if q in AUTO_ONLY:
            note = "; ".join(filter(None, [note, AUTO_ONLY[q]]))
        sites.append(GateSite(owner, q, "auto", _key(owner, per_owner[owner]), channels, fold, fmod, reason, "auto",
                              None, None, "bc11", ev.mul.ordinal, map_arg, through, t.ncalls[owner], note))
        per_owner[owner] += 1
    order = {n: i for i, n in enumerate(mods)}
    return sorted(sites, key=lambda s: (order.get(s.path, 0), s.mul_index))


# --------------------------------------------------------------------------- selection
def _stage_of(model: nn.Module, module: str) -> int | None:
    places = getattr(model, "tap_places", None)
    place = places().get(module) if callable(places) else None
    return None if place is None else place.stage


def select_gates(model: nn.Module, points: dict[str, GatePoint | GateSite], select: str | Sequence[str]) -> list[str]:
    """Names of ``points`` matching ``select``: ``"*"`` or ``"auto"`` (every gate), globs on the path (and
    on the key of a gate site), an attention type (``"se"``) or adapter name (``"tv_se"``, ``"auto"`` gates
    are all matched by ``"auto"``), ``"stage:2"``, ``"asr"`` or ``"attention"`` (the non-ASR ones);
    several selectors are OR-ed."""
    selectors = [select] if isinstance(select, str) else list(select)
    for s in selectors:
        if s.startswith("stage:") and not s[6:].isdigit():
            raise UserError(f"--taps {s!r}: expected stage:N with N a stage number")
    chosen = []
    for name, p in points.items():
        site = isinstance(p, GateSite)
        kind = p.adapter if site else p.attn
        asr = False if site else p.asr
        path = p.path if site else name
        for s in selectors:
            if (s in ("*", "auto") or fnmatch.fnmatchcase(name, s) or fnmatch.fnmatchcase(path, s)
                    or (not site and fnmatch.fnmatchcase(f"{name}.tap", s)) or s == kind
                    or (s == "asr" and asr) or (s == "attention" and not asr)
                    or (s.startswith("stage:") and _stage_of(model, path) == int(s[6:]))):
                chosen.append(name)
                break
    if not chosen:
        sample = ", ".join(list(points)[:4]) or "none: the model has no attention taps"
        raise UserError(f"no tap matches {selectors!r} (taps look like: {sample}{' …' if len(points) > 4 else ''})")
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
    width = getattr(model.get_submodule(point.module), "hidden_width", None)
    return TapInfo(key=key, module=point.module, attn=point.attn, asr=point.asr, stage=stage, block=block,
                   depth=depth, call=call, channels=channels, hidden=width)


def site_info(site: GateSite, key: str, order: int, call: int | None, channels: int) -> TapInfo:
    """The :class:`TapInfo` of a gate site: adapter name (or ``auto``) as ``attn``, forward order as ``depth``."""
    return TapInfo(key=key, module=site.path, attn=site.adapter, asr=False, stage=None, block=None, depth=order,
                   call=call, channels=channels)
