"""Folds and the one fold check.

* The ASR fold (:func:`stripe.gates.reparameterize`, in :mod:`.asr`) turns a trained ASR model into the
  plain backbone; :func:`verify_fold` checks it.
* The post-hoc fold of other models' gates (:func:`fold_constants`): each gate's constant (its mean
  attention) is folded where the traced forward proved it folds (:data:`~stripe.gates.gate.FOLDS`):
  ``bn_before`` (gamma *= s, beta *= s; also through a ReLU, for s >= 0), ``conv_after`` (the input
  channels of the 1x1, any, convolution that consumes the product: W[:, c] *= s_c), ``conv_before``
  (the output channels, or timm's standardised conv's ``gain``, and the bias); the gate is removed.
  Gates that do not fold output their constant (:func:`stripe.gates.replace_with_constants`), so the
  result always equals constant replacement, which :func:`verify_posthoc_fold` checks.

Both checks run on a float64 copy whose BatchNorms are randomised by the one randomiser
(:func:`randomize_norms`) and compare the two models' outputs (before a final softmax, which would
saturate: :func:`compared_output`) with :func:`check_close`; a difference above the tolerance raises
:class:`FoldError`.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import Tensor, fx, nn

from ..errors import StripeError, UserError
from ..nn import ASRNorm, count_params
from .adapters import UNSUPPORTED, find_adapter, qualname_of
from .asr import reparameterize
from .gate import Gate
from .replace import PassArg, force_constant, inner_first, replace_with_constants
from .trace import STD_CONVS


class FoldError(StripeError, AssertionError):
    """The folded model's output differs from the model it was folded from by more than the tolerance."""


# --------------------------------------------------------------------------- exact folds
@torch.no_grad()
def _scale(model: nn.Module, site: Gate, c: Tensor) -> None:
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


