"""Gates of any model from one traced forward: adapters' gate multiplies, the generic detector, where each folds;
and the gates to choose from for a selection (:func:`gates_of`: those found without running the model, with the
traced ones when asked).

:func:`detect_gates` runs one eval, no-grad calibration forward under a ``TorchFunctionMode`` with
hooks on every module, and finds (1) the gate multiply of every adapter module and (2) any other
multiply of a [B, C, H, W] map (H·W > 1) by a [B, C, 1, 1] (or H/W-expanded) tensor that is not a
parameter, depends on the model input and lies in [0, 1]: an ``auto`` gate, owned by the innermost
module running it. Multiplies inside adapter or unsupported modules, and multiplies by an adapter's
own attention (a package gate used by its parent, e.g. IEBN or DIA), are not auto gates. For each
gate the same trace decides where a constant folds (:data:`~stripe.gates.gate.FOLDS`): into the BN
that produced the gated map, the convolution that consumes it, or the convolution that produced it,
or ``none`` with the reason; a fold is reported only when the trace proves it.

Limits: only ops that pass through ``__torch_function__`` are seen; the generic detector needs
maps larger than 1 x 1 (adapters do not), and recording taps an auto gate by its position among
the gate-shaped multiplies of its owner's call, so calibrate on inputs of the size you record.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import UserError
from .adapters import AUTO_ONLY, UNSUPPORTED, GateAdapter, find_adapter, qualname_of
from .find import find_gates
from .gate import Gate, recordable, site_key

#: timm convs that standardise their weight at every call; a per-output-channel scale folds into ``gain``
STD_CONVS = frozenset({"timm.layers.std_conv.ScaledStdConv2d", "timm.layers.std_conv.ScaledStdConv2dSame"})
MUL_FUNCS: frozenset[Any] = frozenset({
    torch.mul, torch.multiply, Tensor.mul, Tensor.mul_, Tensor.multiply, Tensor.multiply_,
    Tensor.__mul__, Tensor.__rmul__, Tensor.__imul__,
})


def split_gate(a: Any, b: Any, *, allow_1x1: bool = False) -> tuple[Tensor, Tensor, int] | None:
    """(map, gate, position of the map) when ``a * b`` scales a [B, C, H, W] map by a [B, C, 1, 1] gate.

    The gate may also be expanded over H, W with stride 0 (``expand_as``); it is never an
    ``nn.Parameter``. Maps of 1 x 1 are refused unless ``allow_1x1`` (then both orders are candidates
    and the first is returned). Only shapes and strides are read, never values (no host sync).
    """
    for pos, (m, g) in enumerate(((a, b), (b, a))):
        if not (isinstance(m, Tensor) and isinstance(g, Tensor)) or isinstance(g, nn.Parameter):
            continue
        if m.dim() != 4 or g.dim() != 4 or (m.shape[2] * m.shape[3] <= 1 and not allow_1x1):
            continue
        if g.shape[0] != m.shape[0] or g.shape[1] != m.shape[1]:
            continue
        if (g.shape[2] == 1 and g.shape[3] == 1) or (g.stride(2) == 0 and g.stride(3) == 0):
            return m, g, pos
    return None


def gate_vector(g: Tensor) -> Tensor:
    """A [B, C, 1, 1] (or H/W-expanded) gate as [B, C]."""
    return g[:, :, :1, :1].reshape(g.shape[0], g.shape[1])


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


def detect_gates(model: nn.Module, example: Any, *, use_adapters: bool = True) -> list[Gate]:
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
    sites: list[Gate] = []
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
        key = f"{name}.tap" if a.kind == "taps" else site_key(name)
        sites.append(Gate(key, name, a.kind, a.name, a.qualname, channels=channels, fold=fold, fold_module=fmod,
                          fold_reason=reason, gate_attr=a.gate_attr, before_attr=a.before_attr, layout=a.layout,
                          map_arg=map_arg, fold_through=through, calls=t.ncalls[name],
                          note=_note(t, ev, m_id, g_id)))
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
        sites.append(Gate(site_key(owner, per_owner[owner]), owner, "auto", "auto", q, channels=channels, fold=fold,
                          fold_module=fmod, fold_reason=reason, mul_index=ev.mul.ordinal, map_arg=map_arg,
                          fold_through=through, calls=t.ncalls[owner], note=note))
        per_owner[owner] += 1
    order = {n: i for i, n in enumerate(mods)}
    return sorted(sites, key=lambda s: (order.get(s.path, 0), s.mul_index))


def gates_of(model: nn.Module, taps: Any = "*", example: Any = None) -> tuple[list[Gate], list[str]]:
    """The gates to choose from and the selectors. ``taps`` a list of gates (found earlier) is taken as it is;
    with ``"auto"`` (alone or in a list) the generic detector also runs, on ``example`` (default: two random
    images of the size in ``model.config``); with an ``example`` the adapter gates come with their fold; this
    package's modules are always read through their taps (:func:`stripe.gates.find_gates`)."""
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
    if example is not None:
        return example
    cfg = getattr(model, "config", None)
    chans, size = getattr(cfg, "in_chans", None), getattr(cfg, "image_size", None)
    if not chans or not size:
        raise UserError("taps='auto' runs one calibration forward: give example= (a batch of the inputs to record)")
    p = next(model.parameters())
    return torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
