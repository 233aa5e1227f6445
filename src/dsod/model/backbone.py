"""DSOD backbone: stem, dense blocks and transitions (ORIGINAL.md §1.2).

Returns the two taps the prediction structure needs: "First" (the 1x1 conv of the transition after
block 2, before its pooling, stride 8) and the final transition output (stride 16 for DSOD300).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from .checkpointing import concat_then, recompute_cheap, wants_recompute
from .layers import ConvNormReLU, DenseBlock, NormReLUConv, max_pool_ceil


class Stem(nn.Module):
    """DSOD stem: 3x3 s2 (A) -> 3x3 (A) -> 3x3 (2A) -> 2x2 max pool (ceil). ``stem=False`` gives the
    DenseNet input layers the paper's ablation compares against: 7x7 s2 conv (A) -> 3x3 s2 max pool."""

    def __init__(self, channels: int, use_stem: bool, norm: str, decay: float, memory_efficient: bool = False):
        super().__init__()
        self.use_stem = use_stem
        # memory-efficient: keep only the conv outputs; BN, ReLU and the pooling (with its int64
        # indices) are recomputed in backward. The stem's full-resolution maps are the largest of the
        # network (DSOD300: 64/64/128 channels at 150x150).
        self.memory_efficient = memory_efficient
        if use_stem:
            self.convs = nn.Sequential(
                ConvNormReLU(3, channels, 3, 2, norm, decay),
                ConvNormReLU(channels, channels, 3, 1, norm, decay),
                ConvNormReLU(channels, 2 * channels, 3, 1, norm, decay),
            )
            self.out_channels = 2 * channels
        else:
            self.convs = ConvNormReLU(3, channels, 7, 2, norm, decay)
            self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if wants_recompute(self):
            return recompute_cheap(self._forward, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        if self.use_stem:
            return max_pool_ceil(x)
        return nn.functional.max_pool2d(x, 3, 2, 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1, optionally followed by 2x2 ceil max pooling. Returns (conv_out, out)."""

    def __init__(self, cin: int, cout: int, pool: bool, norm: str, decay: float):
        super().__init__()
        self.conv = NormReLUConv(cin, cout, 1, norm=norm, decay=decay)
        self.pool = pool
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, (max_pool_ceil(y) if self.pool else y)


class DSODBackbone(nn.Module):
    """Stem + dense blocks, each followed by a transition.

    Args:
        stem_channels: A, width of the first conv.
        growth_rate: k ("growth rate" in the paper).
        bottleneck_width: B, width of the 1x1 bottleneck in each dense layer.
        block_config: dense layers per block, e.g. (6, 8, 8, 8).
        transition_pooling: per block, whether its transition pools. The first two must.
        compression: theta; transition i outputs floor(theta * C_in) channels...
        final_channels: ...except the last one, which outputs this many when given (256 in DSOD300:
            the "learned half" of scale 2, ORIGINAL.md §1.2 row 13).
        memory_efficient: dense blocks recompute their concat/BN/ReLU in backward instead of storing
            them (see ``DenseBlock``); same parameters and outputs, less training memory.
    Attributes:
        first_channels / out_channels: channels of the two taps.
    """

    def __init__(self, *, stem: bool, stem_channels: int, growth_rate: int, bottleneck_width: int,
                 block_config: Sequence[int], transition_pooling: Sequence[bool], compression: float,
                 final_channels: int | None, depthwise: bool, norm: str, decay: float,
                 memory_efficient: bool = False):
        super().__init__()
        if len(block_config) < 3 or len(transition_pooling) != len(block_config):
            raise ValueError("block_config needs >= 3 blocks and one transition_pooling flag per block")
        if not (transition_pooling[0] and transition_pooling[1]):
            raise ValueError("the transitions after blocks 1 and 2 must pool (they define stride 8 and 16)")
        self.stem = Stem(stem_channels, stem, norm, decay, memory_efficient)
        channels = self.stem.out_channels
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, (num_layers, pool) in enumerate(zip(block_config, transition_pooling)):
            block = DenseBlock(num_layers, channels, bottleneck_width, growth_rate,
                               depthwise=depthwise, norm=norm, decay=decay, memory_efficient=memory_efficient)
            last = i == len(block_config) - 1
            cout = final_channels if (last and final_channels) else int(compression * block.out_channels)
            self.blocks.append(block)
            self.transitions.append(Transition(block.out_channels, cout, pool, norm, decay))
            channels = cout
        self.first_channels = self.transitions[1].out_channels
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (first, first_pooled, out): First (stride 8), its 2x2 pooling (the input of block
        3, re-used by the dense prediction structure), and the last transition output."""
        x = self.stem(x)
        first = first_pooled = x
        for i, (block, transition) in enumerate(zip(self.blocks, self.transitions)):
            if block.recomputing():
                # Memory-efficient: the block's concat and the transition's BN-ReLU are recomputed in
                # backward (only the transition conv's output is kept), like the dense layers'.
                conv_out = concat_then(transition.conv, block.forward_features(x))
                x = recompute_cheap(max_pool_ceil, conv_out) if transition.pool else conv_out
            else:
                conv_out, x = transition(block(x))
            if i == 1:
                first, first_pooled = conv_out, x
        return first, first_pooled, x
