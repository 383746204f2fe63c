"""Efficient Channel Attention (Wang et al. 2020)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .taps import ChannelAttention


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive kernel size: t = int(|(log2 C + b) / gamma|), made odd (64 -> 3, 128/256 -> 5)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 == 1 else t + 1


class ECA(ChannelAttention):
    """GAP -> Conv1d(1, 1, k, padding k//2, no bias) across channels -> Sigmoid. Takes ψ as-is."""

    def __init__(self, channels: int, k: int | None = None) -> None:
        super().__init__(channels)
        self.k = eca_kernel_size(channels) if k is None else k
        self.conv = nn.Conv1d(1, 1, self.k, padding=self.k // 2, bias=False)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(pooled[:, None, :])[:, 0, :])  # [B, 1, C] -> [B, C]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}"
