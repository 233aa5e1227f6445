"""Detection output (ORIGINAL.md §1.7, Caffe ``DetectionOutput``): softmax, decode, per-class score
threshold (0.01) and top-k (400), per-class greedy NMS (0.45, ``dsod.nms``), keep the best 200
per image. Vectorised over classes; one loop over images."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .box_coder import decode
from .boxes import cxcywh_to_xyxy
from .nms import class_nms


def decode_outputs(bbox_regression: torch.Tensor, cls_logits: torch.Tensor, anchors_cxcywh: torch.Tensor,
                   variances: Tuple[float, float] = (0.1, 0.2)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Network outputs -> (boxes (N, A, 4) xyxy normalised to the input, scores (N, A, C-1) softmax
    probabilities without the background class): the part of ``DetectionOutput`` every backend shares
    (eager here, the exported ONNX graph in ``dsod.export``, which traces this same function)."""
    boxes = cxcywh_to_xyxy(decode(bbox_regression.float(), anchors_cxcywh, variances))
    return boxes, torch.softmax(cls_logits.float(), dim=-1)[..., 1:]


def topk_per_class(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``scores`` (A, C) -> each class's ``k`` best scores, sorted down, and their anchors, both (C, k).
    On CPU numpy's introselect (``argpartition``) and a sort of the k: the same selection as
    ``torch.topk`` in 0.4-0.6x its time on one core (a trained BCCD model's 8,744 x 3 scores: 0.22 vs
    0.36 ms; chess_rf100's 11,285 x 13: 1.15 vs 2.73 ms; docs/PERFORMANCE.md "Post-processing")."""
    if scores.device.type != "cpu" or k == 0 or k == scores.shape[0]:
        top, idx = scores.topk(k, dim=0)
        return top.t(), idx.t()
    a = scores.float().numpy().T  # (C, A) view
    part = np.argpartition(a, a.shape[1] - k, axis=1)[:, a.shape[1] - k:]
    values = np.take_along_axis(a, part, 1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (torch.from_numpy(np.take_along_axis(values, order, 1)),
            torch.from_numpy(np.take_along_axis(part, order, 1)))


class PostProcessor:
    """Args:
        score_thresh, nms_thresh, topk_candidates (per class, before NMS), detections_per_img.
        variances: box-coding variances.
        nms_kernel: "onnxruntime" | "torchvision" | None (``dsod.nms.kernel``: ONNX Runtime's on CPU
            where installed).

    __call__(bbox_regression (N, A, 4), cls_logits (N, A, C), anchors_cxcywh (A, 4), image_sizes)
    returns one dict per image: ``boxes`` (K, 4) xyxy, ``scores`` (K,), ``labels`` (K,) int64 dataset
    class indices (0-based, background removed), sorted by score. With ``image_sizes`` [(h, w), ...]
    boxes are in those pixels (e.g. the original image, undoing the warp-resize), else normalised.
    Boxes are clipped to the image (Caffe does not clip; clipping only trims parts outside the image).
    """

    def __init__(self, score_thresh: float = 0.01, nms_thresh: float = 0.45, topk_candidates: int = 400,
                 detections_per_img: int = 200, variances: Tuple[float, float] = (0.1, 0.2),
                 nms_kernel: Optional[str] = None):
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img
        self.variances = variances
        self.nms_kernel = nms_kernel  # dsod.nms.kernel: None picks the fastest installed

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
        # Per-class top-k before the threshold: one partial selection over each class's column
        # (torch.topk) instead of thresholding every anchor and sorting the candidates twice; the same
        # candidates (the best topk_candidates above the threshold, per class). Then one greedy NMS
        # call for all classes (dsod.nms) and the best detections_per_img over the classes.
        top, idx = topk_per_class(scores, min(self.topk_candidates, scores.shape[0]))
        classes, ranks = class_nms(boxes[idx], top, self.nms_thresh, self.score_thresh, self.nms_kernel)
        s = top[classes, ranks]
        s, order = s.sort(descending=True, stable=True)
        order = order[: self.detections_per_img]
        classes, ranks = classes[order], ranks[order]
        scale = boxes.new_tensor([w, h, w, h])
        b = torch.minimum((boxes[idx[classes, ranks]] * scale).clamp_(min=0), scale)  # clip: two ops, not five
        return {"boxes": b, "scores": s[: self.detections_per_img], "labels": classes}
