"""Prediction heads (ORIGINAL.md §1.4): per source L2Norm, then 3x3 loc and conf convs each followed by
BN (eps 1e-3) with learnable gamma/beta and no ReLU."""
from __future__ import annotations

import functools
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .checkpointing import recompute_cheap, wants_recompute
from .norms import L2Norm, make_norm


def _head_conv(cin: int, cout: int, depthwise: bool, norm: str, eps: float, decay: float) -> nn.Sequential:
    convs: List[nn.Module]
    if depthwise:  # depthwise-separable: DW 3x3 then 1x1 (Tiny-DSOD style)
        convs = [nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False)]
    else:
        convs = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False)]
    return nn.Sequential(*convs, make_norm(norm, cout, eps=eps, decay=decay))


class DetectionHead(nn.Module):
    """For each source s with ``anchors_per_location[s]`` default boxes per location:
    L2Norm -> loc conv (A*4) and conf conv (A*num_classes).

    forward(sources) -> (bbox_regression (N, num_anchors, 4), cls_logits (N, num_anchors, C)), with
    anchors ordered (source, row, col, anchor-within-location) as in the original Caffe concat.
    """

    def __init__(self, in_channels: Sequence[int], anchors_per_location: Sequence[int], num_classes: int,
                 *, depthwise: bool, norm: str, eps: float, decay: float, l2norm_init: float,
                 memory_efficient: bool = False):
        super().__init__()
        self.num_classes = num_classes
        # memory-efficient: the L2Norm outputs (inputs of both head convs, as large as the sources)
        # are recomputed in backward instead of stored; the head conv outputs are kept.
        self.memory_efficient = memory_efficient
        self.l2norms = nn.ModuleList(L2Norm(c, l2norm_init) for c in in_channels)
        self.loc = nn.ModuleList(
            _head_conv(c, a * 4, depthwise, norm, eps, decay) for c, a in zip(in_channels, anchors_per_location))
        self.conf = nn.ModuleList(
            _head_conv(c, a * num_classes, depthwise, norm, eps, decay)
            for c, a in zip(in_channels, anchors_per_location))

    def forward(self, sources: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        locs, confs = [], []
        recompute = wants_recompute(self)
        for x, l2, loc, conf in zip(sources, self.l2norms, self.loc, self.conf):
            n = x.shape[0]
            branch = functools.partial(_branch, l2, loc, conf)
            lo, co = recompute_cheap(branch, x) if recompute else branch(x)
            # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A, K), the Caffe Permute+Flatten order.
            locs.append(lo.permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(co.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)


def _branch(l2: nn.Module, loc: nn.Module, conf: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    x = l2(x)
    return loc(x), conf(x)
