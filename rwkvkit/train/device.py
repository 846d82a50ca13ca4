"""Where training runs: the device, bf16 autocast, and the torchrun process group."""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext
from typing import Any

import torch

from ..device import resolve_device
from ..errors import RwkvkitError
from .config import TrainConfig


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun group when launched by torchrun (gloo on the CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: TrainConfig) -> torch.device:
    """--device, or with "auto" the GPU if there is one. Under torchrun every rank takes its own
    GPU (LOCAL_RANK) when the device names none: ranks sharing one GPU would stall nccl."""
    if cfg.device != "auto":
        device = resolve_device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def autocast_for(cfg: TrainConfig, device: torch.device) -> Any:
    """A context factory: bf16 autocast where asked for (or, with "auto", where a GPU supports it)."""
    bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise RwkvkitError(f"--precision must be fp32, bf16 or auto, got {cfg.precision!r}")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
