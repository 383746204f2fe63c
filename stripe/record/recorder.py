"""The ``Recorder``: forward hooks on the taps of chosen gates, reduced to exact per-fold moments.

Recording hooks the taps of the attention modules (``…attn.tap`` = the attention vector,
"after"; ``…attn.tap_in`` = the pooled input that feeds it, "before"), never module internals.
Hooks only stash the tapped [B, C] tensors; after each forward the recorder reduces all taps of
one shape in one batched call (a few kernels per forward, not a few per tap), keeping moments per
fold of the images on the device in float64, and merges them exactly on the CPU at the end.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..nn import Tap
from .gates import GatePoint, TapInfo, find_gates, recordable, select_gates, tap_info
from .moments import ChannelStats, FoldStats, batch_moments, constant_moments, fold_counts


class Recorder:
    """Record the attention ("after") and pooled input ("before") of chosen taps over forwards.

    ::

        with Recorder(model, "*", raw_n=256, folds=10) as rec:
            for x, _ in loader:
                model(x)
        stats = rec.stats()            # {(tap key, kind): ChannelStats}, every image
        folds = rec.fold_stats()       # {(tap key, kind): FoldStats}, image i in fold i mod 10
        raw = rec.raw()                # {"<key>/<kind>": float16 ndarray [raw_n, C]}

    The model is put in eval mode for the duration (BN statistics never change) and restored
    after; every hook is removed in ``finally``, user hooks are left alone. An ASR tap gives one
    vector per forward (its input is ψ): it is broadcast to the batch, constant by construction.
    Images are numbered in the order they are seen: image i falls in fold i mod ``folds``.
    """

    def __init__(self, model: nn.Module, taps: str | Sequence[str] = "*", *, raw_n: int = 0, folds: int = 1,
                 raw_dtype: torch.dtype = torch.float16) -> None:
        if folds < 1:
            raise ValueError(f"folds must be >= 1, got {folds}")
        self.model = recordable(model)
        self.raw_dtype = raw_dtype
        points = find_gates(self.model)
        self.points: dict[str, GatePoint] = {n: points[n] for n in select_gates(self.model, points, taps)}
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
                raise RuntimeError(f"tap {name}.{'tap' if kind == 'after' else 'tap_in'} gave shape "
                                   f"{tuple(a.shape)}; expected [B, C]")
            key = f"{name}.tap" if module.index is None else f"{name}.tap[{module.index}]"
            if kind == "after" and key not in self._info:
                self._info[key] = tap_info(self.model, key, point, module.index, a.shape[1])
            self._stash.append((key, kind, a))
        return hook

    def _pre_forward(self, module, args, kwargs) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        self._batch = int(x.shape[0])
        self._stash.clear()

    def _post_forward(self, module, args, output) -> None:
        self.reduce()

    def reduce(self) -> None:
        """Reduce the stashed tensors of the last forward to per-fold moments (batched by shape)."""
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
                groups[(tuple(a.shape), a.dtype, a.device)].append((key, kind, a))
            if self._raw_count[(key, kind)] < self.raw_n:
                take = min(self.raw_n - self._raw_count[(key, kind)], a.shape[0])
                self._raw[(key, kind)].append(a[:take].to(self.raw_dtype))
                self._raw_count[(key, kind)] += take
        for (shape, _, dev), items in groups.items():
            m = batch_moments(torch.stack([a for _, _, a in items]), fold_ids.to(dev), self.folds)  # [T, K, C]
            for t, (key, kind, _) in enumerate(items):
                self._moments[(key, kind)].append({k: (v if k == "count" else v[t]) for k, v in m.items()})
        self._seen += self._batch
        self._stash.clear()

    def __enter__(self) -> "Recorder":
        self._was_training = self.model.training
        self.model.eval()
        try:
            for name in self.points:
                attn = self.model.get_submodule(name)
                self._handles.append(attn.tap.register_forward_hook(self._tap_hook(name, "after")))
                self._handles.append(attn.tap_in.register_forward_hook(self._tap_hook(name, "before")))
            self._handles.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._post_forward))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
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
