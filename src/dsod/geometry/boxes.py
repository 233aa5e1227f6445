"""Pure box geometry on tensors (no modules, no config). Formats: ``xyxy`` = (x1, y1, x2, y2),
``cxcywh`` = (centre x, centre y, width, height). IoU comes from torchvision.ops."""
from __future__ import annotations

import torch
from torchvision.ops import box_iou  # noqa: F401  (re-exported: the one IoU used everywhere)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], dim=-1)
