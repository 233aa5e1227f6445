"""Default-box matching of SSD's MultiBoxLoss (``PER_PREDICTION``, spec §1.6).

1. Bipartite step: greedily take the highest-IoU (ground truth, default box) pair among those still
   unmatched, assign it, remove both, repeat until every ground truth has a box (or overlaps none).
   This is Caffe's ``MatchBBox``: when two ground truths want the same box, the one with the higher
   IoU gets it and the other takes its best remaining box (torchvision's SSDMatcher instead lets the
   later ground truth overwrite the earlier one).
2. Per-prediction step: every still-unmatched default box whose best IoU is >= ``threshold`` takes
   that ground truth.
"""
from __future__ import annotations

from typing import Tuple

import torch


def match(iou: torch.Tensor, threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Args:
        iou: (num_gt, num_anchors) IoU between ground truths and default boxes.
    Returns:
        matched_gt: (num_anchors,) int64 index of the assigned ground truth, -1 for none.
        max_iou: (num_anchors,) best IoU of each default box with any ground truth (0 if none),
            used to keep negatives below ``neg_overlap``.
    """
    num_gt, num_anchors = iou.shape
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=iou.device)
    if num_gt == 0:
        return matched, iou.new_zeros(num_anchors)
    max_iou, best_gt = iou.max(dim=0)
    # Bipartite step: num_gt rounds of a global argmax over the remaining matrix. Pairs with IoU
    # <= 1e-6 are never matched (Caffe only records overlaps above 1e-6).
    work = iou.clone()
    for _ in range(num_gt):
        flat = int(work.argmax())
        g, a = divmod(flat, num_anchors)
        if work[g, a] <= 1e-6:
            break
        matched[a] = g
        work[g, :] = -1.0
        work[:, a] = -1.0
    # Per-prediction step.
    extra = (matched < 0) & (max_iou >= threshold)
    matched[extra] = best_gt[extra]
    return matched, max_iou
