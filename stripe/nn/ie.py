"""IEBN (Liang et al. 2020): instance-enhanced batch normalisation, an attention inside a BN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .taps import ChannelAttention, GatedNorm


class IEGate(ChannelAttention):
    """a = Sigmoid(GAP(x) · w + b) with per-channel w (init 0) and b (init -1).

    Under ASR the gate reads ψ instead of the BN input, and (like every ASR module) multiplies
    the whole BN output, so it folds into both γ and β.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.full((channels,), -1.0))

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(pooled * self.weight + self.bias)


def batch_norm_no_affine(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn``'s normalisation without its affine part, with the same running-statistics updates."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(
        x,
        bn.running_mean if not bn.training or bn.track_running_stats else None,
        bn.running_var if not bn.training or bn.track_running_stats else None,
        None, None, use_batch, momentum, bn.eps,
    )


class IEBatchNorm(GatedNorm):
    """y = BN_without_affine(x) · (γ ⊙ a) + β with a = IEGate(x): replaces the wrapped BN itself.

    Its parameters are a BatchNorm2d's plus ``attn.weight``/``attn.bias`` (2C).
    """

    def __init__(self, channels: int, **kw) -> None:
        super().__init__(channels, **kw)
        self.attn = IEGate(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn.gate(x)  # [B, C], from the BN's input
        scale = self.weight[None, :] * a  # [B, C]
        return batch_norm_no_affine(self, x) * scale[:, :, None, None] + self.bias[None, :, None, None]

    def with_constant(self, mu: torch.Tensor) -> nn.BatchNorm2d:
        """y = x̂·(γ·μ) + β: the plain BN with γ·μ (the gate scales γ only, not β)."""
        bn = self.plain()
        with torch.no_grad():
            bn.weight.mul_(mu.to(bn.weight))
        return bn
