"""The one record of a channel gate, whatever model it lives in: :class:`Gate`.

A gate multiplies a feature map x [B, C, H, W] by an attention vector a [B, C]. Every gate that
recording, the ablation and the folds deal with is a :class:`Gate`: this package's attention modules
(kind ``taps``: read through their ``tap``/``tap_in``/``tap_hidden``), modules of a registered adapter's
class (kind ``module``), and gates the generic detector finds in any model (kind ``auto``). The types of
gates live in two registries: the attention zoo (:func:`stripe.nn.register_attn`, how to *build* one)
and the gate adapters (:func:`stripe.gates.register_adapter`, how to *read* one).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from ..errors import UserError
from ..nn import is_compiled, unwrap

#: where a constant attention folds: into the BatchNorm before the gate (γ and β), the input channels of the
#: convolution after it, the output channels of the convolution before it, into the norm that holds the gate (an
#: attention inside a BN, placement ``in_bn``: the norm becomes its plain form, IEBN's γ·μ), or nowhere (the reason
#: is kept)
FOLDS = ("bn_before", "conv_after", "conv_before", "in_norm", "none")
GATE_KINDS = ("taps", "module", "auto")
#: what a recording's manifest keeps of a gate (one entry per recorded key)
RECORD_FIELDS = ("key", "module", "attn", "asr", "stage", "block", "depth", "call", "channels", "hidden")


@dataclass(frozen=True)
class Gate:
    """One channel gate: where it is, how it is read and replaced, where its constant folds.

    ``key`` is the recording key (``<path>.tap`` for this package's modules, ``<path>.gate`` (``.gate<i>``
    for an owner's i-th gate) otherwise; ``[i]`` appended for call i of a module that runs several times
    per forward). ``path`` is the module that owns the gate ("" = the root). ``attn`` is the attention's
    name (``se``), the adapter's (``tv_se``) or ``auto``. ``stage``/``block``/``depth`` are the gate's place
    when the model describes it (``depth`` is the global block index; for other models the gate's position
    in forward order), ``hidden`` the width of the gate's hidden layer. ``fold`` is one of :data:`FOLDS`, or
    ``unknown`` before a traced forward decided it (:func:`stripe.gates.detect_gates`). ``gate_attr``/
    ``before_attr`` name the submodules whose outputs are the attention and the pooled input (``None``: the
    spatial mean of the module's first input), ``layout`` the attention output's shape (``bc11``, ``b1c`` or
    ``bc``). Auto gates are tapped by ``mul_index``, their position among the gate-shaped multiplies of one
    owner call; ``map_arg`` is the owner's argument that is the gated map when the owner can be removed.
    """

    key: str
    path: str
    kind: str
    attn: str
    qualname: str = ""
    asr: bool = False
    channels: int | None = None
    stage: int | None = None
    block: int | None = None
    depth: int | None = None
    call: int | None = None
    hidden: int | None = None
    fold: str = "unknown"
    fold_module: str | None = None
    fold_reason: str = ""
    gate_attr: str | None = None
    before_attr: str | None = None
    layout: str = "bc11"
    mul_index: int = 0
    map_arg: int | None = None
    fold_through: str | None = None
    calls: int = 1
    note: str = ""

    @property
    def adapter(self) -> str:
        """The adapter's name (``auto`` for detected gates): the same as ``attn``."""
        return self.attn

    def at_call(self, call: int | None, *, key: str, channels: int | None = None, **place: Any) -> "Gate":
        """This gate as recorded at one call of its module (its own key, and the place that call has)."""
        return replace(self, key=key, call=call, channels=channels if channels is not None else self.channels,
                       **place)

    def record(self) -> dict[str, Any]:
        """What a recording's manifest lists for this gate (:data:`RECORD_FIELDS`)."""
        d = asdict(self)
        d["module"] = d.pop("path")
        return {k: d[k] for k in RECORD_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return asdict(self)


def site_key(path: str, i: int = 0) -> str:
    """The recording key of an owner's i-th gate: ``<path>.gate`` (``.gate<i>`` from the second on)."""
    return (f"{path}." if path else "") + ("gate" if i == 0 else f"gate{i}")


def recordable(model: nn.Module) -> nn.Module:
    """The module to hook: DP/DDP unwrapped; a ``torch.compile`` wrapper refused (its graphs skip Python hooks)."""
    if is_compiled(model):
        raise UserError("the model is wrapped by torch.compile, whose graphs skip Python hooks; record the "
                        "original module (model._orig_mod) instead")
    return unwrap(model)
