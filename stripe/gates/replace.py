"""Constant replacement: a gate outputs a constant vector (its mean attention) for every input.

One function for every gate (:func:`replace_with_constants`), whatever its kind:

* this package's attention modules (kind ``taps``) are replaced *and folded* the way the architecture
  allows: a block's attention by the constant folded into the block's last BN (CBAM keeps its spatial
  gate, which depends on the input), IEBN by a plain BN with γ·μ, an ASR gate by the ASR fold with
  v = μ, DIA's stage-shared cell block by block (the whole stage at once);
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

from ..errors import UserError
from ..nn import ASRNorm, CBAM, IEBatchNorm, set_submodule
from .asr import fold_norm
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
class SpatialGate(nn.Module):
    """CBAM's spatial gate alone (the channel gate was folded): y ⊙ s(y)."""

    def __init__(self, cbam: CBAM) -> None:
        super().__init__()
        self.conv, self.bn, self.tap_spatial = cbam.conv, cbam.bn, cbam.tap_spatial

    spatial_map = CBAM.spatial_map  # the same computation, on these same submodules

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.spatial_map(y)


def _last_norm_name(block: nn.Module) -> str:
    return "bn3" if hasattr(block, "bn3") else "bn2"


def _fold_into_last_norm(block: nn.Module, mu: Tensor) -> None:
    name = _last_norm_name(block)
    norm = getattr(block, name)
    if isinstance(norm, ASRNorm):  # both=True: the ASR norm's output is what the attention multiplies
        norm.norm = fold_norm(norm.norm, mu.to(norm.norm.weight))
    else:
        setattr(block, name, fold_norm(norm, mu.to(norm.weight)))


def _replace_dia(model: nn.Module, cell_path: str, group: list[Gate], means: dict[str, Tensor]) -> None:
    """Replace every call of a stage's DIA cell (normal or ASR) by its constant, block by block."""
    stage_path, _, leaf = cell_path.rpartition(".")
    stage = model.get_submodule(stage_path)
    if sorted(g.call for g in group) != list(range(stage.num_blocks)):
        raise UserError(f"{cell_path}: DIA shares one recurrent cell across the stage; replace the whole "
                        "stage (scope stage or all), not single blocks")
    for g in group:
        block = stage.blocks()[g.call]
        mu = means[g.key]
        if group[0].asr:
            name = _last_norm_name(block)
            asr_norm = getattr(block, name)
            setattr(block, name, fold_norm(asr_norm.norm, mu.to(asr_norm.norm.weight)))
        else:
            _fold_into_last_norm(block, mu)
            block.attn = None
    del stage._modules[leaf]


def _replace_own(model: nn.Module, path: str, group: list[Gate], means: dict[str, Tensor]) -> None:
    """Replace (and fold) this package's attention module at ``path`` (every recorded call of it in ``group``)."""
    first = group[0]
    if first.attn == "dia":
        _replace_dia(model, path, group, means)
    elif first.asr:  # the ASR gate of an ASRNorm at <block>.<norm>.attn: the ASR fold, v = μ
        norm_path = path.rpartition(".")[0]
        asr_norm = model.get_submodule(norm_path)
        set_submodule(model, norm_path, fold_norm(asr_norm.norm, means[first.key].to(asr_norm.norm.weight)))
    else:
        owner_path = path.rpartition(".")[0]
        owner = model.get_submodule(owner_path)
        mu = means[first.key]
        if isinstance(owner, IEBatchNorm):  # IE: y = xhat·(γ·a) + β  ->  a plain BN with γ·μ
            bn = nn.BatchNorm2d(owner.num_features, eps=owner.eps, momentum=owner.momentum)
            bn.load_state_dict({k: v for k, v in owner.state_dict().items() if not k.startswith("attn.")})
            with torch.no_grad():
                bn.weight.mul_(mu.to(bn.weight))
            set_submodule(model, owner_path, bn.to(owner.weight.device))
        else:  # the block's attention slot
            _fold_into_last_norm(owner, mu)
            attn = owner.attn
            owner.attn = SpatialGate(attn) if isinstance(attn, CBAM) and attn.spatial else None


def replace_with_constants(model: nn.Module, gates: Sequence[Gate], means: dict[str, Tensor]) -> nn.Module:
    """A new model in which every gate in ``gates`` outputs its constant ``means[gate.key]`` [C] (this package's
    attention modules folded where they sit); ``model`` is untouched."""
    new = copy.deepcopy(model)
    own: dict[str, list[Gate]] = {}
    for g in gates:
        if g.kind == "taps":
            own.setdefault(g.path, []).append(g)
    for path, group in own.items():
        _replace_own(new, path, group, means)
    for g in inner_first([g for g in gates if g.kind != "taps"]):
        force_constant(new, g, means[g.key])
    return new
