"""Squeeze-and-Excitation (Hu et al. 2018), in the official ASR code's exact form."""
from __future__ import annotations

import torch
from torch import nn

from .taps import ChannelAttention, Tap


class SE(ChannelAttention):
    """GAP -> Linear(C, round(C/r)) -> ReLU -> Linear(round(C/r), C) -> Sigmoid (biases on).

    The hidden width is Python's ``round(C / r)`` (at least 1), as in the official code.
    Takes ASR's ψ as-is.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__(channels)
        hidden = self.hidden_width = max(1, round(channels / reduction))
        self.tap_hidden = Tap()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.hidden(torch.relu(self.fc1(pooled)))))
