"""Detection output (ORIGINAL.md §1.7, Caffe ``DetectionOutput``): softmax, decode, per-class score
threshold (0.01) and top-k (400), per-class NMS (0.45, torchvision's batched NMS), keep the best 200
per image. Vectorised over classes; one loop over images."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torchvision.ops import batched_nms

from .box_coder import decode
from .boxes import cxcywh_to_xyxy


def decode_outputs(bbox_regression: torch.Tensor, cls_logits: torch.Tensor, anchors_cxcywh: torch.Tensor,
                   variances: Tuple[float, float] = (0.1, 0.2)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Network outputs -> (boxes (N, A, 4) xyxy normalised to the input, scores (N, A, C-1) softmax
    probabilities without the background class): the part of ``DetectionOutput`` every backend shares
    (eager here, the exported ONNX graph in ``dsod.export``, which traces this same function)."""
    boxes = cxcywh_to_xyxy(decode(bbox_regression.float(), anchors_cxcywh, variances))
    return boxes, torch.softmax(cls_logits.float(), dim=-1)[..., 1:]


class PostProcessor:
    """Args:
        score_thresh, nms_thresh, topk_candidates (per class, before NMS), detections_per_img.
        variances: box-coding variances.

    __call__(bbox_regression (N, A, 4), cls_logits (N, A, C), anchors_cxcywh (A, 4), image_sizes)
    returns one dict per image: ``boxes`` (K, 4) xyxy, ``scores`` (K,), ``labels`` (K,) int64 dataset
    class indices (0-based, background removed), sorted by score. With ``image_sizes`` [(h, w), ...]
    boxes are in those pixels (e.g. the original image, undoing the warp-resize), else normalised.
    Boxes are clipped to the image (Caffe does not clip; clipping only trims parts outside the image).
    """

    def __init__(self, score_thresh: float = 0.01, nms_thresh: float = 0.45, topk_candidates: int = 400,
                 detections_per_img: int = 200, variances: Tuple[float, float] = (0.1, 0.2)):
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img
        self.variances = variances

    @torch.no_grad()
    def __call__(self, bbox_regression: torch.Tensor, cls_logits: torch.Tensor, anchors_cxcywh: torch.Tensor,
                 image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict[str, torch.Tensor]]:
        return self.select(*decode_outputs(bbox_regression, cls_logits, anchors_cxcywh, self.variances), image_sizes)

    @torch.no_grad()
    def select(self, boxes: torch.Tensor, scores: torch.Tensor,
               image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict[str, torch.Tensor]]:
        """Decoded ``boxes`` (N, A, 4) and ``scores`` (N, A, C-1) (``decode_outputs``, or an exported
        graph's outputs) -> one dict per image, as ``__call__``."""
        results = []
        for i in range(boxes.shape[0]):
            h, w = image_sizes[i] if image_sizes is not None else (1.0, 1.0)
            results.append(self.single(boxes[i], scores[i], float(h), float(w)))
        return results

    def single(self, boxes: torch.Tensor, scores: torch.Tensor, h: float, w: float) -> Dict[str, torch.Tensor]:
        # Per-class top-k, then the score threshold: one partial selection over each class's column
        # (torch.topk) instead of thresholding every anchor and sorting all candidates twice. The same
        # candidates (the best topk_candidates above the threshold, per class); on a trained DSOD at
        # dsod val's 0.01 about 26k anchor/class pairs pass the threshold, and this is ~4x faster.
        k = min(self.topk_candidates, scores.shape[0])
        top, idx = scores.topk(k, dim=0)  # (k, C): each class's best scores and their anchors
        keep = top > self.score_thresh
        anchor_idx, s = idx[keep], top[keep]
        labels = torch.arange(scores.shape[1], device=scores.device).expand(k, -1)[keep]
        b = boxes[anchor_idx]
        keep = batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
        scale = b.new_tensor([w, h, w, h])
        b = torch.minimum((b[keep] * scale).clamp_(min=0), scale)  # clip to the image: two ops, not five
        return {"boxes": b, "scores": s[keep], "labels": labels[keep]}
