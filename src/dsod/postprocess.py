"""Detection output (ORIGINAL.md §1.7, Caffe ``DetectionOutput``): softmax, decode, per-class score
threshold (0.01) and top-k (400), per-class greedy NMS (0.45, ``dsod.nms``), keep the best 200
per image. Vectorised over classes; one loop over images.

Two ways to the same detections: ``select`` (decoded outputs -> top-k in numpy, one NMS call; the
PyTorch backends and training's evaluation) and ``from_selection`` (the top-k and NMS already done
inside an ONNX Runtime session, ``dsod.onnx_selection``; ``backend=onnxruntime[-int8]``). Both follow
Caffe's tie order (equal scores: the lower anchor first), tested against the original loop."""
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

    On CPU exactly Caffe's selection (``GetMaxScoreIndex``: a ``std::stable_sort`` by score, the first
    k), equal scores included: the lower anchor first, at the cut too. That matters for bf16 and int8
    outputs, whose scores tie by the hundreds (``torch.topk`` and numpy's ``argpartition`` break ties
    arbitrarily). numpy: the k-th largest score per class (introselect), the anchors above it plus the
    lowest-numbered of those equal to it, and a stable sort of the k; 0.29 ms for a trained BCCD
    model's 8,744 x 3 scores on an AMD Zen 4 (0.23 ms without the tie rule). Other devices:
    ``torch.topk``."""
    if scores.device.type != "cpu" or k == 0:
        top, idx = scores.topk(k, dim=0)
        return top.t(), idx.t()
    a = np.ascontiguousarray(scores.float().numpy().T)  # (C, A)
    c, n = a.shape
    kth = np.partition(a, n - k, axis=1)[:, n - k]  # each class's k-th largest score
    above, tied = a > kth[:, None], a == kth[:, None]
    take = above | (tied & (np.cumsum(tied, axis=1) <= (k - above.sum(1))[:, None]))
    rows, anchors = np.nonzero(take)  # per class in anchor order
    if anchors.size != c * k:  # NaN scores (a broken model): no order to be faithful to
        top, idx = scores.topk(k, dim=0)
        return top.t(), idx.t()
    anchors = anchors.reshape(c, k)
    values = np.take_along_axis(a, anchors, 1)
    order = np.argsort(-values, axis=1, kind="stable")  # equal scores: the lower anchor first
    return (torch.from_numpy(np.take_along_axis(values, order, 1)),
            torch.from_numpy(np.take_along_axis(anchors, order, 1)))


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
        # (topk_per_class) instead of thresholding every anchor and sorting the candidates twice; the same
        # candidates (the best topk_candidates above the threshold, per class). Then one greedy NMS
        # call for all classes (dsod.nms) and the best detections_per_img over the classes.
        top, idx = topk_per_class(scores, self.candidates(scores.shape[0]))
        classes, ranks = class_nms(boxes[idx], top, self.nms_thresh, self.score_thresh, self.nms_kernel)
        s = top[classes, ranks]
        s, order = s.sort(descending=True, stable=True)
        order = order[: self.detections_per_img]
        classes, ranks = classes[order], ranks[order]
        scale = boxes.new_tensor([w, h, w, h])
        b = torch.minimum((boxes[idx[classes, ranks]] * scale).clamp_(min=0), scale)  # clip: two ops, not five
        return {"boxes": b, "scores": s[: self.detections_per_img], "labels": classes}

    def candidates(self, num_anchors: int) -> int:
        """Caffe's ``top_k``: candidates per class before NMS."""
        return min(self.topk_candidates, num_anchors)

    def max_per_class(self, num_anchors: int) -> int:
        """Boxes NMS keeps per class at most: ``min(top_k, keep_top_k)`` gives the same detections as
        ``top_k`` (a class's kept boxes beyond the image's limit are never among its best)."""
        return min(self.candidates(num_anchors), self.detections_per_img)

    def from_selection(self, top_scores: np.ndarray, candidate_boxes: np.ndarray, rows: np.ndarray,
                       image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict[str, torch.Tensor]]:
        """The outputs of a session with the top-k and NMS in its graph (``OnnxDetector.select``,
        ``dsod.onnx_selection``: top_scores (N, C, k), candidate_boxes (N*C, k, 4), rows (S, 3) [image *
        C + class, 0, rank]) -> one dict per image, as ``__call__``. In numpy: the arrays are numpy
        already, and each numpy call costs a fraction of a torch op's overhead on these few hundred rows."""
        n, c, k = top_scores.shape
        flat, rank = rows[:, 0], rows[:, 2]
        scores, boxes = top_scores.reshape(n * c, k)[flat, rank], candidate_boxes[flat, rank]
        image, labels = np.divmod(flat, c)
        results = []
        for i in range(n):
            h, w = image_sizes[i] if image_sizes is not None else (1.0, 1.0)
            mine = slice(None) if n == 1 else image == i
            s = scores[mine]
            order = np.argsort(-s, kind="stable")[: self.detections_per_img]  # ties: class, then rank order
            scale = np.array([w, h, w, h], np.float32)
            b = np.minimum(np.maximum(boxes[mine][order] * scale, 0), scale)
            results.append({"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s[order]),
                            "labels": torch.from_numpy(labels[mine][order])})
        return results
