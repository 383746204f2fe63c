"""The ASR fold: each ASR norm becomes its plain BN with v = attn(ψ) folded into γ and β."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn import ASRNorm, fold_norm, set_submodule


def asr_vectors(model: nn.Module) -> dict[str, torch.Tensor]:
    """v of every ASR norm, by module name, computed in forward order (DIA's state flows block to block)."""
    with torch.no_grad():
        return {name: m.vector().detach()[0] for name, m in model.named_modules() if isinstance(m, ASRNorm)}


def reparameterize(model: nn.Module) -> nn.Module:
    """A new model in which every ASR norm is its plain BN with v folded in; ``model`` is untouched.

    The result's ``state_dict`` loads with ``strict=True`` into the same architecture built without
    ASR (and with the normal attention when the model was built with ``both=True``).
    """
    new = copy.deepcopy(model)
    for name, v in asr_vectors(new).items():
        set_submodule(new, name, fold_norm(new.get_submodule(name).norm, v))
    for m in new.modules():
        if hasattr(m, "drop_asr"):
            m.drop_asr()
    if hasattr(new, "config"):
        new.config = new.config.folded()
    return new
