"""Gates of any model after training: the gate sites, constant replacement, exact folds, verification.

A :class:`GateSite` is one channel gate of a model as :func:`stripe.record.detect_gates` finds it
(through an adapter of :mod:`stripe.nn.adapters`, or ``auto``: a gate-shaped multiply seen in one
traced forward), with where a constant attention folds:

* ``bn_before``: the gated map is the private output of a BatchNorm (or ReLU(BN), for a constant
  >= 0): gamma *= s, beta *= s;
* ``conv_after``: the product feeds only one ``nn.Conv2d`` (any kernel, any groups, any padding
  mode): its weight's input channel c is multiplied by s_c (W[:, c] *= s_c);
* ``conv_before``: the gated map is the private output of a conv: output channel k of the weight
  (or, for timm's ``ScaledStdConv2d`` that standardises its weight at every call, of ``gain``) and
  its bias are multiplied by s_k;
* ``none``, with the reason, otherwise (the gate can still be replaced by its constant).

:func:`replace_with_constant` makes every gate output its constant (at the gate, the model keeps
its structure); :func:`fold_constants` folds what folds and removes those gates; the two agree
exactly, which :func:`verify_posthoc_fold` checks in float64 with perturbed BN statistics.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, fx, nn

from ..errors import UserError
from .adapters import UNSUPPORTED, find_adapter, qualname_of
from .asr import FoldError
from .utils import count_params

FOLDS = ("bn_before", "conv_after", "conv_before", "none")
#: timm convs that standardise their weight at every call; a per-output-channel scale folds into ``gain``
STD_CONVS = frozenset({"timm.layers.std_conv.ScaledStdConv2d", "timm.layers.std_conv.ScaledStdConv2dSame"})


@dataclass(frozen=True)
class GateSite:
    """One channel gate of a model: where it is, how it is read and replaced, where its constant folds.

    ``path`` is the module that owns the gate multiply ("" = the root), ``key`` the recording key
    (``<path>.gate``; ``.gate<i>`` for the i-th gate of one owner). ``adapter`` is the adapter's name
    or ``auto``; ``kind`` is ``module`` or ``taps`` (adapters) or ``auto``. ``fold`` is ``unknown``
    for a site found by class only (no traced forward). ``mul_index`` is the gate's position among
    the gate-shaped multiplies of one owner call (auto gates); ``map_arg`` the owner's positional
    argument that is the gated map when the owner's output is exactly the product (so the owner can
    be removed), else None. ``note`` flags a ``before`` that is not what the gate is computed from.
    """

    path: str
    qualname: str
    adapter: str
    key: str
    channels: int | None
    fold: str
    fold_module: str | None
    fold_reason: str
    kind: str = "module"
    gate_attr: str | None = None
    before_attr: str | None = None
    layout: str = "bc11"
    mul_index: int = 0
    map_arg: int | None = None
    fold_through: str | None = None
    calls: int = 1
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------- gate-shaped multiplies
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


class _OwnerMode(torch.overrides.TorchFunctionMode):
    """Active during one owner call: counts gate-shaped multiplies and lets ``act`` handle the chosen ones."""

    def __init__(self, sites: dict[int, GateSite], act: Callable[..., Any]) -> None:
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

    def __init__(self, owner: nn.Module, sites: dict[int, GateSite], act: Callable[..., Any]) -> None:
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


# --------------------------------------------------------------------------- constant replacement
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


def force_constant(model: nn.Module, site: GateSite, mu: Tensor) -> None:
    """Make gate ``site`` of ``model`` (in place) output the constant ``mu`` [C] for every input."""
    owner = model.get_submodule(site.path)
    mu = mu.detach().clone().reshape(-1)
    if site.kind != "auto" and site.gate_attr is not None:
        owner.get_submodule(site.gate_attr).register_forward_hook(
            lambda mod, args, out: _const_like(mu, out, site.layout))
    elif site.map_arg is not None and site.path:
        model.set_submodule(site.path, ConstantGate(mu, site.map_arg))
    else:
        def act(s: GateSite, m: Tensor, g: Tensor, pos: int, func: Any, args: tuple, kwargs: dict) -> Any:
            new = list(args)
            new[1 - pos] = mu.to(g).view(1, -1, 1, 1).expand(g.shape[0], -1, 1, 1)  # [B, C, 1, 1]
            return func(*new, **kwargs)

        OwnerModeHooks(owner, {site.mul_index: site}, act)  # the hooks live as long as the model


def _inner_first(sites: Iterable[GateSite]) -> list[GateSite]:
    """Sites with the deepest owners first, so replacing an owner never invalidates a later path."""
    return sorted(sites, key=lambda s: -len(s.path.split(".")) if s.path else 0)


def replace_with_constant(model: nn.Module, sites: Iterable[GateSite], means: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` whose gates output the constants ``means[site.key]`` ([C]); ``model`` is untouched."""
    out = copy.deepcopy(model)
    for s in _inner_first(list(sites)):
        force_constant(out, s, means[s.key])
    return out


