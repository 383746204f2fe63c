"""Small module utilities shared by every layer above: unwrapping wrappers, setting submodules, counting, and the
one check that a model's weights and outputs are finite before anything is scored with it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` (or what a DP/DDP wrapper holds) is a ``torch.compile`` wrapper."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return hasattr(model, "_orig_mod")


def set_submodule(root: nn.Module, path: str, module: nn.Module | None) -> None:
    """Replace the submodule at dotted ``path`` (``layer1.0.bn3``) of ``root`` by ``module``."""
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


class NotFiniteError(UserError):
    """A model whose weights or outputs hold NaN or infinity (a diverged run, a damaged file): scores of it mean
    nothing, so every command that scores a model refuses it in one line."""


def check_finite_weights(model: nn.Module, where: str | Path | None = None) -> nn.Module:
    """``model`` when every floating tensor of its state (parameters and buffers) is finite; else
    :class:`NotFiniteError` saying how many are not and naming the first (``where``, e.g. the file, leads)."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        lead = f"{where}: " if where is not None else ""
        raise NotFiniteError(f"{lead}the model's weights are not finite ({len(bad)} tensors, first: {bad[0]}); it "
                             "diverged or the file is damaged, so nothing is scored with it")
    return model


def check_finite_outputs(finite: bool | torch.Tensor, where: str | Path | None = None) -> None:
    """Raise :class:`NotFiniteError` unless ``finite`` (whether every output was finite, e.g. the AND of
    ``torch.isfinite(logits).all()`` over the batches, kept on the device until here) is true."""
    if not bool(finite):
        lead = f"{where}: " if where is not None else ""
        raise NotFiniteError(f"{lead}the model's outputs are not finite (NaN or infinity) although its weights are; "
                             "it diverged, so nothing is scored with it")
