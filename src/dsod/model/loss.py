"""SSD MultiBoxLoss as configured by DSOD (ORIGINAL.md §1.6).

Per image: match default boxes to ground truth (``dsod.geometry.matching``), Smooth-L1 on the encoded offsets
of the positives, softmax cross-entropy on the positives plus the hardest negatives (``MAX_NEGATIVE``
mining, neg:pos = 3:1, negatives only among boxes whose best IoU < ``neg_overlap``). Both sums are
divided by the number of positives in the batch (Caffe ``VALID`` normalisation, at least 1).
Images without objects have no positives and therefore no mined negatives (as in SSD Caffe and
torchvision); they contribute zero loss.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..geometry.box_coder import encode
from ..geometry.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh
from ..geometry.matching import match_many


class MultiBoxLoss(nn.Module):
    """Args:
        iou_threshold: matching threshold (0.5).
        neg_pos_ratio: hard negatives per positive (3).
        neg_overlap: default boxes with a best IoU at or above this are never negatives (0.5).
        loc_weight: weight of the localisation term ((neg_pos_ratio + 1) / 4 = 1 in the original).
        variances: box-coding variances (0.1, 0.2).

    forward(bbox_regression (N, A, 4), cls_logits (N, A, C), targets, anchors_cxcywh (A, 4)) where
    ``targets[i]`` has ``boxes`` (G_i, 4) xyxy normalised to [0, 1] of the network input and
    ``labels`` (G_i,) int64 dataset class indices (0-based; the network's class 0 is background).
    Returns a dict with ``loss`` (to back-propagate), ``loss_loc``, ``loss_conf`` (both already
    divided by the number of positives) and ``num_pos``.
    """

    def __init__(self, iou_threshold: float = 0.5, neg_pos_ratio: int = 3, neg_overlap: float = 0.5,
                 loc_weight: float = 1.0, variances: Tuple[float, float] = (0.1, 0.2)):
        super().__init__()
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.neg_overlap = neg_overlap
        self.loc_weight = loc_weight
        self.variances = variances

    @torch.no_grad()
    def build_targets(self, targets: Sequence[Dict[str, torch.Tensor]], anchors_cxcywh: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns cls_targets (N, A) int64 (0 = background), loc_targets (N, A, 4) (valid where
        positive) and a negative-candidate mask (N, A).

        The whole batch is matched at once (``match_many``), with no host synchronisation; per
        image the result is that of ``match``."""
        anchors_xyxy = cxcywh_to_xyxy(anchors_cxcywh)
        n, num_anchors = len(targets), anchors_cxcywh.shape[0]
        device = anchors_cxcywh.device
        num_gt = max((len(t["boxes"]) for t in targets), default=0)  # Python ints from shapes
        if num_gt == 0:
            return (torch.zeros(n, num_anchors, dtype=torch.long, device=device),
                    anchors_cxcywh.new_zeros(n, num_anchors, 4),
                    anchors_cxcywh.new_zeros(n, num_anchors) < self.neg_overlap)  # best IoU 0: a candidate
        boxes = [t["boxes"].to(anchors_cxcywh).reshape(-1, 4) for t in targets]
        counts = [len(b) for b in boxes]
        # one IoU for the whole batch, split into per-image views (no padding rows to scan)
        ious = box_iou(torch.cat(boxes), anchors_xyxy).split(counts)
        matched, max_iou = match_many(ious, self.iou_threshold)
        pos = matched >= 0
        safe = matched.clamp(min=0)
        # each default box's ground truth, gathered from the padded (N, G) / (N, G, 4) batch
        labels = pad_sequence([t["labels"].to(device, torch.long).reshape(-1) for t in targets],
                              batch_first=True)
        cls = torch.where(pos, labels.gather(1, safe) + 1, torch.zeros_like(matched))
        gt = pad_sequence(boxes, batch_first=True).gather(1, safe[:, :, None].expand(n, num_anchors, 4))
        loc = encode(xyxy_to_cxcywh(gt), anchors_cxcywh, self.variances)
        loc = torch.where(pos[:, :, None], loc, torch.zeros_like(loc))
        return cls, loc, ~pos & (max_iou < self.neg_overlap)

    def forward(self, bbox_regression: torch.Tensor, cls_logits: torch.Tensor,
                targets: List[Dict[str, torch.Tensor]], anchors_cxcywh: torch.Tensor) -> Dict[str, torch.Tensor]:
        cls_targets, loc_targets, candidates = self.build_targets(targets, anchors_cxcywh)
        pos = cls_targets > 0
        num_pos_per_image = pos.sum(dim=1)
        num_pos = num_pos_per_image.sum()
        normaliser = num_pos.clamp(min=1).to(bbox_regression.dtype)

        # Sums over masks via torch.where, not boolean indexing (``x[pos]`` needs the count of True
        # on the host: a GPU synchronisation per step). Non-positive predictions are replaced by
        # their target, so they add exactly 0 and get exactly zero gradient, as before; only the
        # order of the float summation differs from summing the selected elements.
        pred = torch.where(pos[:, :, None], bbox_regression.float(), loc_targets)
        loc_loss = F.smooth_l1_loss(pred, loc_targets, reduction="sum")

        ce = F.cross_entropy(cls_logits.float().flatten(0, 1), cls_targets.flatten(), reduction="none")
        ce = ce.view_as(cls_targets)
        # Hard negative mining: rank candidates by their (background) confidence loss per image and
        # keep the top neg_pos_ratio * num_pos of them. The rank of each box is the inverse of the
        # sort permutation (a scatter; the same result as the argsort of the argsort, in O(A)).
        # stable: equal losses keep box order, so CPU and CUDA pick the same negatives.
        with torch.no_grad():
            neg_loss = torch.where(candidates, ce, torch.full_like(ce, -float("inf")))
            order = neg_loss.argsort(dim=1, descending=True, stable=True)
            arange = torch.arange(ce.shape[1], device=ce.device).expand_as(order)
            rank = torch.empty_like(order).scatter_(1, order, arange)
            num_neg = torch.minimum(self.neg_pos_ratio * num_pos_per_image, candidates.sum(dim=1))
            neg = rank < num_neg[:, None]
        conf_loss = torch.where(pos | neg, ce, torch.zeros_like(ce)).sum()

        loss_loc = self.loc_weight * loc_loss / normaliser
        loss_conf = conf_loss / normaliser
        return {"loss": loss_loc + loss_conf, "loss_loc": loss_loc.detach(), "loss_conf": loss_conf.detach(),
                "num_pos": num_pos.detach()}
