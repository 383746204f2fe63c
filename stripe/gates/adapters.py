"""The gate-adapter registry: for a module class, where its channel gate is and how to read it.

A channel gate multiplies a feature map x [B, C, H, W] by an attention vector a [B, C] (broadcast
over H x W). Recording reads two [B, C] tensors per gate: ``after`` (the attention a) and
``before`` (the global average pool of what the gate is computed from; for the gates below that is
the map the gate scales). An adapter tells, for one module class (matched by its exact class, never
by ``isinstance``):

* ``gate_attr``: the submodule whose output is the attention (a forward hook reads ``after``; a hook
  returning a constant replaces the gate by that constant);
* ``layout``: the shape of that output, ``bc11`` ([B, C, 1, 1]), ``b1c`` ([B, 1, C], ECA) or ``bc``;
* ``before_attr``: a submodule whose output is ``before`` ([B, C]); ``None`` means the spatial mean of
  the module's first positional input, which is the map the gate scales;
* ``fold``: where a constant attention folds in the models that use the class (the real target of
  each gate is found by :func:`stripe.gates.detect_gates` from one traced forward; for this package's own
  modules, ``unknown`` here: the model that holds one says where it folds, ``model.gate_folds()``).

There is one registry. This package's own attention modules are in it as adapters of kind
``taps``, generated from :func:`stripe.nn.gate_classes` (so a newly registered attention joins
without a change here): their ``after``/``before`` are the outputs of their ``tap``/``tap_in``, and
they are read, replaced and folded like any adapter's gate (:class:`stripe.gates.Gate`).
Third-party classes are registered below by qualified class name (``module.Class``), so matching a
module never imports timm or torchvision.

Facts of the registered classes (torchvision 0.29, timm 1.0.31):

* ``torchvision.ops.misc.SqueezeExcitation``: ``avgpool``, ``fc1``, ``activation``, ``fc2``,
  ``scale_activation`` (a module); ``forward`` returns ``scale * input``. The gate is ``nn.Hardsigmoid``
  in mobilenet_v3, ``nn.Sigmoid`` in efficientnet / efficientnet_v2 / regnet_y / maxvit (maxvit's
  squeeze activation is SiLU). The next op is always a 1x1 conv: mobilenet_v3 ``features.i.block.{k+1}.0``,
  efficientnet ``features.i.j.block.3.0``, regnet_y ``...f.c.0``, maxvit ``...MBconv.layers.conv_c``
  (a bare ``nn.Conv2d`` with bias; the bias is unaffected by scaling the input).
* ``timm.layers.squeeze_excite.SEModule``: ``fc1``, ``bn`` (Identity by default), ``act``, ``fc2``,
  ``gate`` (``timm.layers.activations.Sigmoid`` by default); returns ``x * self.gate(x_se)``. In timm
  ResNets it runs right after ``bn2`` (BasicBlock) / ``bn3`` (Bottleneck). In NF-nets it sits after a
  ``ScaledStdConv2d`` (``attn`` after conv2 in nf_regnet, ``attn_last`` after conv3 in nf_resnet /
  dm_nfnet); the block's ``attn_gain`` multiplies the SE output outside the module.
* ``timm.layers.squeeze_excite.EffectiveSEModule``: ``fc``, ``gate`` (``nn.Hardsigmoid`` by default).
  VoVNet's ``OsaBlock.attn`` runs after ``conv_concat``, whose ``BatchNormAct2d`` applies an in-place ReLU.
* ``timm.models._efficientnet_blocks.SqueezeExcite``: ``conv_reduce``, ``act1``, ``conv_expand``,
  ``gate`` (``nn.Sigmoid``; mobilenetv3 passes ``hard_sigmoid``); followed by ``conv_pw``/``conv_pwl`` 1x1.
* ``timm.layers.eca.EcaModule`` / ``CecaModule``: ``conv`` (Conv1d, no bias), ``gate`` on [B, 1, C], then
  ``.view(B, -1, 1, 1)`` and ``x * y.expand_as(x)`` (the multiply sees a [B, C, H, W] gate with stride 0
  in H and W). Ceca pads circularly before the conv.
* ``timm.models.senet.SEModule`` (legacy SENet): ``fc1``, ``relu``, ``fc2``, ``sigmoid`` (``nn.Sigmoid``);
  returns ``module_input * x``.
* ``timm.models.hgnet.EseModule`` (PP-HGNet): ``conv``, ``sigmoid``; ``torch.mul(identity, x)``.
* ``timm.layers.cbam.ChannelAttn``: shared ``fc1``/``act``/``fc2`` on the average and max pools,
  ``gate(avg + max)``; in ``CbamModule`` the gated map feeds the spatial gate, so it cannot fold.

Known classes that are not adapters (:data:`AUTO_ONLY`, found by the generic detector) and classes
that are not channel gates (:data:`UNSUPPORTED`, warned about and skipped) carry their reasons.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from ..nn.registry import gate_classes

Layout = Literal["bc11", "b1c", "bc"]
LAYOUTS = ("bc11", "b1c", "bc")


@dataclass(frozen=True)
class GateAdapter:
    """How one gate class exposes its gate (matched by exact class).

    ``kind`` is ``module`` (a third-party class, registered by qualified name) or ``taps`` (an
    attention module of this package: ``after``/``before`` are its ``tap``/``tap_in`` outputs).
    """

    qualname: str
    name: str
    gate_attr: str
    layout: Layout
    fold: str
    note: str = ""
    kind: str = "module"
    before_attr: str | None = None


_ADAPTERS: dict[str, GateAdapter] = {}

#: classes that multiply by a softmax over paths, not a per-channel gate: warned about and skipped
UNSUPPORTED: dict[str, str] = {
    "timm.layers.split_attn.SplitAttn": (
        "softmax over paths (ResNeSt split attention) on 5-D tensors, not a channel gate"),
    "timm.layers.selective_kernel.SelectiveKernel": (
        "softmax over paths (SKNet selective kernel) on 5-D tensors, not a channel gate"),
}

#: known gate classes left to the generic detector, with the reason
AUTO_ONLY: dict[str, str] = {
    "timm.layers.cbam.LightChannelAttn": (
        "forward computes x * F.sigmoid(x_attn) directly: its inherited self.gate module is never called, "
        "so a hook on a gate submodule never fires; the generic multiply detector finds it"),
    "torchvision.models.segmentation.lraspp.LRASPPHead": (
        "the gate scale(high) pools the 960-channel 'high' features but multiplies the 128-channel "
        "cbr(high): what feeds the gate and what it scales are different tensors with different channels. "
        "The generic detector finds the gate (inline in forward, fold none) and flags that its 'before' "
        "(the spatial mean of the gated 128-channel map) is not the gate's input"),
}


def qualname_of(obj: nn.Module | type) -> str:
    """``module.Class`` of a module's exact type (or of a class); imports nothing."""
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _taps_adapters() -> dict[type, GateAdapter]:
    """This package's attention modules as adapters of kind ``taps`` (from the attention registry, as it is now)."""
    return _taps_for(tuple(gate_classes().items()))