# --------------------------------------------------------------------------- exact folds
@torch.no_grad()
def _scale(model: nn.Module, site: GateSite, c: Tensor) -> None:
    """Fold the constant c [C] into the parameters of ``site.fold_module``."""
    mod = model.get_submodule(site.fold_module)
    if site.fold == "bn_before":
        mod.weight.mul_(c.to(mod.weight))
        mod.bias.mul_(c.to(mod.bias))
    elif site.fold == "conv_after":
        w, groups = mod.weight, mod.groups
        cin_g = w.shape[1]
        wv = w.view(groups, w.shape[0] // groups, cin_g, *w.shape[2:])  # [G, Cout/G, Cin/G, kh, kw]
        wv.mul_(c.to(w).view(groups, 1, cin_g, 1, 1))  # input channel k = group * Cin/G + j
    elif site.fold == "conv_before":
        target = mod.gain if qualname_of(mod) in STD_CONVS else mod.weight
        target.mul_(c.to(target).view(-1, 1, 1, 1))  # [Cout, 1, 1, 1]
        if mod.bias is not None:
            mod.bias.mul_(c.to(mod.bias))
    else:
        raise UserError(f"{site.key}: cannot fold {site.fold!r}")


def _fx_remove(gm: fx.GraphModule, removed: dict[str, int]) -> None:
    """Rewire the calls of removed owners to their map argument; drop dead code, modules and constants."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in removed:
            node.replace_all_uses_with(node.args[removed[node.target]])
            gm.graph.erase_node(node)
    before = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.delete_all_unused_submodules()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for target in before - used:  # constants (onnx2torch initializers) are buffers read through get_attr
        owner, _, attr = target.rpartition(".")
        if owner and not any(c == owner or c.startswith(owner + ".") for c in called):
            mod = gm.get_submodule(owner)
            if attr in mod._buffers:
                del mod._buffers[attr]


def fold_constants(model: nn.Module, sites: Iterable[GateSite],
                   means: dict[str, Tensor]) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``model`` with each foldable gate's constant folded and the gate removed; the other gates
    output their constant. Returns (model, one report row per site: key, fold, fold_module, done, reason)."""
    sites = list(sites)
    out = copy.deepcopy(model)
    report: dict[str, dict[str, Any]] = {}
    removed: dict[str, int] = {}
    for s in _inner_first(sites):
        c = means[s.key].detach().reshape(-1)  # [C]
        ok = s.fold in ("bn_before", "conv_after", "conv_before") and s.map_arg is not None and s.path != ""
        reason = s.fold_reason
        if ok and s.fold_through == "relu" and bool((c < 0).any()):
            ok, reason = False, "a negative constant cannot pass through the ReLU"
        if ok:
            _scale(out, s, c)
            out.set_submodule(s.path, nn.Identity() if s.map_arg == 0 else PassArg(s.map_arg))
            removed[s.path] = s.map_arg
        else:
            force_constant(out, s, c)
        report[s.key] = {"key": s.key, "fold": s.fold if ok else "none", "fold_module": s.fold_module if ok else None,
                         "done": ok, "reason": reason}
    if removed and isinstance(out, fx.GraphModule):
        _fx_remove(out, removed)
    return out, [report[s.key] for s in sites]


def gate_modules_left(model: nn.Module) -> list[str]:
    """Paths of modules of an adapter's class or an unsupported class still in ``model``."""
    return [n for n, m in model.named_modules() if find_adapter(m) is not None or qualname_of(m) in UNSUPPORTED]


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Perturb every BN (running mean + 0.5 N(0, 1), running var x exp(0.5 N(0, 1)), gamma = 1 + 0.3 N,
    beta = 0.3 N) and every ``gain``/``skipinit_gain`` parameter (1 + 0.3 N), in place.

    Zero-initialised gammas and gains (timm ResNets' last BN, NF-nets' ``conv3.gain``) would otherwise
    make a residual branch vanish and an exactness check vacuous.
    """
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda t: torch.randn(t.shape, generator=gen).to(t)  # noqa: E731
    for m in model.modules():
        for attr in ("gain", "skipinit_gain"):
            gain = getattr(m, attr, None)
            if isinstance(gain, nn.Parameter):
                gain.copy_(1 + 0.3 * rnd(gain))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                m.running_mean.add_(0.5 * rnd(m.running_mean))
                m.running_var.mul_(torch.exp(0.5 * rnd(m.running_var)))
            if m.weight is not None:
                m.weight.copy_(1 + 0.3 * rnd(m.weight))
            if m.bias is not None:
                m.bias.copy_(0.3 * rnd(m.bias))


def _first_tensor(out: Any) -> Tensor:
    """The first tensor of a model output (a tensor, a tuple/list, or a dict)."""
    if isinstance(out, Tensor):
        return out
    items = out.values() if isinstance(out, dict) else out
    return next(t for t in items if isinstance(t, Tensor))


SOFTMAX_FUNCS: frozenset[Any] = frozenset({torch.softmax, torch.nn.functional.softmax, Tensor.softmax,
                                           torch.nn.functional.log_softmax, torch.log_softmax, Tensor.log_softmax})


#: ops that copy or reshape a tensor without changing its values: applied to the logits alongside
PASS_FUNCS: frozenset[Any] = frozenset({
    Tensor.clone, torch.clone, Tensor.contiguous, Tensor.detach, torch.detach, Tensor.reshape, torch.reshape,
    Tensor.view, Tensor.flatten, torch.flatten, Tensor.squeeze, torch.squeeze, Tensor.unsqueeze, torch.unsqueeze,
    Tensor.to,
})


class _SoftmaxInputs(torch.overrides.TorchFunctionMode):
    """Remembers the input of every softmax call by the id of its output (followed through copies and reshapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[int, Tensor] = {}
        self.keep: list[Tensor] = []  # outputs stay alive, so their ids stay unique

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not (args and isinstance(args[0], Tensor) and isinstance(out, Tensor)):
            return out
        if func in SOFTMAX_FUNCS:
            self.inputs[id(out)] = args[0]
            self.keep.append(out)
        elif func in PASS_FUNCS and id(args[0]) in self.inputs:
            self.inputs[id(out)] = func(self.inputs[id(args[0])], *args[1:], **kwargs)
            self.keep.append(out)
        return out


def compared_output(model: nn.Module, x: Tensor) -> Tensor:
    """The model's output as a fold check compares it: the first output tensor, or, when that is a softmax,
    the softmax's input (the logits). A softmax saturates (to exactly 0 and 1) under perturbed BN statistics,
    which would hide any difference and make the check unable to fail."""
    mode = _SoftmaxInputs()
    with mode:
        out = _first_tensor(model(x))
    return mode.inputs.get(id(out), out)


@torch.no_grad()
def verify_posthoc_fold(model: nn.Module, sites: Iterable[GateSite], means: dict[str, Tensor], example: Tensor, *,
                        seed: int = 0, randomize: bool = True, atol: float | None = None) -> dict[str, Any]:
    """Check the folds in float64: max |out(replace_with_constant) - out(fold_constants)| on ``example``,
    on a copy with perturbed BN statistics and gains (:func:`randomize_norms`).

    A model that ends in a softmax is compared before it (:func:`compared_output`). Returns max_abs_diff,
    max_abs_ref (the largest output magnitude), n_gates, n_folded, params
    before/after, gate modules left and the fold report; with ``atol``, a difference above
    ``atol * max(1, max_abs_ref)`` raises :class:`stripe.nn.FoldError`.
    """
    sites = list(sites)
    m64 = copy.deepcopy(model).double().eval()
    if randomize:
        randomize_norms(m64, seed)
    mu64 = {k: v.double() for k, v in means.items()}
    ref_model = replace_with_constant(m64, sites, mu64).eval()
    folded, report = fold_constants(m64, sites, mu64)
    folded.eval()
    x = example.double()
    ref = compared_output(ref_model, x)  # logits, also for a model that ends in a softmax
    diff = (ref - compared_output(folded, x)).abs().max().item()
    scale = ref.abs().max().item()
    if atol is not None and not diff <= atol * max(1.0, scale):
        raise FoldError(f"post-hoc fold differs from constant replacement by {diff:.3g} "
                        f"(outputs up to {scale:.3g}; atol {atol:g} relative)")
    return {"max_abs_diff": diff, "max_abs_ref": scale, "n_gates": len(sites),
            "n_folded": sum(r["done"] for r in report), "params_before": count_params(m64),
            "params_after": count_params(folded), "gate_modules_left": gate_modules_left(folded), "report": report}
