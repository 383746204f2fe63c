"""The ``Recorder``: forward hooks on chosen gates, reduced to exact per-fold moments.

Every gate is a :class:`stripe.gates.Gate`, read the same way whatever model it lives in: a forward hook
on its gate submodule gives "after" (the attention; for this package's modules their ``tap``), a hook on
its ``before_attr`` submodule (``tap_in``) or a pre-hook on the module (the spatial mean of the map it
scales) gives "before", and this package's gates with a hidden layer also give "hidden" (``tap_hidden``).
A detected (``auto``) gate is read by a ``TorchFunctionMode`` active only during its owner's call, which
taps the owner's k-th gate-shaped multiply. Hooks only stash the tapped [B, C] tensors (no host sync);
after each forward the recorder reduces all of them in one batched call, keeping moments per fold of the
images on the device in float64, and merges them exactly on the CPU at the end.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..gates import Gate, OwnerModeHooks, gate_vector, gates_of, place_of, recordable, select_gates
from ..gates.adapters import read_after
from ..nn import Tap, global_pool
from .config import RecordConfig
from .format import HIDDEN
from .moments import ChannelStats, FoldStats, batch_moments, constant_moments, fold_counts


class TapKey(NamedTuple):
    """The key of every result of a :class:`Recorder`: a tap's key and the kind (``after``, ``before``, ``hidden``).
    It is a tuple, so ``(key, kind)`` finds it and unpacks from it; ``str()`` gives ``<tap>/<kind>``, the tensor's
    name in a recording's raw file."""

    tap: str
    kind: str

    def __str__(self) -> str:
        return f"{self.tap}/{self.kind}"