@functools.lru_cache(maxsize=8)
def _taps_for(classes: tuple[tuple[type, str], ...]) -> dict[type, GateAdapter]:
    out = {}
    for cls, name in classes:
        doc = (cls.__doc__ or "").strip().splitlines()
        # where the gate's constant folds depends on where the model puts it: the model says (gate_folds())
        out[cls] = GateAdapter(qualname_of(cls), name, "tap", "bc", "unknown", doc[0] if doc else "", "taps",
                               "tap_in")
    return out


def register_adapter(adapter: GateAdapter) -> GateAdapter:
    """Add a third-party adapter; a second one for the same class, or a bad layout, raises ``UserError``."""
    if adapter.qualname in _ADAPTERS or adapter.qualname in {a.qualname for a in _taps_adapters().values()}:
        raise UserError(f"an adapter is already registered for {adapter.qualname}")
    if adapter.layout not in LAYOUTS:
        raise UserError(f"unknown adapter layout {adapter.layout!r}; known: {', '.join(LAYOUTS)}")
    if adapter.kind != "module":
        raise UserError("adapters of kind 'taps' come from the attention registry (stripe.nn.register_attn)")
    if adapter.qualname in UNSUPPORTED:
        raise UserError(f"{adapter.qualname} is not a channel gate: {UNSUPPORTED[adapter.qualname]}")
    _ADAPTERS[adapter.qualname] = adapter
    return adapter


