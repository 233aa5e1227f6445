"""Prediction structures (ORIGINAL.md §1.3): DSOD's dense one and the plain SSD-style one of the ablation.

Both turn the backbone taps into the list of prediction sources, finest first.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .layers import NormReLUConv, max_pool_ceil


def _down_conv(cin: int, cout: int, depthwise: bool, norm: str, decay: float) -> nn.Sequential:
    """3x3 stride-2 pad-1 conv (BN-ReLU first); depthwise: DW 3x3 s2 then 1x1 when widths differ."""
    if not depthwise:
        return NormReLUConv(cin, cout, 3, 2, norm=norm, decay=decay)
    layers = [NormReLUConv(cin, cin, 3, 2, norm=norm, decay=decay, groups=cin)]
    if cout != cin:
        layers.append(NormReLUConv(cin, cout, 1, norm=norm, decay=decay))
    return nn.Sequential(*layers)


class LHRH(nn.Module):
    """"Learning half, re-using half" block (``add_bl_layer2`` in the original code).

    learned half: BN-ReLU-Conv1x1(n) -> BN-ReLU-Conv3x3(n, stride 2, pad 1);
    reused half: 2x2 ceil max pool -> BN-ReLU-Conv1x1(n);
    output: concat(reused, learned), 2n channels (reused first, as in the original code).
    """

    def __init__(self, cin: int, n: int, depthwise: bool, norm: str, decay: float):
        super().__init__()
        self.learned = nn.Sequential(
            NormReLUConv(cin, n, 1, norm=norm, decay=decay), _down_conv(n, n, depthwise, norm, decay)
        )
        self.reused = NormReLUConv(cin, n, 1, norm=norm, decay=decay)
        self.out_channels = 2 * n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.reused(max_pool_ceil(x)), self.learned(x)], dim=1)


class DensePrediction(nn.Module):
    """Dense prediction structure (ORIGINAL.md §1.3).

    Scale 1 = First; scale 2 = concat(learned: last transition output, reused: pool(First) ->
    BN-ReLU-Conv1x1(w0)) (learned first); each further scale = LHRH(n) of the previous one.
    """

    def __init__(self, first_channels: int, backbone_channels: int, widths: Sequence[int],
                 depthwise: bool, norm: str, decay: float):
        super().__init__()
        self.second_reused = NormReLUConv(first_channels, widths[0], 1, norm=norm, decay=decay)
        channels = backbone_channels + widths[0]
        self.out_channels: List[int] = [first_channels, channels]
        self.extras = nn.ModuleList()
        for n in widths[1:]:
            block = LHRH(channels, n, depthwise, norm, decay)
            self.extras.append(block)
            channels = block.out_channels
            self.out_channels.append(channels)

    def forward(self, taps: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> List[torch.Tensor]:
        first, first_pooled, out = taps
        # pool(First) is the transition's own pooling output: the same tensor Caffe computes twice.
        # If later transitions pool too (an ablation knob), pool again to the learned half's size.
        reused = first_pooled
        while reused.shape[-1] > out.shape[-1]:
            reused = max_pool_ceil(reused)
        x = torch.cat([out, self.second_reused(reused)], dim=1)
        sources = [first, x]
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


class PlainPrediction(nn.Module):
    """Plain (SSD-style) structure of the paper's ablation: scale 1 = First, scale 2 = backbone
    output, each further scale = BN-ReLU-Conv1x1(n) -> BN-ReLU-Conv3x3(2n, stride 2) of the previous
    one only. The original repository does not contain it (ORIGINAL.md §1.3); widths mirror SSD's extras."""

    def __init__(self, first_channels: int, backbone_channels: int, widths: Sequence[int],
                 depthwise: bool, norm: str, decay: float):
        super().__init__()
        channels = backbone_channels
        self.out_channels: List[int] = [first_channels, channels]
        self.extras = nn.ModuleList()
        for n in widths[1:]:
            self.extras.append(nn.Sequential(
                NormReLUConv(channels, n, 1, norm=norm, decay=decay),
                _down_conv(n, 2 * n, depthwise, norm, decay),
            ))
            channels = 2 * n
            self.out_channels.append(channels)

    def forward(self, taps: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> List[torch.Tensor]:
        first, _, x = taps
        sources = [first, x]
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources
