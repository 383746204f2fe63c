"""ASR: attention fed by a learnable ψ inside the block's last BN, and its exact fold into BN."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import StripeError
from .utils import set_submodule


class ASRNorm(nn.Module):
    """BN followed by multiplication with v = attn(ψ): y = norm(x) ⊙ v.

    ψ is a learnable [1, C, s, s] tensor, the same for every input, so v [1, C] is a constant at
    inference and folds into the norm's γ and β (:func:`reparameterize`).
    """

    def __init__(self, norm: nn.BatchNorm2d, attn: nn.Module, psi_size: int = 1, psi_init: float = 0.1) -> None:
        super().__init__()
        channels = norm.num_features
        self.norm = norm
        self.attn = attn
        self.psi = nn.Parameter(torch.full((1, channels, psi_size, psi_size), float(psi_init)))

    def vector(self) -> torch.Tensor:
        """The attention vector v = attn(ψ), [1, C]."""
        return self.attn.gate(self.psi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.vector()[:, :, None, None]


def asr_vectors(model: nn.Module) -> dict[str, torch.Tensor]:
    """v of every ASR norm, by module name, computed in forward order (DIA's state flows block to block)."""
    with torch.no_grad():
        return {name: m.vector().detach()[0] for name, m in model.named_modules() if isinstance(m, ASRNorm)}


def fold_norm(norm: nn.BatchNorm2d, v: torch.Tensor) -> nn.BatchNorm2d:
    """A copy of ``norm`` with γ' = γ·v and β' = β·v and cloned running statistics."""
    folded = copy.deepcopy(norm)
    with torch.no_grad():
        folded.weight.mul_(v.to(folded.weight.dtype))
        folded.bias.mul_(v.to(folded.bias.dtype))
    return folded


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


class FoldError(StripeError, AssertionError):
    """The folded model's output differs from the ASR model's by more than the tolerance."""


def randomize_batchnorm(model: nn.Module, calib: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm random affine parameters and random running statistics (in place).

    The statistics are those of one train-mode pass over ``calib``, perturbed at random (mean
    shifted by 0.1 std, variance scaled by exp(0.2·N(0, 1))), so activations stay at a realistic
    scale through a deep network while no statistic is at its initial value.
    """
    g = generator or torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    with torch.no_grad():
        for bn in bns:
            if bn.affine:
                bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
                bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.momentum = 1.0  # running statistics := this pass's batch statistics
        model.train()
        model(calib)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
            if bn.running_mean is not None:
                n = bn.num_features
                bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(n, generator=g).to(bn.running_mean))
                bn.running_var.mul_(torch.exp(0.2 * torch.randn(n, generator=g)).to(bn.running_var))
    model.train(was_training)


def verify_fold(model: nn.Module, *, atol: float = 1e-5, dtype: torch.dtype | None = None, perturb: float = 0.0,
                batch: int = 4, image_size: int | None = None, seed: int = 0) -> float:
    """Max |logits(model) − logits(fold(model))| in eval mode, on a copy with random BN statistics
    and affine parameters and a random input; raises :class:`FoldError` above ``atol``.

    ``dtype`` (default: the model's) sets the precision of the copy. In float64 the comparison
    checks the fold's algebra at any depth; in float32 a deep network's own rounding noise
    (ResNet-164: ~1e-4 on logits of ~5 against a float64 forward) can exceed 1e-5 whatever the fold.
    ``perturb`` > 0 first adds N(0, perturb²) noise to every parameter (ψ and the gates included),
    so a check right after initialisation is not trivial.
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
    randomize_batchnorm(m, calib, g)
    m.eval()
    folded = reparameterize(m).eval()
    if any(isinstance(x, ASRNorm) for x in folded.modules()):
        raise FoldError("the folded model still contains an ASR norm")
    with torch.no_grad():
        diff = (m(x) - folded(x)).abs().max().item()
    if not diff <= atol:
        raise FoldError(f"fold differs from the ASR model by {diff:.3g} > atol {atol:g}")
    return diff