def find_adapter(module: nn.Module) -> GateAdapter | None:
    """The adapter of the module's exact class (this package's attention first), or None."""
    taps = _taps_adapters().get(type(module))
    return taps if taps is not None else _ADAPTERS.get(qualname_of(module))


def adapters() -> dict[str, GateAdapter]:
    """Every adapter by qualified class name: this package's (kind ``taps``) and the third-party ones."""
    return {**{a.qualname: a for a in _taps_adapters().values()}, **_ADAPTERS}


def read_after(out: torch.Tensor, layout: str) -> torch.Tensor:
    """The attention as [B, C] from a gate output of ``layout``."""
    if layout == "bc11":
        return out.reshape(out.shape[0], out.shape[1])  # [B, C, 1, 1] -> [B, C]
    if layout == "b1c":
        return out.reshape(out.shape[0], out.shape[-1])  # [B, 1, C] -> [B, C]
    if layout == "bc":
        return out
    raise UserError(f"unknown adapter layout {layout!r}; known: {', '.join(LAYOUTS)}")


for _a in (
    GateAdapter("torchvision.ops.misc.SqueezeExcitation", "tv_se", "scale_activation", "bc11", "conv_after",
                "avgpool-fc1-activation-fc2-scale_activation; returns scale * input; Hardsigmoid in mobilenet_v3, "
                "Sigmoid in efficientnet/regnet_y/maxvit; followed by a 1x1 projection conv"),
    GateAdapter("timm.layers.squeeze_excite.SEModule", "timm_se", "gate", "bc11", "bn_before",
                "x.mean-fc1-bn-act-fc2-gate; returns x * gate; after bn2/bn3 in timm ResNets, after a "
                "ScaledStdConv2d in NF-nets"),
    GateAdapter("timm.layers.squeeze_excite.EffectiveSEModule", "timm_ese", "gate", "bc11", "bn_before",
                "x.mean-fc-gate (Hardsigmoid); after conv_concat's BatchNormAct2d (BN + in-place ReLU) in VoVNet"),
    GateAdapter("timm.models._efficientnet_blocks.SqueezeExcite", "timm_effnet_se", "gate", "bc11", "conv_after",
                "conv_reduce-act1-conv_expand-gate; Sigmoid in efficientnet, Hardsigmoid in mobilenetv3; "
                "followed by conv_pw/conv_pwl 1x1"),
    GateAdapter("timm.layers.eca.EcaModule", "timm_eca", "gate", "b1c", "bn_before",
                "gate on [B, 1, C] after a Conv1d across channels, then view(B, -1, 1, 1).expand_as(x)"),
    GateAdapter("timm.layers.eca.CecaModule", "timm_ceca", "gate", "b1c", "bn_before",
                "circular-padded ECA; gate on [B, 1, C]"),
    GateAdapter("timm.models.senet.SEModule", "timm_legacy_se", "sigmoid", "bc11", "bn_before",
                "legacy SENet: fc1-relu-fc2-sigmoid; returns module_input * x"),
    GateAdapter("timm.models.hgnet.EseModule", "timm_hgnet_ese", "sigmoid", "bc11", "none",
                "PP-HGNet ESE: conv-sigmoid; returns torch.mul(identity, x)"),
    GateAdapter("timm.layers.cbam.ChannelAttn", "timm_cbam_ch", "gate", "bc11", "none",
                "CBAM channel attention: shared fc on avg and max pools, gate(avg + max); in CbamModule the "
                "gated map feeds the spatial gate"),
):
    register_adapter(_a)