class Recorder:
    """Record the attention ("after") and pooled input ("before") of chosen taps over forwards.

    ::

        with Recorder(model, "*", raw_n=256, folds=10) as rec:   # or Recorder(model, RecordConfig(...))
            for x, _ in loader:
                model(x)
        stats = rec.stats()            # {TapKey(tap key, kind): ChannelStats}, every image
        folds = rec.fold_stats()       # {TapKey: FoldStats}, the i-th image seen in fold i mod 10
        raw = rec.raw()                # {TapKey: float16 ndarray [raw_n, C]}

    Construction only stores what to record (the model, and a :class:`~stripe.record.RecordConfig` or the same
    choices as arguments); entering the ``with`` block resolves the gates (:attr:`gates`) and installs the hooks,
    and starts the results afresh. Every result is keyed by one :class:`TapKey` (a ``(key, kind)`` tuple).

    The model is put in eval mode for the duration (BN statistics never change) and restored
    after; every hook is removed in ``finally``, user hooks are left alone. An ASR tap gives one
    vector per forward (its input is ψ): it is broadcast to the batch, constant by construction.
    Images are numbered in the order they are seen (not by their index in a data set): the i-th image seen
    falls in fold i mod ``folds``.

    Any model: ``taps="*"`` records this package's taps and every module of a registered adapter's
    class (:mod:`stripe.gates.adapters`); ``taps="auto"`` also runs the generic detector
    (:func:`stripe.gates.detect_gates`) on ``example`` (a batch of the inputs to record; by
    default random images of the size in ``model.config``)::

        model = build_model(ModelConfig("timm:seresnet18", num_classes=10))
        with Recorder(model, "auto", example=x[:2]) as rec, torch.no_grad():
            model(x)

    ``taps`` may also be a list of gates found earlier (:func:`stripe.gates.detect_gates`),
    recorded as they are. A gate whose module runs several times per forward is keyed ``<key>`` for
    its first call and ``<key>[i]`` for call i.
    """

    def __init__(self, model: nn.Module, taps: str | Sequence[str] | Sequence[Gate] | RecordConfig = "*", *,
                 raw_n: int | None = None, folds: int | None = None, raw_dtype: torch.dtype = torch.float16,
                 example: Any = None) -> None:
        if isinstance(taps, RecordConfig):
            given = [n for n, v in (("raw_n", raw_n), ("folds", folds)) if v is not None]
            if given:
                raise UserError(f"give {', '.join(given)} in the RecordConfig or as arguments, not both")
            taps, raw_n, folds = taps.selectors, taps.raw_n, taps.folds
        self.model = model
        self.selection = taps
        self.raw_n = 0 if raw_n is None else raw_n
        self.folds = 1 if folds is None else folds
        self.raw_dtype = raw_dtype
        self.example = example
        self._model: nn.Module | None = None  # the module hooked, set on entering
        self._gates: list[Gate] | None = None
        self._owner_hooks: list[OwnerModeHooks] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._was_training = False
        self._reset()

    def _reset(self) -> None:
        """Empty results: what entering starts from."""
        self._calls: dict[TapKey, int] = defaultdict(int)
        self._moments: dict[TapKey, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._raw: dict[TapKey, list[torch.Tensor]] = defaultdict(list)
        self._raw_count: dict[TapKey, int] = defaultdict(int)
        self._stash: list[tuple[TapKey, torch.Tensor]] = []
        self._seen_gates: dict[str, Gate] = {}
        self._batch = 0
        self._seen = 0

    @property
    def gates(self) -> list[Gate]:
        """The gates selected, resolved when the recorder is entered."""
        if self._gates is None:
            raise UserError("the recorder's gates are resolved when it is entered: use it as "
                            "`with Recorder(model, ...) as rec:`")
        return self._gates

    # -- hooks
    def _tap(self, gate: Gate, kind: str, a: torch.Tensor, index: int | None = None) -> None:
        """Stash one [B, C] tensor of ``gate``: call i of its module in this forward is keyed ``key[i]`` (a module
        that says which call it is, DIA's shared cell, gives ``index``; its first call is ``key[0]`` then)."""
        if a.dim() != 2:
            raise UserError(f"gate {gate.key} ({kind}) gave shape {tuple(a.shape)}; expected [B, C]")
        if index is None:
            i = self._calls[TapKey(gate.key, kind)]
            self._calls[TapKey(gate.key, kind)] = i + 1
            key, call = (gate.key, None) if i == 0 else (f"{gate.key}[{i}]", i)
        else:
            key, call = f"{gate.key}[{index}]", index
        if kind == "after" and key not in self._seen_gates:
            if gate.kind == "taps":
                place = place_of(self._model, gate.path, call)
            else:  # another model's gate: its position in forward order stands for the depth
                place = {"depth": self.gates.index(gate)}
            self._seen_gates[key] = gate.at_call(call, key=key, channels=a.shape[1], **place)
        self._stash.append((TapKey(key, kind), a))

    def _hook(self, gate: Gate, kind: str, read=None):
        def hook(module: nn.Module, args, out: torch.Tensor) -> None:
            a = out.detach() if read is None else read(out.detach())
            self._tap(gate, kind, a, getattr(module, "index", None))
        return hook

    def _gate_hooks(self, gate: Gate) -> None:
        owner = self._model.get_submodule(gate.path)
        if gate.kind == "auto":
            self._owner_hooks.append(OwnerModeHooks(owner, {gate.mul_index: gate}, self._auto_act))
            return
        # another model's gate output may be changed in place after the hook: read a copy of it
        read = None if gate.kind == "taps" else (lambda out: read_after(out, gate.layout).clone())
        self._handles.append(owner.get_submodule(gate.gate_attr).register_forward_hook(self._hook(gate, "after", read)))
        if gate.before_attr is not None:
            self._handles.append(owner.get_submodule(gate.before_attr).register_forward_hook(
                self._hook(gate, "before")))
        else:
            self._handles.append(owner.register_forward_pre_hook(lambda mod, args: self._before_of_input(gate, args)))
        if gate.kind == "taps" and isinstance(getattr(owner, "tap_hidden", None), Tap):  # a gate with a hidden layer
            self._handles.append(owner.tap_hidden.register_forward_hook(self._hook(gate, HIDDEN)))

    def _before_of_input(self, gate: Gate, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise UserError(f"gate {gate.key}: the module's first input is not a [B, C, H, W] map, so 'before' "
                            "cannot be read from it")
        self._tap(gate, "before", global_pool(x.detach()))

    def _auto_act(self, gate: Gate, m: torch.Tensor, g: torch.Tensor, pos: int, func, args, kwargs):
        if gate.channels is not None and g.shape[1] != gate.channels:
            raise UserError(f"gate {gate.key}: the tapped multiply has {g.shape[1]} channels, {gate.channels} at "
                            "detection; calibrate (example=...) on inputs of the size you record")
        self._tap(gate, "after", gate_vector(g.detach()).clone())
        self._tap(gate, "before", global_pool(m.detach()))
        return func(*args, **kwargs)

    def _pre_forward(self, module, args, kwargs) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        self._batch = int(x.shape[0])
        self._stash.clear()
        self._calls.clear()

    def _post_forward(self, module, args, output) -> None:
        self.reduce()

    def reduce(self) -> None:
        """Reduce the stashed tensors of the last forward to per-fold moments (one reduction for all taps)."""
        if not self._stash:
            return
        device = self._stash[0][1].device
        fold_ids = (torch.arange(self._batch, device=device) + self._seen) % self.folds  # [B]
        counts = None
        groups: dict[tuple, list[tuple[TapKey, torch.Tensor]]] = defaultdict(list)
        for key, a in self._stash:
            if a.shape[0] == 1 and self._batch > 1:  # input-independent (ASR): the same for every image
                if counts is None:
                    counts = fold_counts(fold_ids, self.folds)
                self._moments[key].append(constant_moments(a[0], counts))
                a = a.expand(self._batch, -1)
            else:
                groups[(a.shape[0], a.device)].append((key, a))
            if self._raw_count[key] < self.raw_n:
                take = min(self.raw_n - self._raw_count[key], a.shape[0])
                self._raw[key].append(a[:take].to(self.raw_dtype))
                self._raw_count[key] += take
        for (_, dev), items in groups.items():
            # every tap of this batch side by side: one exact reduction, whatever the taps' widths
            widths = [a.shape[1] for _, a in items]
            m = batch_moments(torch.cat([a.to(torch.float64) for _, a in items], dim=1), fold_ids.to(dev),
                              self.folds, segments=widths)  # [K, sum C]
            lo = 0
            for (key, _), w in zip(items, widths):
                self._moments[key].append({k: (v if k == "count" else v[:, lo:lo + w]) for k, v in m.items()})
                lo += w
        self._seen += self._batch
        self._stash.clear()

    def __enter__(self) -> "Recorder":
        """Resolve the gates, start the results afresh, put the model in eval mode and install the hooks."""
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
            raise UserError(f"folds must be an integer >= 1, got {self.folds!r}")
        if isinstance(self.raw_n, bool) or not isinstance(self.raw_n, int) or self.raw_n < 0:
            raise UserError(f"raw_n must be an integer >= 0, got {self.raw_n!r}")
        model = recordable(self.model)
        gates = select_gates(model, *gates_of(model, self.selection, self.example))
        self._model, self._gates = model, gates
        self._reset()
        self._was_training = model.training
        model.eval()
        try:
            for gate in gates:
                self._gate_hooks(gate)
            self._handles.append(model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._post_forward))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        try:
            for oh in self._owner_hooks:
                oh.remove()
        finally:
            for h in self._handles:
                h.remove()
            self._owner_hooks.clear()
            self._handles.clear()
            self._model.train(self._was_training)

    def __exit__(self, *exc) -> None:
        self._remove()

    # -- results
    @property
    def taps(self) -> list[Gate]:
        """The gates seen, one per recorded key (a call of a shared module is a gate of its own), in forward
        order, each with its place and channels (what a recording's manifest lists: ``Gate.record()``)."""
        return list(self._seen_gates.values())

    @property
    def images(self) -> int:
        """Images recorded so far."""
        return self._seen

    def fold_stats(self) -> dict[TapKey, FoldStats]:
        """Exact per-fold statistics of every (tap key, kind)."""
        return {k: FoldStats.from_moments_list(v) for k, v in self._moments.items()}

    def stats(self) -> dict[TapKey, ChannelStats]:
        """Exact per-channel statistics of every (tap key, kind) over all recorded images."""
        return {k: fs.total() for k, fs in self.fold_stats().items()}

    def raw(self) -> dict[TapKey, np.ndarray]:
        """The first ``raw_n`` recorded vectors of every (tap key, kind), [n, C] in ``raw_dtype`` (``str(key)`` is the
        name a recording's raw file gives them)."""
        return {k: torch.cat(v).cpu().numpy() for k, v in self._raw.items()}
