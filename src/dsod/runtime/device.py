"""Which device a command runs on: ``device=auto|cpu|cuda|cuda:N``, checked against this machine."""
from __future__ import annotations

import torch

from ..errors import DsodError
from .distributed import env_world


class DeviceError(DsodError, ValueError):
    """``device=`` names a device this machine does not have (one line)."""


def select_device(spec: str) -> torch.device:
    """``auto``: this process's CUDA device (its local rank under torchrun) where CUDA is available,
    else the CPU. Anything else must name a device that exists here."""
    if spec == "auto":
        _, local_rank, world = env_world()
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank if world > 1 else 0)
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"device={spec} is not valid; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={spec}: CUDA is not available on this machine; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
