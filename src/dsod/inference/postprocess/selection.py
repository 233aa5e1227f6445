"""Caffe ``DetectionOutput``'s selection (ORIGINAL.md §1.7) for one image, working only on the
candidates that can matter: a prefix of the score order.

Caffe, per class: the anchors scoring above ``score_thresh``, ``std::stable_sort``-ed by score (equal
scores: the lower anchor first), the first ``top_k``, greedy NMS (``ApplyNMSFast``: a candidate is
dropped by the first kept box of its class over ``nms_thresh`` IoU); then the best ``keep_top_k``
survivors over all classes.

Whether a candidate survives depends only on the candidates of its class that score higher. So the
candidates scoring above any threshold ``t`` decide, exactly, which of them survive; once at least
``keep_top_k`` of them survive, no candidate at or below ``t`` can be among the best ``keep_top_k``.
``select`` therefore takes the pairs (anchor, class) above a ``t`` guessed to leave a few hundred of
them, runs the per-class top-k and NMS on those, and lowers ``t`` (down to ``score_thresh``) only
when fewer than ``keep_top_k`` survive. A trained model at ``dsod val``'s score 0.01 has nearly every
pair above the threshold (148k of 151k on a 13-class chess model), but needs only ~900 of them for
its 200 detections; per-class top-k over every anchor then NMS over 13 x 400 (numpy or ONNX Runtime's
TopK) takes 3.5-4.4 ms there, this selection 0.5-0.85 ms (AMD Zen 4; docs/PERFORMANCE.md
"Post-processing").

No library does this: torchvision's ``batched_nms`` and ONNX ``NonMaxSuppression`` run NMS over all
the candidates they are given. Where numba is installed (the ``fast`` extra) the whole selection is
one compiled call (``dsod.inference.postprocess.kernel``, 1.6-2.4x faster where it matters, after the network, on cold
caches); otherwise NumPy here with ONNX Runtime's or torchvision's NMS (``dsod.inference.postprocess.nms``). Same
detections either way (tests/test_postprocess.py).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

from .keys import ANCHOR_BITS as _ANCHOR_BITS
from .keys import CLASS_BITS as _CLASS_BITS
from .keys import SAMPLE as _SAMPLE
from .nms import class_nms, kernel


def _threshold_for(flat: np.ndarray, m: int, floor: float) -> float:
    """A score leaving about ``m`` of ``flat`` above it (from a strided sample), at least ``floor``."""
    if m >= flat.size:
        return floor
    step = max(1, flat.size // _SAMPLE)
    sample = flat[::step]
    j = max(1, m // step)
    if j >= sample.size:
        return floor
    return max(floor, float(np.partition(sample, sample.size - j)[sample.size - j]))


@functools.lru_cache(maxsize=None)
def _compiled():
    """``dsod.inference.postprocess.kernel``, or None where numba cannot load it (e.g. no writable cache
    directory for its compiled code); the NumPy path then gives the same detections."""
    try:
        from . import kernel as selection_kernel
    except (ImportError, RuntimeError, OSError):
        return None
    return selection_kernel


def _descending(s: np.ndarray) -> np.ndarray:
    """uint64 keys that sort positive float32 scores from high to low (their bits, inverted)."""
    return (np.uint64(0xFFFFFFFF) - s.view(np.uint32).astype(np.uint64))


class PrefixSelector:
    """``select(boxes (A, 4), scores (A, C))`` numpy float32 -> (anchors, classes, scores) of the
    detections, best first, exactly Caffe's (ties included; tests/test_postprocess.py checks it against
    the plain loop). ``first``: the prefix tried first, in pairs; afterwards 1.5x what the previous
    image needed, or 0.9x the last try if more (images of one model need alike, within ~3x on chess:
    a margin and a slow decay keep second tries to ~1 image in 25 there). A hint only: the result
    never depends on it."""

    def __init__(self, score_thresh: float = 0.01, nms_thresh: float = 0.45, top_k: int = 400,
                 keep_top_k: int = 200, nms_kernel: Optional[str] = None, first: Optional[int] = None):
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.top_k, self.keep_top_k, self.nms_kernel = top_k, keep_top_k, nms_kernel
        self.hint = first or 4 * keep_top_k

    def select(self, boxes: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        a_count, c_count = scores.shape
        flat = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)  # pair index: anchor * C + class
        compiled = _compiled() if kernel(self.nms_kernel) == "numba" else None
        if compiled is not None and a_count < (1 << _ANCHOR_BITS) and c_count < (1 << _CLASS_BITS):
            pairs, need = compiled.select(
                np.ascontiguousarray(boxes, dtype=np.float32), flat, c_count, self.hint, np.float32(self.score_thresh),
                self.top_k, self.keep_top_k, np.float32(self.nms_thresh))
            self._learn(need)
            anchors, classes = np.divmod(pairs, c_count)
            return anchors, classes, flat[pairs]
        keep = self.keep_top_k
        m = self.hint
        while True:
            t = _threshold_for(flat, m, self.score_thresh)
            complete = t <= self.score_thresh  # every candidate Caffe would look at is in the prefix
            pairs = np.flatnonzero(flat > t)
            anchors, classes = np.divmod(pairs, c_count)
            found = self._survivors(boxes, flat[pairs], anchors, classes, a_count)
            if keep == 0 or len(found[0]) >= keep or complete:
                if keep and len(found[0]) >= keep:  # pairs scoring at least the last detection's
                    self._learn(int(np.count_nonzero(flat[pairs] >= found[2][keep - 1])))
                return tuple(f[:keep] for f in found)
            # too few survivors: a prefix ~keep/found times longer, at least twice as long
            m = max(2 * m, int(m * 1.25 * keep / max(1, len(found[0]))))

    def _survivors(self, boxes, s, anchors, classes, a_count):
        """Per-class top-k and NMS over the prefix's pairs -> survivors (anchors, classes, scores) in
        Caffe's final order: score down; equal scores by class, then by rank in the class."""
        if a_count < (1 << _ANCHOR_BITS) and classes.size and classes.max() < (1 << _CLASS_BITS):
            key = (classes.astype(np.uint64) << np.uint64(64 - _CLASS_BITS)) \
                | (_descending(s) << np.uint64(_ANCHOR_BITS)) | anchors.astype(np.uint64)
            order = np.argsort(key)  # one sort: class, score down, anchor (Caffe's stable sort)
        else:
            order = np.lexsort((anchors, -s, classes))
        anchors, classes, s = anchors[order], classes[order], s[order]
        counts = np.bincount(classes, minlength=1)
        starts = np.cumsum(counts) - counts
        rank = np.arange(classes.size) - starts[classes]
        if counts.size and counts.max() > self.top_k:  # Caffe's top_k per class
            inside = rank < self.top_k
            anchors, classes, s, rank = anchors[inside], classes[inside], s[inside], rank[inside]
            counts = np.minimum(counts, self.top_k)
            starts = np.cumsum(counts) - counts
        kept = class_nms(boxes[anchors], classes, rank, counts, self.nms_thresh,
                         min(self.keep_top_k, self.top_k), self.nms_kernel)  # positions, any order
        kept = kept[np.argsort(_descending(s[kept]) << np.uint64(32) | kept.astype(np.uint64))]
        return anchors[kept], classes[kept], s[kept]

    def _learn(self, need: int) -> None:
        """Learn from how many pairs this image needed (-1: fewer than ``keep_top_k`` survived)."""
        if need >= 0:
            self.hint = max(self.keep_top_k, int(1.5 * need), int(0.9 * self.hint))
