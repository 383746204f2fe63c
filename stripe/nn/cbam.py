"""CBAM (Woo et al. 2018): a channel gate, then a spatial gate."""
from __future__ import annotations

import torch
from torch import nn

from .taps import ChannelAttention, Tap


class CBAM(ChannelAttention):
    """Channel gate: shared MLP (no biases, as timm's; ``bias=True``: with biases, as the original CBAM code) on
    GAP and global max pool, summed, Sigmoid; then a
    spatial gate: [channel-max, channel-mean] -> Conv2d(2, 1, 7, pad 3, no bias) -> BN -> Sigmoid.

    ``tap`` records the channel gate (the only channel attention); ``tap_spatial`` records the
    spatial map [B, 1, H, W]. Output = (x ⊙ a) ⊙ s.

    Under ASR (``spatial=False``) the module is the channel gate alone: the spatial map depends on
    the input, so it cannot fold; an ASR(CBAM) model is channel-gate-only and stays cost-free.
    Without biases, a hidden unit whose weights sum below zero is dead for the constant ψ (0.1 in every
    channel) and passes no gradient, so it stays dead; a tap whose units are all dead outputs exactly 0.5
    in every channel for good (each unit starts dead with probability 1/2: 16 of 21 units of ResNet-20 at
    initialisation; 8 of 9 taps frozen by epoch 10 in ``figures/cifar10-zoo-cpu/``). ``stripe stats`` names such
    taps. With ``bias=True`` a unit's bias can move it out of the dead region, so no tap is frozen by construction.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial: bool = True, bias: bool = False) -> None:
        super().__init__(channels)
        hidden = self.hidden_width = max(1, channels // reduction)
        self.tap_hidden = Tap()
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias), nn.ReLU(inplace=True), nn.Linear(hidden, channels, bias=bias)
        )
        self.spatial = spatial
        if spatial:
            self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
            self.bn = nn.BatchNorm2d(1)
            self.tap_spatial = Tap()

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        fc1, relu, fc2 = self.mlp
        h_avg, h_max = relu(fc1(pooled)), relu(fc1(x.amax(dim=(2, 3))))  # [B, hidden] each
        self.hidden(torch.maximum(h_avg, h_max))  # a hidden unit is dead when it is zero on both paths
        return torch.sigmoid(fc2(h_avg) + fc2(h_max))

    def spatial_map(self, y: torch.Tensor) -> torch.Tensor:
        """Spatial gate [B, 1, H, W] of the channel-gated map y [B, C, H, W]."""
        s = torch.cat([y.amax(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)], dim=1)  # [B, 2, H, W]
        return self.tap_spatial(torch.sigmoid(self.bn(self.conv(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.gate(x)[:, :, None, None]
        return y * self.spatial_map(y) if self.spatial else y

    def constant_remainder(self) -> nn.Module | None:
        """The spatial gate alone: it depends on the input, so it stays when the channel gate is folded."""
        return SpatialGate(self) if self.spatial else None


class SpatialGate(nn.Module):
    """CBAM's spatial gate alone (the channel gate was folded): y ⊙ s(y)."""

    def __init__(self, cbam: CBAM) -> None:
        super().__init__()
        self.conv, self.bn, self.tap_spatial = cbam.conv, cbam.bn, cbam.tap_spatial

    spatial_map = CBAM.spatial_map  # the same computation, on these same submodules

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.spatial_map(y)
