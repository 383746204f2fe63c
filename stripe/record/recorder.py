"""The ``Recorder``: forward hooks on the taps of chosen gates, reduced to exact per-fold moments.

Recording hooks the taps of this package's attention modules (``…attn.tap`` = the attention
vector, "after"; ``…attn.tap_in`` = the pooled input that feeds it, "before"), never module
internals. Gates of any other model are gate sites (:class:`stripe.nn.GateSite`): an adapter
gate is read by a forward hook on its gate submodule ("after") and a pre-hook on its module
("before" = the spatial mean of the map it scales); an ``auto`` gate by a ``TorchFunctionMode``
active only during its owner's call, which taps the owner's k-th gate-shaped multiply. Hooks only stash the tapped
[B, C] tensors (no host sync); after each forward the recorder reduces all taps of one shape in
one batched call (a few kernels per forward, not a few per tap), keeping moments per fold of the
images on the device in float64, and merges them exactly on the CPU at the end.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..nn import GateSite, Tap
from ..nn.adapters import read_after, read_before
from ..nn.posthoc import OwnerModeHooks, gate_vector
from .gates import (GatePoint, TapInfo, adapter_sites, detect_gates, find_gates, recordable, select_gates, site_info,
                    tap_info)
from .format import HIDDEN
from .moments import ChannelStats, FoldStats, batch_moments, constant_moments, fold_counts


class Recorder:
    """Record the attention ("after") and pooled input ("before") of chosen taps over forwards.

    ::

        with Recorder(model, "*", raw_n=256, folds=10) as rec:
            for x, _ in loader:
                model(x)
        stats = rec.stats()            # {(tap key, kind): ChannelStats}, every image
        folds = rec.fold_stats()       # {(tap key, kind): FoldStats}, the i-th image seen in fold i mod 10
        raw = rec.raw()                # {"<key>/<kind>": float16 ndarray [raw_n, C]}

    The model is put in eval mode for the duration (BN statistics never change) and restored
    after; every hook is removed in ``finally``, user hooks are left alone. An ASR tap gives one
    vector per forward (its input is ψ): it is broadcast to the batch, constant by construction.
    Images are numbered in the order they are seen (not by their index in a data set): the i-th image seen
    falls in fold i mod ``folds``.

    Any model: ``taps="*"`` records this package's taps and every module of a registered adapter's
    class (:mod:`stripe.nn.adapters`); ``taps="auto"`` also runs the generic detector
    (:func:`stripe.record.detect_gates`) on ``example`` (a batch of the inputs to record; by
    default random images of the size in ``model.config``)::

        model = build_model(ModelConfig("timm:seresnet18", num_classes=10))
        with Recorder(model, "auto", example=x[:2]) as rec, torch.no_grad():
            model(x)

    ``taps`` may also be a list of gate sites found earlier (:func:`stripe.record.detect_gates`),
    recorded as they are. A gate whose module runs several times per forward is keyed ``<key>`` for
    its first call and ``<key>[i]`` for call i.
    """

    def __init__(self, model: nn.Module, taps: str | Sequence[str] = "*", *, raw_n: int = 0, folds: int = 1,
                 raw_dtype: torch.dtype = torch.float16, example: Any = None) -> None:
        if folds < 1:
            raise UserError(f"folds must be >= 1, got {folds}")
        self.model = recordable(model)
        self.raw_dtype = raw_dtype
        points, selectors = _gate_points(self.model, taps, example)
        self.points: dict[str, GatePoint | GateSite] = {n: points[n] for n in select_gates(self.model, points,
                                                                                           selectors)}
        self.sites: list[GateSite] = [p for p in self.points.values() if isinstance(p, GateSite)]
        self._owner_hooks: list[OwnerModeHooks] = []
        self._calls: dict[tuple[str, str], int] = defaultdict(int)
        self.raw_n = raw_n
        self.folds = int(folds)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._moments: dict[tuple[str, str], list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._raw: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        self._raw_count: dict[tuple[str, str], int] = defaultdict(int)
        self._stash: list[tuple[str, str, torch.Tensor]] = []
        self._info: dict[str, TapInfo] = {}
        self._batch = 0
        self._seen = 0
        self._was_training = False

    # -- hooks
    def _tap_hook(self, name: str, kind: str):
        point = self.points[name]

        def hook(module: Tap, inputs, output: torch.Tensor) -> None:
            a = output.detach()
            if a.dim() != 2:
                raise UserError(f"tap {name}.{ {'after': 'tap', 'before': 'tap_in'}.get(kind, 'tap_' + kind)} gave "
                                f"shape {tuple(a.shape)}; expected [B, C]")
            key = f"{name}.tap" if module.index is None else f"{name}.tap[{module.index}]"
            if kind == "after" and key not in self._info:
                self._info[key] = tap_info(self.model, key, point, module.index, a.shape[1])
            self._stash.append((key, kind, a))
        return hook

    def _site_tap(self, site: GateSite, kind: str, a: torch.Tensor) -> None:
        """Stash one [B, C] tensor of a gate site (call i of its module in this forward keyed ``key[i]``)."""
        i = self._calls[(site.key, kind)]
        self._calls[(site.key, kind)] = i + 1
        key = site.key if i == 0 else f"{site.key}[{i}]"
        if kind == "after" and key not in self._info:
            self._info[key] = site_info(site, key, self.sites.index(site), i if i else None, a.shape[1])
        self._stash.append((key, kind, a))

    def _site_hooks(self, site: GateSite) -> None:
        owner = self.model.get_submodule(site.path)
        if site.kind == "auto":
            self._owner_hooks.append(OwnerModeHooks(owner, {site.mul_index: site}, self._auto_act))
            return
        self._handles.append(owner.get_submodule(site.gate_attr).register_forward_hook(
            lambda mod, args, out: self._site_tap(site, "after", read_after(out.detach(), site.layout).clone())))
        if site.before_attr is not None:
            self._handles.append(owner.get_submodule(site.before_attr).register_forward_hook(
                lambda mod, args, out: self._site_tap(site, "before", out.detach())))
        else:
            self._handles.append(owner.register_forward_pre_hook(lambda mod, args: self._before_of_input(site, args)))

    def _before_of_input(self, site: GateSite, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise UserError(f"gate {site.key}: the module's first input is not a [B, C, H, W] map, so 'before' "
                               "cannot be read from it")
        self._site_tap(site, "before", read_before(x.detach()))

    def _auto_act(self, site: GateSite, m: torch.Tensor, g: torch.Tensor, pos: int, func, args, kwargs):
        if site.channels is not None and g.shape[1] != site.channels:
            raise UserError(f"gate {site.key}: the tapped multiply has {g.shape[1]} channels, {site.channels} at "
                               "detection; calibrate (example=...) on inputs of the size you record")
        self._site_tap(site, "after", gate_vector(g.detach()).clone())
        self._site_tap(site, "before", read_before(m.detach()))
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
        device = self._stash[0][2].device
        fold_ids = (torch.arange(self._batch, device=device) + self._seen) % self.folds  # [B]
        counts = None
        groups: dict[tuple, list[tuple[str, str, torch.Tensor]]] = defaultdict(list)
        for key, kind, a in self._stash:
            if a.shape[0] == 1 and self._batch > 1:  # input-independent (ASR): the same for every image
                if counts is None:
                    counts = fold_counts(fold_ids, self.folds)
                self._moments[(key, kind)].append(constant_moments(a[0], counts))
                a = a.expand(self._batch, -1)
            else:
                groups[(a.shape[0], a.device)].append((key, kind, a))
            if self._raw_count[(key, kind)] < self.raw_n:
                take = min(self.raw_n - self._raw_count[(key, kind)], a.shape[0])
                self._raw[(key, kind)].append(a[:take].to(self.raw_dtype))
                self._raw_count[(key, kind)] += take
        for (_, dev), items in groups.items():
            # every tap of this batch side by side: one exact reduction, whatever the taps' widths
            widths = [a.shape[1] for _, _, a in items]
            m = batch_moments(torch.cat([a.to(torch.float64) for _, _, a in items], dim=1), fold_ids.to(dev),
                              self.folds, segments=widths)  # [K, sum C]
            lo = 0
            for (key, kind, _), w in zip(items, widths):
                self._moments[(key, kind)].append({k: (v if k == "count" else v[:, lo:lo + w]) for k, v in m.items()})
                lo += w
        self._seen += self._batch
        self._stash.clear()

    def __enter__(self) -> "Recorder":
        self._was_training = self.model.training
        self.model.eval()
        try:
            for name, point in self.points.items():
                if isinstance(point, GateSite):
                    self._site_hooks(point)
                    continue
                attn = self.model.get_submodule(name)
                self._handles.append(attn.tap.register_forward_hook(self._tap_hook(name, "after")))
                self._handles.append(attn.tap_in.register_forward_hook(self._tap_hook(name, "before")))
                if isinstance(getattr(attn, "tap_hidden", None), Tap):  # a gate with a hidden layer
                    self._handles.append(attn.tap_hidden.register_forward_hook(self._tap_hook(name, HIDDEN)))
            self._handles.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._post_forward))
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
            self.model.train(self._was_training)

    def __exit__(self, *exc) -> None:
        self._remove()

    # -- results
    @property
    def taps(self) -> list[TapInfo]:
        """The taps seen, in forward order."""
        return list(self._info.values())

    @property
    def images(self) -> int:
        """Images recorded so far."""
        return self._seen

    def fold_stats(self) -> dict[tuple[str, str], FoldStats]:
        """Exact per-fold statistics of every (tap key, kind)."""
        return {k: FoldStats.from_moments_list(v) for k, v in self._moments.items()}

    def stats(self) -> dict[tuple[str, str], ChannelStats]:
        """Exact per-channel statistics of every (tap key, kind) over all recorded images."""
        return {k: fs.total() for k, fs in self.fold_stats().items()}

    def raw(self) -> dict[str, np.ndarray]:
        """The first ``raw_n`` recorded vectors of every (tap, kind), [n, C] in ``raw_dtype``, keyed ``<key>/<kind>``."""
        return {f"{key}/{kind}": torch.cat(v).cpu().numpy() for (key, kind), v in self._raw.items()}


def _gate_points(model: nn.Module, taps: Any, example: Any) -> tuple[dict[str, GatePoint | GateSite], list[str]]:
    """Every gate the selection may choose from (by name), and the selectors."""
    selectors = [taps] if isinstance(taps, str) else list(taps)
    if selectors and all(isinstance(t, GateSite) for t in selectors):  # sites found earlier, recorded as they are
        return {t.key: t for t in selectors}, ["*"]
    points: dict[str, GatePoint | GateSite] = dict(find_gates(model))
    if "auto" in selectors:
        sites = detect_gates(model, _example(model, example))
    elif example is not None:  # traced: adapter gates with their fold analysis
        sites = [s for s in detect_gates(model, example) if s.kind != "auto"]
    else:
        sites = adapter_sites(model)
    points.update({s.key: s for s in sites if s.kind != "taps"})  # this package's gates: through their taps
    return points, selectors


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
