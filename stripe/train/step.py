"""One training step (eager, ``torch.compile`` or a whole-step CUDA graph) and the loss."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..device import autocast
from .optim import SGD

if TYPE_CHECKING:
    from .config import TrainConfig


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss (cross-entropy, mean over the batch)."""
    return F.cross_entropy(logits, y)


class TrainStep:
    """One SGD step on a batch, in one of three forms: eager, ``torch.compile``, or a CUDA graph.

    Loss and correct counts accumulate on the device (no host sync per step).
    """

    def __init__(self, model: nn.Module, opt: SGD, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.opt, self.cfg, self.device = model, opt, cfg, device
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x batch, correct
        self.forward = model
        if cfg.compile in ("compile", "reduce-overhead"):
            self.forward = torch.compile(model, mode=None if cfg.compile == "compile" else "reduce-overhead")
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None
        self._eager_steps = 0
        if cfg.compile == "cudagraph" and device.type != "cuda":
            raise UserError("compile='cudagraph' captures the step as a CUDA graph and needs a CUDA device")

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad()
        with autocast(self.device, self.cfg.precision):
            logits = self.forward(x)
            # bf16 logits are scored in float32; float64 ones (a model cast to float64) stay float64
            loss = loss_fn(logits.to(torch.promote_types(logits.dtype, torch.float32)), y)
        loss.backward()
        self.opt.step()
        self.sums[0] += loss.detach().double() * y.shape[0]
        self.sums[1] += (logits.detach().argmax(1) == y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.cfg.compile != "cudagraph":
            return self._body(x, y)
        if self._static is None:
            self._static = (torch.empty_like(x), torch.empty_like(y))
        sx, sy = self._static
        sx.copy_(x)
        sy.copy_(y)
        if self.graph is not None:
            self.graph.replay()
            return
        if self._eager_steps < 3:  # warm up on a side stream before capture, as CUDA graphs require
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._body(sx, sy)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return
        self.opt.zero_grad()  # grads allocated inside the graph's pool are overwritten on each replay
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body(sx, sy)
        self.graph.replay()

    def take_sums(self) -> tuple[float, float]:
        """(loss sum, correct) since the last call; this is the one host sync of an epoch."""
        loss_sum, correct = self.sums.tolist()
        self.sums.zero_()
        return loss_sum, correct
