"""The paper's four variants and their names: the one place labels, order, slugs and parsing live.

``baseline`` (the plain backbone), ``+SE`` (attention), ``+ASR(SE)`` (attention fed by ψ, folded
at inference) and ``+ASR(SE)+SE`` (both), in that order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping
from ..errors import UserError

_LABEL = re.compile(r"^\+(?:ASR\((?P<asr>[A-Za-z0-9_-]+)\)(?:\+(?P<both>[A-Za-z0-9_-]+))?|(?P<att>[A-Za-z0-9_-]+))$")


@dataclass(frozen=True)
class Variant:
    """One variant: which attention, whether fed by ψ (ASR), whether a normal attention stays beside it."""

    attn: str | None = None
    asr: bool = False
    both: bool = False

    @property
    def label(self) -> str:
        """The paper's name: 'baseline', '+SE', '+ASR(SE)' or '+ASR(SE)+SE'."""
        if not self.attn:
            return "baseline"
        a = self.attn.upper()
        if not self.asr:
            return f"+{a}"
        return f"+ASR({a})+{a}" if self.both else f"+ASR({a})"

    @property
    def rank(self) -> int:
        """Position in the paper's order (baseline 0, +att 1, +ASR(att) 2, +ASR(att)+att 3)."""
        return 0 if not self.attn else 1 if not self.asr else 3 if self.both else 2

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label: '+ASR(SE)+SE' -> 'plus_asr_se_plus_se'."""
        return slug(self.label)

    def overrides(self) -> dict[str, Any]:
        """Model-config fields of this variant."""
        return {"attn": self.attn, "asr": self.asr, "both": self.both}


def _is_missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and v != v)  # None, '' or NaN from a table


def variant_of(model: Mapping[str, Any] | Any) -> Variant:
    """The variant of a model config (a ``ModelConfig`` or its dict)."""
    get = model.get if isinstance(model, Mapping) else lambda k: getattr(model, k, None)
    attn = get("attn")
    return Variant(None if _is_missing(attn) else str(attn), bool(get("asr")), bool(get("both")))


def variant_label(attn: str | None, asr: bool = False, both: bool = False) -> str:
    """The paper's name of a variant: 'baseline', '+SE', '+ASR(SE)' or '+ASR(SE)+SE'."""
    return Variant(None if _is_missing(attn) else str(attn), bool(asr), bool(both)).label


def config_label(model: Mapping[str, Any] | Any) -> str:
    """:func:`variant_label` of a model config (a ``ModelConfig`` or its dict)."""
    return variant_of(model).label


def parse_label(label: str) -> Variant:
    """Inverse of :attr:`Variant.label` ('+ASR(SE)+SE' -> Variant('se', True, True)); unknown text raises."""
    if label == "baseline":
        return Variant()
    m = _LABEL.match(label)
    if m is None or (m["both"] and m["both"].lower() != m["asr"].lower()):
        raise UserError(f"not a variant label: {label!r} (expected baseline, +ATT, +ASR(ATT) or +ASR(ATT)+ATT)")
    if m["att"]:
        return Variant(m["att"].lower())
    return Variant(m["asr"].lower(), True, m["both"] is not None)


def variant_rank(label: str) -> tuple[int, str]:
    """Sort key of the paper's order: baseline, +att, +ASR(att), +ASR(att)+att (unknown labels last)."""
    try:
        return parse_label(label).rank, label
    except ValueError:
        return 4, label


def variants(attn: str) -> dict[str, Variant]:
    """Label -> :class:`Variant` of the four variants of ``attn``, in the paper's order."""
    vs = [Variant(), Variant(attn), Variant(attn, True), Variant(attn, True, True)]
    return {v.label: v for v in vs}


def slug(text: str) -> str:
    """A file-name-safe form of a label: '+ASR(SE)+SE' -> 'plus_asr_se_plus_se'."""
    text = text.replace("+", "_plus_").replace("(", "_").replace(")", "_").lower()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "x"
