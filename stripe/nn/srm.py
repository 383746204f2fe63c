"""Style-based Recalibration Module (Lee et al. 2019)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .taps import ChannelAttention


class ChannelAffine(nn.Module):
    """Per-channel z * weight + bias: the affine part of a BatchNorm1d, with the same parameter names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.weight + self.bias


class SRM(ChannelAttention):
    """Style pooling [mean, std] over H x W -> channel-wise FC (weight C x 2, init 0, no mixing
    across channels, no bias) -> BatchNorm over C -> Sigmoid.

    std is the unbiased std over H x W, computed as sqrt(var + eps) so its gradient stays finite
    on a constant map; it is undefined on a 1 x 1 map, which raises.

    ASR adaptation (``affine_only=True``): ψ has a spatial size of at least 2 x 2
    (``min_psi_size = 2``; the ASR default for SRM), and the internal BatchNorm is replaced by its
    affine part (same ``bn.weight``/``bn.bias`` parameters) because a batch of one ψ cannot be
    batch-normalised. With ψ initialised to a constant its std input starts at sqrt(eps) and
    receives no gradient (the gate then learns from the mean alone) unless ψ is initialised
    non-constant.
    """

    min_psi_size = 2

    def __init__(self, channels: int, affine_only: bool = False, eps: float = 1e-5) -> None:
        super().__init__(channels)
        self.eps = eps
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = ChannelAffine(channels) if affine_only else nn.BatchNorm1d(channels)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < 2:
            raise UserError("srm: std over H x W is undefined on a 1 x 1 map; use an input of at least 2 x 2")
        std = (x.flatten(2).var(dim=2, unbiased=True) + self.eps).sqrt()  # [B, C]
        z = pooled * self.cfc[:, 0] + std * self.cfc[:, 1]  # [B, C]
        return torch.sigmoid(self.bn(z))
