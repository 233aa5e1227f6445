"""SSD CENTER_SIZE box coding with variances (ORIGINAL.md §1.5, §1.6).

For a ground-truth box g and a default box d (both cxcywh, normalised), with variances (v_c, v_s):

    t_x = (g_cx - d_cx) / (v_c * d_w)      t_y = (g_cy - d_cy) / (v_c * d_h)
    t_w = log(g_w / d_w) / v_s             t_h = log(g_h / d_h) / v_s

``decode`` is the exact inverse. Both broadcast over leading dimensions.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

# exp() argument cap when decoding, as torchvision's BoxCoder: keeps wild early predictions finite.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode(boxes_cxcywh: torch.Tensor, anchors_cxcywh: torch.Tensor,
           variances: Tuple[float, float] = (0.1, 0.2)) -> torch.Tensor:
    centre = (boxes_cxcywh[..., :2] - anchors_cxcywh[..., :2]) / (variances[0] * anchors_cxcywh[..., 2:])
    size = torch.log(boxes_cxcywh[..., 2:] / anchors_cxcywh[..., 2:]) / variances[1]
    return torch.cat([centre, size], dim=-1)


def decode(offsets: torch.Tensor, anchors_cxcywh: torch.Tensor,
           variances: Tuple[float, float] = (0.1, 0.2)) -> torch.Tensor:
    centre = anchors_cxcywh[..., :2] + offsets[..., :2] * variances[0] * anchors_cxcywh[..., 2:]
    size = anchors_cxcywh[..., 2:] * torch.exp((offsets[..., 2:] * variances[1]).clamp(max=_MAX_LOG_SCALE))
    return torch.cat([centre, size], dim=-1)
