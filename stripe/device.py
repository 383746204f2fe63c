"""Where work runs, for every layer: the device, bf16 autocast, and this process's place in a torchrun job."""
from __future__ import annotations

import atexit
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK set by torchrun."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Start the process group (nccl on CUDA, gloo on the CPU) when running under torchrun; it is destroyed at
    exit, while the interpreter is still whole (a gloo group left to interpreter shutdown can abort the
    process after its work succeeded)."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(end_distributed)


def end_distributed() -> None:
    """Destroy the default process group if one is up (nothing otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str | None, info: DistInfo = DistInfo()) -> torch.device:
    """``auto``: this rank's GPU when CUDA is present, else the CPU."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision == 'bf16'``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()
