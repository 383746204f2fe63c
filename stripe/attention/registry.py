"""The attention registry: ``create_attn(name, channels, **kw)`` and ``list_attn()``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

from .cbam import CBAM
from .dia import DIACell
from .eca import ECA
from .ie import IEBatchNorm, IEGate
from .se import SE
from .spa import SPA
from .srm import SRM

Placement = Literal["after_bn", "in_bn", "stage"]


@dataclass(frozen=True)
class AttnSpec:
    """How a registered attention is built and where it sits in a block.

    placement: ``after_bn`` multiplies the block's last BN output; ``in_bn`` replaces that BN
    (IEBN); ``stage`` is one module shared by every block of a stage (DIA).
    """

    name: str
    build: Callable[..., nn.Module]
    build_asr: Callable[..., nn.Module]
    placement: Placement
    min_psi_size: int = 1


_SPECS: dict[str, AttnSpec] = {}


def _register(spec: AttnSpec) -> None:
    if spec.name in _SPECS:
        raise ValueError(f"attention {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec


_register(AttnSpec("se", SE, SE, "after_bn"))
_register(AttnSpec("eca", ECA, ECA, "after_bn"))
_register(AttnSpec("cbam", CBAM, lambda c, **kw: CBAM(c, spatial=False, **kw), "after_bn"))
_register(AttnSpec("srm", SRM, lambda c, **kw: SRM(c, affine_only=True, **kw), "after_bn", min_psi_size=2))
_register(AttnSpec("ie", IEBatchNorm, IEGate, "in_bn"))
_register(AttnSpec("spa", SPA, SPA, "after_bn"))
_register(AttnSpec("dia", DIACell, DIACell, "stage"))


def list_attn() -> list[str]:
    """Names of the registered attention modules."""
    return list(_SPECS)


def get_spec(name: str) -> AttnSpec:
    """The :class:`AttnSpec` of a registered attention; unknown names raise ``ValueError``."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(_SPECS)}") from None


def create_attn(name: str, channels: int, *, for_asr: bool = False, **kw) -> nn.Module:
    """Build attention ``name`` for ``channels`` channels.

    With ``for_asr=True`` the module is the form that takes ASR's ψ: CBAM without its spatial
    gate, SRM with an affine-only internal norm, IE as a bare gate.
    """
    spec = get_spec(name)
    return (spec.build_asr if for_asr else spec.build)(channels, **kw)
