"""Normalisation layers: BN with Caffe's running statistics (and its multi-process variant), GroupNorm
through ``make_norm``, and SSD's L2Norm (ORIGINAL.md §1.1, §1.4)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import in_recomputation


class CaffeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics follow Caffe's ``BatchNorm`` layer.

    Caffe keeps decayed sums S_t = d*S_{t-1} + x_t and a scale factor F_t = d*F_{t-1} + 1 and uses
    S_t / F_t (ORIGINAL.md §1.1, moving_average_fraction d = 0.999). That is an exponential average with
    bias correction: PyTorch momentum m_t = 1 / F_t = (1 - d) / (1 - d**t). A constant momentum of
    1 - d would instead keep the initial (0, 1) statistics for thousands of steps, which breaks
    evaluation of short runs. Under SyncBatchNorm conversion the momentum in force is kept.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, decay: float = 0.999):
        super().__init__(num_features, eps=eps, momentum=1.0 - decay)
        self.decay = decay
        self._steps: int | None = None  # python mirror of num_batches_tracked (no device sync)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and in_recomputation():
            # Checkpoint recomputation (memory-efficient dense blocks): the same op on the same batch
            # statistics, so the same output, but momentum 0 (running = 1 * running + 0 * batch, an
            # exact no-op) and no second step count: the statistics are recorded once per forward.
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, 0.0,
                                self.eps)
        if self.training and self.track_running_stats and self.momentum is not None:
            if self._steps is None:
                self._steps = int(self.num_batches_tracked)
            self._steps += 1
            self.momentum = (1.0 - self.decay) / (1.0 - self.decay**self._steps)
        # momentum None: PyTorch's cumulative average, left to BatchNorm2d (set by
        # torch.optim.swa_utils.update_bn for the precise-BN re-estimation, engine/precise_bn.py)
        return super().forward(x)

    def _load_from_state_dict(self, *args, **kwargs):
        self._steps = None  # re-read the restored num_batches_tracked on the next training step
        super()._load_from_state_dict(*args, **kwargs)


def make_norm(kind: str, channels: int, eps: float = 1e-5, decay: float = 0.999) -> nn.Module:
    """BN (Caffe running statistics) or GroupNorm; both have the same learnable gamma/beta."""
    if kind == "bn":
        return CaffeBatchNorm2d(channels, eps=eps, decay=decay)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, channels), channels, eps=eps)
    raise ValueError(f"unknown norm '{kind}'; valid: bn, gn")


class SyncCaffeBatchNorm2d(CaffeBatchNorm2d):
    """CaffeBatchNorm2d whose batch statistics are computed over all processes of the default group.

    Written by hand because ``torch.nn.SyncBatchNorm`` only runs on GPUs (it raises on CPU tensors),
    and multi-process training must be testable on the CPU with gloo. The per-channel sum, sum of
    squares and count are summed with the autograd-aware ``torch.distributed.nn.all_reduce``, so the
    backward pass sums the statistics' gradients across processes exactly as SyncBatchNorm does.
    Outside a multi-process run, or in eval mode, it is a plain CaffeBatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / c, device=x.device, dtype=torch.float32)
        stats = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp(min=0)
        if not in_recomputation():  # a checkpoint re-run must not record the statistics twice
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative average (precise BN), as BatchNorm2d does
                    m = 1.0 / float(self.num_batches_tracked)
                else:
                    if self._steps is None:
                        self._steps = int(self.num_batches_tracked) - 1
                    self._steps += 1
                    m = (1.0 - self.decay) / (1.0 - self.decay**self._steps)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_((var * n / (n - 1).clamp(min=1)).detach(), m)
        y = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return (y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every CaffeBatchNorm2d by a SyncCaffeBatchNorm2d sharing its parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is CaffeBatchNorm2d:
            sync = SyncCaffeBatchNorm2d(child.num_features, eps=child.eps, decay=child.decay)
            sync.load_state_dict(child.state_dict())
            sync.to(child.weight.device)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module


class L2Norm(nn.Module):
    """SSD ``Normalize`` layer: L2 across channels per location, learnable per-channel scale
    (init 20), eps 1e-10 inside the square root (ORIGINAL.md §1.4)."""

    def __init__(self, channels: int, init: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + self.eps)
        return x * norm * self.weight.view(1, -1, 1, 1)
