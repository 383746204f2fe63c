"""The attention registry: ``register_attn(spec)``, ``create_attn(name, channels, **kw)`` and ``list_attn()``.

Every attention module of this package joins here, once; recording finds gates through this
registry (:func:`gate_classes`), so a newly registered module is recorded without other changes.
:func:`registered_attn` registers one for a ``with`` block only (a module defined outside the package, a test).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args

from torch import nn

from ..errors import UserError
from .cbam import CBAM
from .dia import DIACell
from .eca import ECA
from .ie import IEBatchNorm, IEGate
from .se import SE
from .spa import SPA
from .srm import SRM
from .taps import ChannelAttention

Placement = Literal["after_bn", "in_bn", "stage"]


@dataclass(frozen=True)
class AttnSpec:
    """How a registered attention is built and where it sits in a block.

    ``gate`` is the class that computes the attention vector and owns the taps (``tap``,
    ``tap_in``); ``build`` builds the normal (input-fed) form when it differs from ``gate`` (IEBN
    wraps its gate in a BatchNorm); ``asr_kw`` are the keyword arguments of the ψ-fed form.
    placement (the model builds every form through :meth:`create`): ``after_bn`` multiplies the block's last BN
    output; ``in_bn`` replaces that BN: ``build`` makes a :class:`~stripe.nn.taps.GatedNorm` (IEBN) holding the gate;
    ``stage`` is one :class:`~stripe.nn.taps.SharedAttention` shared by every block of a stage (DIA).
    """

    name: str
    gate: type[ChannelAttention]
    placement: Placement
    build: Callable[..., nn.Module] | None = None
    asr_kw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.placement not in get_args(Placement):
            raise UserError(f"attention {self.name!r}: unknown placement {self.placement!r}; known: "
                            f"{', '.join(get_args(Placement))}")
        if self.placement == "in_bn" and self.build is None:
            raise UserError(f"attention {self.name!r}: placement in_bn replaces the block's last BN, so it needs "
                            "build=, a GatedNorm that holds the gate (as IEBatchNorm holds IEGate)")

    @property
    def min_psi_size(self) -> int:
        """Smallest ψ spatial size the ψ-fed form accepts (a class attribute of the gate)."""
        return self.gate.min_psi_size

    def options(self) -> tuple[str, ...]:
        """Keyword options the gate's constructor takes besides ``channels`` (e.g. ``reduction``)."""
        import inspect

        params = inspect.signature(self.gate.__init__).parameters
        return tuple(n for n in params if n not in ("self", "channels") and n not in self.asr_kw)

    def create(self, channels: int, *, for_asr: bool = False, **kw: Any) -> nn.Module:
        """The normal form, or with ``for_asr`` the form that takes ASR's ψ. A ``reduction`` larger than ``channels``
        is refused: the hidden width channels/reduction would be below 1, and the gates round it up to 1 unseen."""
        r = kw.get("reduction")
        if r is not None and not isinstance(r, bool) and isinstance(r, (int, float)) and r > channels:
            raise UserError(f"--reduction {r}: the {self.name} gates of {channels} channels would have a hidden width "
                            f"of {channels}/{r} < 1 (it would be made 1 without a word); give --reduction {channels} "
                            "or less")
        if for_asr:
            return self.gate(channels, **self.asr_kw, **kw)
        return (self.build or self.gate)(channels, **kw)


_SPECS: dict[str, AttnSpec] = {}


def register_attn(spec: AttnSpec) -> AttnSpec:
    """Add an attention to the registry; a second registration of a name raises ``ValueError``."""
    if spec.name in _SPECS:
        raise UserError(f"attention {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


@contextlib.contextmanager
def registered_attn(spec: AttnSpec) -> Iterator[AttnSpec]:
    """:func:`register_attn` for the ``with`` block only: the registration is removed on exit, also on error."""
    register_attn(spec)
    try:
        yield spec
    finally:
        if _SPECS.get(spec.name) is spec:
            del _SPECS[spec.name]


register_attn(AttnSpec("se", SE, "after_bn"))
register_attn(AttnSpec("eca", ECA, "after_bn"))
register_attn(AttnSpec("cbam", CBAM, "after_bn", asr_kw={"spatial": False}))
register_attn(AttnSpec("srm", SRM, "after_bn", asr_kw={"affine_only": True}))
register_attn(AttnSpec("ie", IEGate, "in_bn", build=IEBatchNorm))
register_attn(AttnSpec("spa", SPA, "after_bn"))
register_attn(AttnSpec("dia", DIACell, "stage"))


def list_attn() -> list[str]:
    """Names of the registered attention modules."""
    return list(_SPECS)


def get_spec(name: str) -> AttnSpec:
    """The :class:`AttnSpec` of a registered attention; unknown names raise ``ValueError``."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UserError(f"unknown attention {name!r}; known: {', '.join(_SPECS)}") from None


def create_attn(name: str, channels: int, *, for_asr: bool = False, **kw: Any) -> nn.Module:
    """Build attention ``name`` for ``channels`` channels.

    With ``for_asr=True`` the module is the form that takes ASR's ψ: CBAM without its spatial
    gate, SRM with an affine-only internal norm, IE as a bare gate.
    """
    return get_spec(name).create(channels, for_asr=for_asr, **kw)


def gate_classes() -> dict[type[ChannelAttention], str]:
    """Every registered gate class with its attention name (what recording looks for)."""
    return {spec.gate: name for name, spec in _SPECS.items()}
