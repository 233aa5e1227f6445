"""SSD's VGG-16 backbone (Liu et al., SSD, ``ssd_pascal.py``'s ``VGGNetBody`` with fc6/fc7 as dilated
convolutions), for the paper's "SSD300 from scratch" comparison (ORIGINAL.md §3.2, SSD300S†).

Taps as ``DSODBackbone``: (conv4_3 = "First", stride 8; pool4, stride 16; fc7, stride 16), so the
plain prediction structure and the heads are shared with DSOD and only the backbone differs.

Differences from the original SSD VGG (documented in docs/RESULTS.md): BatchNorm after every conv
(from scratch, and so that it trains under the same recipe as DSOD; SSD has none), and a ``width``
multiplier on every layer so that a CPU-scale comparison can match DSOD's compute.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .layers import ConvNormReLU, max_pool_ceil
from .norms import make_norm

# (channels, convs) per stage at width 1: conv1..conv5 of VGG-16
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGGBackbone(nn.Module):
    def __init__(self, width: float, norm: str, decay: float):
        super().__init__()
        w = [max(8, int(round(c * width))) for c, _ in VGG16_STAGES]
        stages, cin = [], 3
        for cout, (_, n) in zip(w, VGG16_STAGES):
            layers = []
            for _ in range(n):
                layers.append(ConvNormReLU(cin, cout, 3, 1, norm, decay))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        fc = max(8, int(round(1024 * width)))
        # fc6: 3x3 dilation 6 (SSD's atrous fc6), fc7: 1x1; pool5 is 3x3 stride 1 pad 1
        self.fc6 = nn.Sequential(nn.Conv2d(cin, fc, 3, padding=6, dilation=6, bias=False),
                                 make_norm(norm, fc, decay=decay), nn.ReLU(inplace=True))
        self.fc7 = ConvNormReLU(fc, fc, 1, 1, norm, decay)
        self.first_channels = w[3]
        self.out_channels = fc

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for i in range(3):  # conv1-3, each followed by a 2x2 pool (ceil, as SSD's pool3)
            x = max_pool_ceil(self.stages[i](x))
        first = self.stages[3](x)  # conv4_3, stride 8
        pool4 = max_pool_ceil(first)
        x = self.stages[4](pool4)
        x = nn.functional.max_pool2d(x, 3, 1, 1)
        return first, pool4, self.fc7(self.fc6(x))
