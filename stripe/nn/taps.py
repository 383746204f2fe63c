"""Shared pieces of every attention module: the taps (named identity hook points), the gate contract, and the
contracts of the two placements that are not a block's attention slot: an attention inside the block's last norm
(:class:`GatedNorm`, placement ``in_bn``) and one shared by the blocks of a stage (:class:`SharedAttention`, seen by
each block through a :class:`StageStep`, placement ``stage``). A constant attention folds into a norm by
:func:`fold_norm`."""
from __future__ import annotations

import copy
from typing import Any

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

    def constant_remainder(self) -> nn.Module | None:
        """What stays in the model when this module's channel attention is a constant folded into the norm before it:
        nothing, unless the module has another input-dependent part (CBAM's spatial gate)."""
        return None


@torch.no_grad()
def fold_norm(norm: nn.Module, v: torch.Tensor) -> nn.Module:
    """A copy of ``norm`` with γ' = γ·v and β' = β·v and cloned running statistics: norm(x)·v for a norm whose output
    is linear in (γ, β) jointly (a BatchNorm, a :class:`GatedNorm`)."""
    folded = copy.deepcopy(norm)
    folded.weight.mul_(v.to(folded.weight.dtype))
    folded.bias.mul_(v.to(folded.bias.dtype))
    return folded


class GatedNorm(nn.BatchNorm2d):
    """Base class of an attention inside a BatchNorm (placement ``in_bn``, e.g. IEBN): the registry entry's builder
    makes one; it stands in for the block's last BN and holds its gate (a :class:`ChannelAttention` with the taps) at
    ``attn``. Its output must be linear in (``weight``, ``bias``) jointly (scaling both by v scales the output by v),
    which the ASR fold of a model with both relies on. :meth:`with_constant` says what plain norm it is when its gate
    outputs a constant: what constant replacement puts in its place."""

    attn: ChannelAttention

    def with_constant(self, mu: torch.Tensor) -> nn.BatchNorm2d:
        """The plain BatchNorm equal to this norm when its gate outputs ``mu`` [C] for every input."""
        raise NotImplementedError(f"{type(self).__name__} does not say what its constant form is (with_constant)")

    def plain(self) -> nn.BatchNorm2d:
        """This norm's statistics and affine parameters as a plain BatchNorm2d (its own dtype and device), no gate."""
        bn = nn.BatchNorm2d(self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine,
                            track_running_stats=self.track_running_stats, device=self.weight.device,
                            dtype=self.weight.dtype)
        bn.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("attn.")})
        return bn


class SharedAttention(ChannelAttention):
    """Base class of an attention shared by every block of a stage (placement ``stage``, e.g. DIA): block i reaches it
    through its :class:`StageStep`, which calls :meth:`step` with the block's own map. What one block's
    :meth:`compute_step` returns as its state the next block receives (None at block 0 of every forward); the state
    is dropped after the stage's last block and never copied or pickled. Before each call the taps' ``index`` is set
    to the block, so a recording keys every call apart."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self._state: Any = None

    def compute_step(self, x: torch.Tensor, pooled: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """(attention [B, C], the state for the next block) from the block's map x, its pool and the previous state."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, index: int, last: bool = False) -> torch.Tensor:
        """Attention [B, C] of block ``index`` for its map x [B, C, H, W]; advances the state."""
        for tap in (self.tap, self.tap_in, getattr(self, "tap_hidden", None)):
            if tap is not None:
                tap.index = index
        pooled = self.tap_in(global_pool(x))
        a, state = self.compute_step(x, pooled, None if index == 0 else self._state)
        self._state = None if last else state  # drop the state after the stage's last block
        return self.tap(a)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"{type(self).__name__}: a stage-shared attention is called through StageStep(cell, index), "
                           "one per block")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_state"] = None  # the transient state is never copied or pickled
        return state


class StageStep(nn.Module):
    """A block's view of its stage's :class:`SharedAttention` (held without registering it, so the cell's parameters
    live once, under the stage)."""

    def __init__(self, cell: SharedAttention, index: int, last: bool) -> None:
        super().__init__()
        self.__dict__["cell"] = cell  # not a submodule: the stage owns it
        self.index = index
        self.last = last

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The cell's attention [B, C] for this block."""
        return self.cell.step(x, self.index, self.last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"index={self.index}"
