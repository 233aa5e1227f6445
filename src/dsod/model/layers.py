"""Building blocks of the DSOD network (ORIGINAL.md §1.1-1.3).

Composite function inside the network is pre-activation BN -> ReLU -> Conv ("bn_relu_conv" in the
original ``model_libs.py``); only the three stem convs are post-activation Conv -> BN -> ReLU.
All convolutions are bias-free (ORIGINAL.md §1.1).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import concat_then, wants_recompute
from .norms import make_norm


class ConvNormReLU(nn.Sequential):
    """Post-activation Conv -> BN -> ReLU (stem only, ORIGINAL.md §1.2 rows 1-3)."""

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


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; each sees the concat of the block input and all earlier new
    features, in the original order [input, new_1, new_2, ...] (ORIGINAL.md §1.2).

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


def max_pool_ceil(x: torch.Tensor) -> torch.Tensor:
    """Caffe 2x2/2 max pooling rounds up (ORIGINAL.md §1.1): 75->38, 19->10, 5->3, 3->2."""
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
