"""DIANet (Huang et al. 2020): one LSTM cell shared by all blocks of a stage."""
from __future__ import annotations

import torch
from torch import nn

from .taps import SharedAttention, Tap


def _gate_mlp(channels: int, reduction: int) -> nn.Sequential:
    hidden = max(1, channels // reduction)
    return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4 * channels))


class DIACell(SharedAttention):
    """The stage's shared LSTM cell. Block t feeds GAP of its pre-residual output x_t; with
    gates = MLP_x(x_t) + MLP_h(h_{t-1}) split into (i, f, o, g) (sigmoid, sigmoid, sigmoid, tanh),
    c_t = f ⊙ c_{t-1} + i ⊙ g and the attention is h_t = o ⊙ sigmoid(c_t) in (0, 1).
    (h, c) start at zero at block 0 of every forward.

    The cell is called once per block, through :class:`~stripe.nn.taps.StageStep` (the state (h, c) and the taps'
    block index are kept by :class:`~stripe.nn.taps.SharedAttention`). Under ASR each block feeds a ψ of its own and
    the state still flows block to block.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__(channels)
        self.hidden_width = max(1, channels // reduction)
        self.tap_hidden = Tap()
        self.mlp_x = _gate_mlp(channels, reduction)
        self.mlp_h = _gate_mlp(channels, reduction)

    def compute_step(self, x: torch.Tensor, pooled: torch.Tensor,
                     state: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        """(h_t, (h_t, c_t)) of one block from its pool and the previous block's (h, c) (zeros at block 0)."""
        if state is None:
            h = c = pooled.new_zeros(pooled.shape)
        else:
            h, c = state
        hx = self.mlp_x[1](self.mlp_x[0](pooled))  # [B, hidden]: the x-path MLP's hidden layer
        hh = self.mlp_h[1](self.mlp_h[0](h))  # [B, hidden]: the h-path MLP's
        self.hidden(torch.maximum(hx, hh))  # a hidden unit is dead when it is zero on both paths
        i, f, o, g = (self.mlp_x[2](hx) + self.mlp_h[2](hh)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)
        return h, (h, c)
