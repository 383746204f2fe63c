"""Shared pieces of every attention module: the taps (named identity hook points) and the gate contract."""
from __future__ import annotations

import torch
from torch import nn


class Tap(nn.Identity):
    """A named identity hook point: recording hooks taps, never module internals.

    ``index`` is set by a module that is called several times per forward (DIA's shared
    cell sets it to the block index before each call), so a recorder can key each call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.index: int | None = None


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool over H x W: [B, C, H, W] -> [B, C]."""
    return x.mean(dim=(2, 3))


class ChannelAttention(nn.Module):
    """Base class of a channel attention: ``gate(x)`` gives a [B, C] in (0, 1); ``forward`` is x ⊙ a.

    The pooled input that feeds the gate goes through ``tap_in`` (always the global average
    pool [B, C], the common part of what feeds every module, so "before" statistics compare
    across module types) and the attention vector goes through ``tap``. A module with a hidden
    (bottleneck) layer also routes its post-ReLU activations [B, hidden_width] through ``tap_hidden``
    (:meth:`hidden`), so a recording sees dead hidden units: a unit that is zero for every image
    makes the gate ignore it, and with one hidden unit (SE with round(16/16) = 1) a dead unit makes
    the gate exactly constant across images.
    """

    #: smallest ψ spatial size this module accepts under ASR (the registry reads it from here)
    min_psi_size: int = 1
    #: width of the gate's hidden (bottleneck) layer, None when it has none (set by modules that have one)
    hidden_width: int | None = None

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.tap_in = Tap()
        self.tap = Tap()

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Route the hidden layer's activations h [B, hidden_width] through ``tap_hidden`` (a module with a hidden
        layer creates it in its constructor, with ``hidden_width``)."""
        return self.tap_hidden(h)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Attention [B, C] from the feature map x [B, C, H, W] and its average pool [B, C]."""
        raise NotImplementedError

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Attention vector a [B, C] for input x [B, C, H, W], routed through the taps."""
        pooled = self.tap_in(global_pool(x))
        return self.tap(self.compute(x, pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]
