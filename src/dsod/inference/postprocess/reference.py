"""Caffe's ``DetectionOutput`` selection written plainly (ORIGINAL.md; the original's
``detection_output_layer.cpp``): the oracle the fast selection is tested against and the baseline
``benchmarks/bench_postprocess.py`` times. Not used to serve: ``selection.PrefixSelector`` gives the
same detections in a fraction of the time.

Per class: the scores above the threshold, ``std::stable_sort`` by score (equal scores: the lower
anchor first), the first ``top_k``, ``ApplyNMSFast`` (a candidate is dropped by the first kept box it
overlaps at IoU above ``nms_thresh``); then the best ``keep_top_k`` over all classes, a stable sort
(equal scores keep class order, then rank order).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np


def _nms_loop(boxes: np.ndarray, idx: np.ndarray, nms_thresh: float) -> List[int]:
    """``ApplyNMSFast`` as written: each candidate against every box kept so far, in rank order."""
    kept: List[int] = []
    for i in idx:
        x0, y0, x1, y1 = boxes[i]
        for j in kept:
            q0, q1, q2, q3 = boxes[j]
            inter = max(0.0, min(x1, q2) - max(x0, q0)) * max(0.0, min(y1, q3) - max(y0, q1))
            union = (x1 - x0) * (y1 - y0) + (q2 - q0) * (q3 - q1) - inter
            if inter > nms_thresh * union:
                break
        else:
            kept.append(int(i))
    return kept


def _nms_torchvision(boxes: np.ndarray, idx: np.ndarray, nms_thresh: float) -> List[int]:
    """The same rule with torchvision's NMS, given the rank order as scores (so ties cannot reorder)."""
    import torch
    from torchvision.ops import nms

    if not idx.size:
        return []
    order = torch.arange(idx.size, 0, -1, dtype=torch.float32)
    keep = nms(torch.from_numpy(np.ascontiguousarray(boxes[idx])).float(), order, nms_thresh).numpy()
    return idx[keep].tolist()


def caffe_detection_output(boxes: np.ndarray, scores: np.ndarray, score_thresh: float, nms_thresh: float,
                           top_k: int, keep_top_k: int, nms: str = "loop") -> List[Tuple[float, int, int]]:
    """``boxes`` (A, 4) x1y1x2y2, ``scores`` (A, C) without background -> [(score, class, anchor)], best
    first. ``nms``: ``loop`` (the literal ApplyNMSFast, float64 if the boxes are) or ``torchvision``
    (vectorised, float32; the benchmark's baseline)."""
    suppress = {"loop": _nms_loop, "torchvision": _nms_torchvision}[nms]
    found: List[Tuple[float, int, int]] = []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        idx = np.flatnonzero(s > score_thresh)
        idx = idx[np.argsort(-s[idx], kind="stable")][:top_k]
        found += [(float(s[i]), c, int(i)) for i in suppress(boxes, idx, nms_thresh)]
    found.sort(key=lambda t: -t[0])  # stable
    return found[:keep_top_k]
