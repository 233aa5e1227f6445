"""Building blocks of the DSOD network (spec §1.1-1.3).

Composite function inside the network is pre-activation BN -> ReLU -> Conv ("bn_relu_conv" in the
original ``model_libs.py``); only the three stem convs are post-activation Conv -> BN -> ReLU.
All convolutions are bias-free (spec §1.1).
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import List

import torch
import torch.nn.functional as F
from torch import nn


_recompute_state = threading.local()


def in_recomputation() -> bool:
    """True while ``torch.utils.checkpoint`` re-runs a memory-efficient dense layer in backward."""
    return getattr(_recompute_state, "active", False)


@contextlib.contextmanager
def _recomputation():
    prev = in_recomputation()
    _recompute_state.active = True
    try:
        yield
    finally:
        _recompute_state.active = prev


class CaffeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics follow Caffe's ``BatchNorm`` layer.

    Caffe keeps decayed sums S_t = d*S_{t-1} + x_t and a scale factor F_t = d*F_{t-1} + 1 and uses
    S_t / F_t (spec §1.1, moving_average_fraction d = 0.999). That is an exponential average with
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


class ConvNormReLU(nn.Sequential):
    """Post-activation Conv -> BN -> ReLU (stem only, spec §1.2 rows 1-3)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: str, decay: float):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            make_norm(norm, cout, decay=decay),
            nn.ReLU(inplace=True),
        )


class NormReLUConv(nn.Sequential):
    """Pre-activation BN -> ReLU -> Conv ("bn_relu_conv"). ``groups=cin`` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, *, norm: str = "bn",
                 decay: float = 0.999, groups: int = 1):
        super().__init__(
            make_norm(norm, cin, decay=decay),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        )


class DenseLayer(nn.Module):
    """One dense layer: BN-ReLU-Conv1x1(B) -> BN-ReLU-Conv3x3(k); returns only the k new channels.

    Depthwise variant (Tiny-DSOD's DDB): BN-ReLU-Conv1x1(B) -> BN-ReLU-DWConv3x3(B) [-> 1x1 to k].
    """

    def __init__(self, cin: int, bottleneck: int, growth: int, *, depthwise: bool, norm: str, decay: float):
        super().__init__()
        layers: List[nn.Module] = [NormReLUConv(cin, bottleneck, 1, norm=norm, decay=decay)]
        if depthwise:
            layers.append(NormReLUConv(bottleneck, bottleneck, 3, norm=norm, decay=decay, groups=bottleneck))
            if bottleneck != growth:
                layers.append(NormReLUConv(bottleneck, growth, 1, norm=norm, decay=decay))
        else:
            layers.append(NormReLUConv(bottleneck, growth, 3, norm=norm, decay=decay))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _save_conv_outputs(ctx, op, *args, **kwargs):
    """Selective-checkpoint policy: keep convolution outputs, recompute everything else (concat, BN,
    ReLU: memory-bound and cheap). No convolution runs twice."""
    from torch.utils.checkpoint import CheckpointPolicy

    if op is torch.ops.aten.convolution.default:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _checkpoint_contexts():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    forward_ctx, recompute_ctx = create_selective_checkpoint_contexts(_save_conv_outputs)

    @contextlib.contextmanager
    def recompute():
        with recompute_ctx, _recomputation():
            yield

    return forward_ctx, recompute()


def _concat_then(layer: nn.Module, *features: torch.Tensor) -> torch.Tensor:
    return layer(torch.cat(features, dim=1))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; each sees the concat of the block input and all earlier new
    features, in the original order [input, new_1, new_2, ...] (spec §1.2).

    ``memory_efficient``: while gradients are being recorded, each layer runs under
    ``torch.utils.checkpoint`` with a selective policy that saves only its convolution outputs: the
    concat and the BN-ReLU outputs (the large, c_in-channel tensors) are recomputed in backward
    instead of being stored for every layer (the idea of torchvision's/timm's memory-efficient
    DenseNet, without recomputing any convolution). Same parameters, same outputs; BN running
    statistics are updated once per forward (the recomputation skips them).
    """

    def __init__(self, num_layers: int, cin: int, bottleneck: int, growth: int, *, depthwise: bool,
                 norm: str, decay: float, memory_efficient: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(cin + i * growth, bottleneck, growth, depthwise=depthwise, norm=norm, decay=decay)
            for i in range(num_layers)
        )
        self.out_channels = cin + num_layers * growth
        self.memory_efficient = memory_efficient

    def recomputing(self) -> bool:
        """Whether this forward runs the memory-efficient (checkpointed) path."""
        return wants_recompute(self)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Memory-efficient path: the list [input, new_1, ..., new_L] (never concatenated here), each
        layer checkpointed. ``concat_then(module, features)`` applies a consumer the same way."""
        features = [x]
        for layer in self.layers:
            features.append(concat_then(layer, features))
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recomputing():
            return torch.cat(self.forward_features(x), dim=1)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def concat_then(module: nn.Module, features: List[torch.Tensor]) -> torch.Tensor:
    """``module(torch.cat(features, 1))`` under a selective checkpoint: the concat and the BN/ReLU
    outputs inside ``module`` are recomputed in backward, its convolution outputs are kept."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(functools.partial(_concat_then, module), *features, use_reentrant=False,
                      context_fn=_checkpoint_contexts, preserve_rng_state=False)


def wants_recompute(module: nn.Module) -> bool:
    """Whether a ``memory_efficient`` module should run its checkpointed path in this forward."""
    return module.memory_efficient and module.training and torch.is_grad_enabled()


def recompute_cheap(fn, *inputs: torch.Tensor):
    """``fn(*inputs)`` under the same selective checkpoint as ``concat_then``: convolution outputs are
    kept, everything else ``fn`` computes (BN, ReLU, pooling and its int64 indices, L2Norm) is
    recomputed in backward. For the memory-efficient parts outside the dense blocks."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *inputs, use_reentrant=False, context_fn=_checkpoint_contexts, preserve_rng_state=False)


def max_pool_ceil(x: torch.Tensor) -> torch.Tensor:
    """Caffe 2x2/2 max pooling rounds up (spec §1.1): 75->38, 19->10, 5->3, 3->2."""
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class L2Norm(nn.Module):
    """SSD ``Normalize`` layer: L2 across channels per location, learnable per-channel scale
    (init 20), eps 1e-10 inside the square root (spec §1.4)."""

    def __init__(self, channels: int, init: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + self.eps)
        return x * norm * self.weight.view(1, -1, 1, 1)


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