def fold_constants(model: nn.Module, sites: Iterable[Gate],
                   means: dict[str, Tensor]) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``model`` with each foldable gate's constant folded and the gate removed; the other gates
    output their constant. Returns (model, one report row per site: key, fold, fold_module, done, reason)."""
    sites = list(sites)
    out = copy.deepcopy(model)
    report: dict[str, dict[str, Any]] = {}
    removed: dict[str, int] = {}
    for s in inner_first(sites):
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
@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0, calib: Tensor | None = None) -> None:
    """Give every BatchNorm random statistics and affine parameters, and every ``gain``/``skipinit_gain``
    parameter a random value (in place): what a fold check runs on, so that no parameter sits at a value
    that would hide an error (zero-initialised gammas and gains, timm ResNets' last BN and NF-nets'
    ``conv3.gain``, would make a residual branch vanish).

    With ``calib`` (a batch of inputs), the running statistics are first those of one train-mode pass over
    it, so activations keep a realistic scale through a deep network; then, either way, running mean +=
    0.5·std·N(0, 1), running var ×= exp(0.5·N(0, 1)), γ = 1 + 0.3·N, β = 0.3·N, gains 1 + 0.3·N.
    """
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda t: torch.randn(t.shape, generator=gen).to(t)  # noqa: E731
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if calib is not None:
        was_training, momenta = model.training, [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 1.0  # running statistics := this pass's batch statistics
        model.train()
        model(calib)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    for m in model.modules():
        for attr in ("gain", "skipinit_gain"):
            gain = getattr(m, attr, None)
            if isinstance(gain, nn.Parameter):
                gain.copy_(1 + 0.3 * rnd(gain))
    for bn in bns:
        if bn.running_mean is not None:
            bn.running_mean.add_(0.5 * bn.running_var.sqrt() * rnd(bn.running_mean))
            bn.running_var.mul_(torch.exp(0.5 * rnd(bn.running_var)))
        if bn.weight is not None:
            bn.weight.copy_(1 + 0.3 * rnd(bn.weight))
        if bn.bias is not None:
            bn.bias.copy_(0.3 * rnd(bn.bias))


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


def check_close(reference: nn.Module, folded: nn.Module, x: Tensor, *, atol: float | None, what: str,
                relative: bool = False) -> tuple[float, float]:
    """The one fold check: (max |Δ|, largest output magnitude) between two models' outputs on ``x`` (before a final
    softmax); above ``atol`` (times max(1, the largest magnitude) when ``relative``) it raises :class:`FoldError`."""
    with torch.no_grad():
        ref = compared_output(reference, x)
        diff = (ref - compared_output(folded, x)).abs().max().item()
    scale = ref.abs().max().item()
    limit = None if atol is None else atol * (max(1.0, scale) if relative else 1.0)
    if limit is not None and not diff <= limit:
        rel = f" (outputs up to {scale:.3g}; atol {atol:g} relative)" if relative else f" > atol {atol:g}"
        raise FoldError(f"{what} by {diff:.3g}{rel}")
    return diff, scale


def verify_fold(model: nn.Module, *, atol: float = 1e-5, dtype: torch.dtype | None = None, perturb: float = 0.0,
                batch: int = 4, image_size: int | None = None, seed: int = 0,
                with_scale: bool = False) -> float | tuple[float, float]:
    """Max |logits(model) − logits(fold(model))| in eval mode, on a copy with random BN statistics
    and affine parameters (:func:`randomize_norms`, calibrated on random images) and a random input;
    raises :class:`FoldError` above ``atol`` times max(1, the largest logit magnitude) (the check is
    relative, like the post-hoc fold's, so it means the same for small and large logits).

    ``dtype`` (default: the model's) sets the precision of the copy. In float64 the comparison
    checks the fold's algebra at any depth; in float32 a deep network's own rounding noise
    (ResNet-164: ~1e-4 on logits of ~5 against a float64 forward) can exceed 1e-5 whatever the fold.
    ``perturb`` > 0 first adds N(0, perturb²) noise to every parameter (ψ and the gates included),
    so a check right after initialisation is not trivial. ``with_scale``: (max |Δ|, the largest logit
    magnitude), the scale the difference is relative to.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = getattr(model, "config", None)
    size = image_size or (cfg.image_size if cfg is not None else 32)
    chans = cfg.in_chans if cfg is not None else 3
    device = next(model.parameters()).device
    dtype = dtype or next(model.parameters()).dtype
    x, calib = torch.randn(batch + 16, chans, size, size, generator=g).to(device, dtype).split([batch, 16])
    m = copy.deepcopy(model).to(dtype)
    if perturb > 0:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g).to(p))
    randomize_norms(m, seed, calib=calib)
    m.eval()
    folded = reparameterize(m).eval()
    if any(isinstance(x, ASRNorm) for x in folded.modules()):
        raise FoldError("the folded model still contains an ASR norm")
    diff, scale = check_close(m, folded, x, atol=atol, relative=True, what="fold differs from the ASR model")
    return (diff, scale) if with_scale else diff


@torch.no_grad()
def verify_posthoc_fold(model: nn.Module, sites: Iterable[Gate], means: dict[str, Tensor], example: Tensor, *,
                        seed: int = 0, randomize: bool = True, atol: float | None = None) -> dict[str, Any]:
    """Check the folds in float64: max |out(replace_with_constants) - out(fold_constants)| on ``example``,
    on a copy with perturbed BN statistics and gains (:func:`randomize_norms`).

    A model that ends in a softmax is compared before it (:func:`compared_output`). Returns max_abs_diff,
    max_abs_ref (the largest output magnitude), n_gates, n_folded, params
    before/after, gate modules left and the fold report; with ``atol``, a difference above
    ``atol * max(1, max_abs_ref)`` raises :class:`FoldError`.
    """
    sites = list(sites)
    m64 = copy.deepcopy(model).double().eval()
    if randomize:
        randomize_norms(m64, seed)
    mu64 = {k: v.double() for k, v in means.items()}
    ref_model = replace_with_constants(m64, sites, mu64).eval()
    folded, report = fold_constants(m64, sites, mu64)
    folded.eval()
    diff, scale = check_close(ref_model, folded, example.double(), atol=atol, relative=True,
                              what="post-hoc fold differs from constant replacement")
    return {"max_abs_diff": diff, "max_abs_ref": scale, "n_gates": len(sites),
            "n_folded": sum(r["done"] for r in report), "params_before": count_params(m64),
            "params_after": count_params(folded), "gate_modules_left": gate_modules_left(folded), "report": report}
