"""Spatial Pyramid Attention (Guo et al. 2020, SPANet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .taps import ChannelAttention, Tap


class SPA(ChannelAttention):
    """Adaptive average pools to 1x1, 2x2 and 4x4, flattened and concatenated (21·C values)
    -> Linear(21C, C/r, no bias) -> ReLU -> Linear(C/r, C, no bias) -> Sigmoid (``bias=True``: both Linear
    layers with biases, so that under ASR a unit dead for the constant ψ is not dead for good).

    ``tap_in`` records the 1x1 pool (the global average pool). Under ASR a 1 x 1 ψ is pooled to
    2x2 and 4x4 by replication (adaptive pooling), so the module takes ψ as-is.
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = False) -> None:
        super().__init__(channels)
        hidden = self.hidden_width = max(1, channels // reduction)
        self.tap_hidden = Tap()
        self.fc1 = nn.Linear(21 * channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        p2 = F.adaptive_avg_pool2d(x, 2).flatten(1)  # [B, 4C]
        p4 = F.adaptive_avg_pool2d(x, 4).flatten(1)  # [B, 16C]
        z = torch.cat([pooled, p2, p4], dim=1)  # [B, 21C]
        return torch.sigmoid(self.fc2(self.hidden(torch.relu(self.fc1(z)))))
