"""SGD whose learning rate is a device tensor, so a captured CUDA graph sees schedule changes."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ..errors import UserError


class SGD:
    """SGD with momentum and weight decay whose learning rate is a device tensor.

    The same arithmetic as ``torch.optim.SGD`` (dampening 0, no Nesterov); the lr tensor lets a
    captured CUDA graph see schedule changes without being captured again.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], lr: float, momentum: float,
                 weight_decay: float) -> None:
        self.names = [n for n, p in named_params if p.requires_grad]
        self.params = [p for _, p in named_params if p.requires_grad]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.bufs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.lr = torch.tensor(float(lr), device=self.params[0].device)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate (in place, so captured graphs see it)."""
        self.lr.fill_(lr)

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update: g += wd·p; buf = momentum·buf + g; p -= lr·buf."""
        grads = [p.grad for p in self.params]
        torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        torch._foreach_mul_(self.bufs, self.momentum)
        torch._foreach_add_(self.bufs, grads)
        torch._foreach_sub_(self.params, torch._foreach_mul(self.bufs, self.lr))

    def state_dict(self) -> dict[str, Any]:
        """Momentum buffers by parameter name."""
        return {"momentum_buffer": {n: b for n, b in zip(self.names, self.bufs)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore momentum buffers saved by :meth:`state_dict`."""
        bufs = state["momentum_buffer"]
        if set(bufs) != set(self.names):
            raise UserError("optimizer state does not match the model's parameters")
        with torch.no_grad():
            for n, b in zip(self.names, self.bufs):
                b.copy_(bufs[n])
