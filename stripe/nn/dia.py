"""DIANet (Huang et al. 2020): one LSTM cell shared by all blocks of a stage."""
from __future__ import annotations

import torch
from torch import nn

from .taps import ChannelAttention, Tap, global_pool


def _gate_mlp(channels: int, reduction: int) -> nn.Sequential:
    hidden = max(1, channels // reduction)
    return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4 * channels))


class DIACell(ChannelAttention):
    """The stage's shared LSTM cell. Block t feeds GAP of its pre-residual output x_t; with
    gates = MLP_x(x_t) + MLP_h(h_{t-1}) split into (i, f, o, g) (sigmoid, sigmoid, sigmoid, tanh),
    c_t = f ⊙ c_{t-1} + i ⊙ g and the attention is h_t = o ⊙ sigmoid(c_t) in (0, 1).
    (h, c) start at zero at block 0 of every forward.

    The cell is called once per block, so before each call it sets ``tap.index`` and
    ``tap_in.index`` to the block index. Blocks reach it through :class:`DIAStep`.
    Under ASR each block feeds a ψ of its own and the state still flows block to block.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__(channels)
        self.hidden_width = max(1, channels // reduction)
        self.tap_hidden = Tap()
        self.mlp_x = _gate_mlp(channels, reduction)
        self.mlp_h = _gate_mlp(channels, reduction)
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(self, x: torch.Tensor, index: int, last: bool = False) -> torch.Tensor:
        """Attention [B, C] of block ``index`` for its output x [B, C, H, W]; advances the state."""
        self.tap.index = self.tap_in.index = index
        pooled = self.tap_in(global_pool(x))
        if index == 0 or self._state is None:
            h = c = pooled.new_zeros(pooled.shape)
        else:
            h, c = self._state
        self.tap_hidden.index = index
        hx = self.mlp_x[1](self.mlp_x[0](pooled))  # [B, hidden]: the x-path MLP's hidden layer
        hh = self.mlp_h[1](self.mlp_h[0](h))  # [B, hidden]: the h-path MLP's
        self.hidden(torch.maximum(hx, hh))  # a hidden unit is dead when it is zero on both paths
        i, f, o, g = (self.mlp_x[2](hx) + self.mlp_h[2](hh)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)
        self._state = None if last else (h, c)  # drop the state after the stage's last block
        return self.tap(h)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("dia: the shared cell is called through DIAStep(cell, index), one per block")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_state"] = None  # the transient LSTM state is never copied or pickled
        return state


class DIAStep(nn.Module):
    """A block's view of its stage's shared :class:`DIACell` (held without registering it, so the
    cell's parameters live once, under the stage)."""

    def __init__(self, cell: DIACell, index: int, last: bool) -> None:
        super().__init__()
        self.__dict__["cell"] = cell  # not a submodule: the stage owns it
        self.index = index
        self.last = last

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell.step(x, self.index, self.last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"index={self.index}"
