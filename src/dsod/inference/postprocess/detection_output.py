"""Detection output (ORIGINAL.md §1.7, Caffe ``DetectionOutput``): softmax, decode, per-class score
threshold (0.01) and top-k (400), per-class greedy NMS (0.45, ``dsod.inference.postprocess.nms``), keep the best 200
per image. One loop over images.

Every backend's decoded outputs go through the same selection, ``dsod.inference.postprocess.selection`` (one compiled call
where numba is installed, else NumPy; exactly Caffe's, equal scores included: tested against the
original loop), which sorts only the prefix of the score order that can hold the detections."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...geometry.box_coder import decode
from ...geometry.boxes import cxcywh_to_xyxy
from .selection import PrefixSelector


def decode_outputs(bbox_regression: torch.Tensor, cls_logits: torch.Tensor, anchors_cxcywh: torch.Tensor,
                   variances: Tuple[float, float] = (0.1, 0.2)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Network outputs -> (boxes (N, A, 4) xyxy normalised to the input, scores (N, A, C-1) softmax
    probabilities without the background class): the part of ``DetectionOutput`` every backend shares
    (eager here, the exported ONNX graph in ``dsod.export``, which traces this same function)."""
    boxes = cxcywh_to_xyxy(decode(bbox_regression.float(), anchors_cxcywh, variances))
    # contiguous: the selection reads the scores as one flat array (a strided view cost ~0.1 ms a
    # BCCD image there); no node in the exported graph
    return boxes, torch.softmax(cls_logits.float(), dim=-1)[..., 1:].contiguous()


class PostProcessor:
    """Args:
        score_thresh, nms_thresh, topk_candidates (per class, before NMS), detections_per_img.
        variances: box-coding variances.
        nms_kernel: "onnxruntime" | "torchvision" | None (``dsod.inference.postprocess.nms.kernel``: ONNX Runtime's on CPU
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
        self.nms_kernel = nms_kernel  # dsod.inference.postprocess.nms.kernel: None picks the fastest installed

    @torch.no_grad()
    def __call__(self, bbox_regression: torch.Tensor, cls_logits: torch.Tensor, anchors_cxcywh: torch.Tensor,
                 image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict[str, torch.Tensor]]:
        return self.select(*decode_outputs(bbox_regression, cls_logits, anchors_cxcywh, self.variances), image_sizes)

    @torch.no_grad()
    def select(self, boxes: torch.Tensor, scores: torch.Tensor,
               image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict[str, torch.Tensor]]:
        """Decoded ``boxes`` (N, A, 4) and ``scores`` (N, A, C-1) (``decode_outputs``, or an exported
        graph's outputs) -> one dict per image, as ``__call__``."""
        # numpy on the CPU for every device: one copy of the batch from a GPU costs less than the
        # per-class kernel launches it replaces, and the tie order is Caffe's everywhere
        boxes_np = boxes.detach().float().cpu().numpy()
        scores_np = scores.detach().float().cpu().numpy()
        results = []
        for i in range(boxes_np.shape[0]):
            h, w = image_sizes[i] if image_sizes is not None else (1.0, 1.0)
            results.append(self._one(boxes_np[i], scores_np[i], float(h), float(w)))
        return results

    def single(self, boxes: torch.Tensor, scores: torch.Tensor, h: float, w: float) -> Dict[str, torch.Tensor]:
        """One image's (A, 4) boxes and (A, C-1) scores -> its detections (``select``)."""
        return self.select(boxes[None], scores[None], [(h, w)])[0]

    def _one(self, boxes: np.ndarray, scores: np.ndarray, h: float, w: float) -> Dict[str, torch.Tensor]:
        anchors, labels, s = self._selector().select(boxes, scores)
        scale = np.array([w, h, w, h], np.float32)
        kept = np.minimum(np.maximum(boxes[anchors] * scale, 0), scale)  # clipped to the image
        return {"boxes": torch.from_numpy(kept), "scores": torch.from_numpy(s), "labels": torch.from_numpy(labels)}

    def _selector(self) -> PrefixSelector:
        """The selection for the current settings (kept across images: it learns the prefix size)."""
        key = (self.score_thresh, self.nms_thresh, self.topk_candidates, self.detections_per_img, self.nms_kernel)
        if getattr(self, "_key", None) != key:
            self._key, self._sel = key, PrefixSelector(*key)
        return self._sel
