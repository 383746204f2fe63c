"""Constant replacement: a gate outputs a constant vector (its mean attention) for every input.

One function for every gate (:func:`replace_with_constants`), whatever its kind:

* this package's attention modules (kind ``taps``) are replaced *and folded* by the model that holds them, where
  its ``gate_folds()`` says (``CifarResNet.fold_constant``): a block's attention by the constant folded into the
  block's last BN (CBAM keeps its spatial gate, which depends on the input), an attention inside a norm (IEBN) by
  the norm's plain form, an ASR gate by the ASR fold with v = μ, a stage-shared cell (DIA) block by block (the
  whole stage at once); in a model that does not fold its own gates, the constant is forced at the module's tap;
* a module of a registered adapter's class (kind ``module``) keeps its place and its gate submodule's
  output is replaced by the constant;
* a detected gate (kind ``auto``) has its owner replaced by :class:`ConstantGate` when the owner's
  output is exactly the gated map, else the gate operand of its multiply is replaced inside the call.

The model given is never changed; the result is a new model. :func:`stripe.gates.fold_constants` goes one
step further for other models' gates: it folds each constant into a neighbouring layer and removes the gate.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .gate import Gate
from .trace import MUL_FUNCS, split_gate


# --------------------------------------------------------------------------- auto gates: a mode during the owner's call
class _OwnerMode(torch.overrides.TorchFunctionMode):
    """Active during one owner call: counts gate-shaped multiplies and lets ``act`` handle the chosen ones."""

    def __init__(self, sites: dict[int, Gate], act: Callable[..., Any]) -> None:
        super().__init__()
        self.sites, self.act, self.count = sites, act, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in MUL_FUNCS and len(args) >= 2:
            sp = split_gate(args[0], args[1])
            if sp is not None:
                k = self.count
                self.count += 1
                site = self.sites.get(k)
                if site is not None:
                    return self.act(site, sp[0], sp[1], sp[2], func, args, kwargs)
        return func(*args, **kwargs)


class OwnerModeHooks:
    """Hooks that run an :class:`_OwnerMode` during every call of an owner module (auto gates).

    ``act(site, map, gate, map_position, func, args, kwargs)`` computes the multiply. ``remove()``
    also leaves any mode an exception left active.
    """

    def __init__(self, owner: nn.Module, sites: dict[int, Gate], act: Callable[..., Any]) -> None:
        self.sites, self.act = sites, act
        self.active: list[_OwnerMode] = []
        self.handles = [owner.register_forward_pre_hook(self._pre),
                        owner.register_forward_hook(self._post, always_call=True)]

    def _pre(self, module: nn.Module, args: tuple) -> None:
        mode = _OwnerMode(self.sites, self.act)
        mode.__enter__()
        self.active.append(mode)

    def _post(self, module: nn.Module, args: tuple, out: Any) -> None:
        if self.active:
            self.active.pop().__exit__(None, None, None)

    def remove(self) -> None:
        """Remove the hooks (and leave any mode still active)."""
        while self.active:
            self.active.pop().__exit__(None, None, None)
        for h in self.handles:
            h.remove()
        self.handles = []



# --------------------------------------------------------------------------- other models' gates
class ConstantGate(nn.Module):
    """Stands in for a removable gate owner: returns ``args[map_arg]`` times the constant per channel."""

    def __init__(self, mu: Tensor, map_arg: int = 0) -> None:
        super().__init__()
        self.map_arg = map_arg
        self.register_buffer("mu", mu.detach().clone().reshape(-1))  # [C]

    def forward(self, *args: Tensor) -> Tensor:
        x = args[self.map_arg]
        return x * self.mu.to(x).view(1, -1, 1, 1)  # [1, C, 1, 1]


class PassArg(nn.Module):
    """A removed gate owner whose gated map is its positional argument ``index``: returns it unchanged."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, *args: Tensor) -> Tensor:
        return args[self.index]


def _const_like(mu: Tensor, out: Tensor, layout: str) -> Tensor:
    """The constant [C] in the shape and dtype of a gate output of ``layout``."""
    shape = {"b1c": (1, 1, -1), "bc": (1, -1)}.get(layout, (1, -1, 1, 1))
    return mu.to(out).view(shape).expand_as(out).contiguous()


def force_constant(model: nn.Module, gate: Gate, mu: Tensor) -> None:
    """Make ``gate`` of ``model`` (in place) output the constant ``mu`` [C] for every input (other models' gates)."""
    owner = model.get_submodule(gate.path)
    mu = mu.detach().clone().reshape(-1)
    if gate.kind != "auto" and gate.gate_attr is not None:
        owner.get_submodule(gate.gate_attr).register_forward_hook(
            lambda mod, args, out: _const_like(mu, out, gate.layout))
    elif gate.map_arg is not None and gate.path:
        model.set_submodule(gate.path, ConstantGate(mu, gate.map_arg))
    else:
        def act(g_: Gate, m: Tensor, g: Tensor, pos: int, func: Any, args: tuple, kwargs: dict) -> Any:
            new = list(args)
            new[1 - pos] = mu.to(g).view(1, -1, 1, 1).expand(g.shape[0], -1, 1, 1)  # [B, C, 1, 1]
            return func(*new, **kwargs)

        OwnerModeHooks(owner, {gate.mul_index: gate}, act)  # the hooks live as long as the model


def inner_first(gates: Iterable[Gate]) -> list[Gate]:
    """Gates with the deepest owners first, so replacing an owner never invalidates a later path."""
    return sorted(gates, key=lambda g: -len(g.path.split(".")) if g.path else 0)


# --------------------------------------------------------------------------- this package's attention modules
def _force_taps(model: nn.Module, path: str, per_call: dict[int | None, Tensor]) -> None:
    """Make the tap of the attention module at ``path`` output its constant (per call, by the tap's index), for a
    model that does not fold its own gates (no ``fold_constant``)."""
    consts = {call: mu.detach().clone().reshape(1, -1) for call, mu in per_call.items()}  # [1, C]

    def hook(tap: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        mu = consts.get(tap.index)
        return None if mu is None else mu.to(out).expand_as(out)

    model.get_submodule(path).tap.register_forward_hook(hook)  # the hook lives as long as the model


def _replace_own(model: nn.Module, path: str, group: list[Gate], means: dict[str, Tensor]) -> None:
    """Replace this package's attention module at ``path`` (every recorded call of it in ``group``) by its constant:
    folded by the model where it says (``model.fold_constant``), else forced at the module's tap."""
    per_call = {g.call: means[g.key] for g in group}
    fold = getattr(model, "fold_constant", None)
    if callable(fold):
        fold(path, per_call)
    else:
        _force_taps(model, path, per_call)


def replace_with_constants(model: nn.Module, gates: Sequence[Gate], means: dict[str, Tensor]) -> nn.Module:
    """A new model in which every gate in ``gates`` outputs its constant ``means[gate.key]`` [C] (this package's
    attention modules folded where they sit); ``model`` is untouched."""
    new = copy.deepcopy(model)
    own: dict[str, list[Gate]] = {}
    for g in gates:
        if g.kind == "taps":
            own.setdefault(g.path, []).append(g)
    for path in sorted(own, key=lambda p: -p.count(".")):  # a gate inside a norm before the norm's own ASR gate
        _replace_own(new, path, own[path], means)
    for g in inner_first([g for g in gates if g.kind != "taps"]):
        force_constant(new, g, means[g.key])
    return new
