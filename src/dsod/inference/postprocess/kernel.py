"""``dsod.inference.postprocess.selection``'s prefix selection as one compiled function (numba, ``pip install numba``; the
``fast`` extra): the threshold, the pairs above it, the sort, each class's top-k and greedy NMS, and
the final order, without leaving machine code.

Why compiled: the NumPy + ONNX Runtime path makes ~50 library calls per image, and on a shared CPU
each call finds its code and data evicted by whatever ran since the last image (the network): on the
BCCD recipe model a tiny ONNX Runtime call takes 9 us back to back and 91 us after 10 ms of anything
else, and the whole selection 0.47 vs 1.1 ms (docs/PERFORMANCE.md "Post-processing").
One call of a few kilobytes of machine code pays that once. No library has Caffe's selection on a
prefix; the NMS loop is written here, with ONNX Runtime's ``NonMaxSuppression`` IoU test (the same
float32 operations, so the same boxes as the ``onnxruntime`` kernel; tests/test_postprocess.py).

Compiled on first use (~8 s once on an AMD Zen 4) and cached on disk by numba (``cache=True``).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .keys import ANCHOR_BITS as _A_BITS
from .keys import CLASS_BITS as _CLASS_BITS
from .keys import SAMPLE as _SAMPLE

_C_SHIFT = 64 - _CLASS_BITS  # key: class | inverted score bits (32) | anchor (_A_BITS), as dsod.inference.postprocess.selection


@njit(cache=True, nogil=True)
def _threshold(flat, m, floor):
    n = flat.size
    if m >= n:
        return floor
    step = max(1, n // _SAMPLE)
    sample = flat[::step].copy()
    j = max(1, m // step)
    if j >= sample.size:
        return floor
    return max(floor, np.partition(sample, sample.size - j)[sample.size - j])


@njit(cache=True, nogil=True, error_model="numpy")
def _prefix(boxes, flat, num_classes, t, top_k, max_per_class, iou, keep_top_k):
    """One pass over the pairs scoring above ``t``: (survivors' pair indices in Caffe's final order,
    how many pairs score at least the ``keep_top_k``-th survivor, or -1 when fewer survive)."""
    n = flat.size
    count = 0
    for i in range(n):
        if flat[i] > t:
            count += 1
    keys = np.empty(count, np.uint64)
    j = 0
    for i in range(n):
        v = flat[i]
        if v > t:
            a = i // num_classes
            inverted = np.uint64(0xFFFFFFFF) - np.uint64(np.float32(v).view(np.uint32))
            keys[j] = (np.uint64(i - a * num_classes) << np.uint64(_C_SHIFT)) | (inverted << np.uint64(_A_BITS)) \
                | np.uint64(a)
            j += 1
    keys.sort()  # class, score down, anchor: Caffe's per-class std::stable_sort
    kept = np.empty(count, np.int64)  # positions in keys
    kx0 = np.empty(count, np.float32)
    ky0 = np.empty(count, np.float32)
    kx1 = np.empty(count, np.float32)
    ky1 = np.empty(count, np.float32)
    ka = np.empty(count, np.float32)
    nk, first, cls, rank, in_cls = 0, 0, -1, 0, 0
    for p in range(count):
        c = np.int64(keys[p] >> np.uint64(_C_SHIFT))
        if c != cls:
            cls, rank, in_cls, first = c, 0, 0, nk
        rank += 1
        if rank > top_k or in_cls >= max_per_class:
            continue
        a = np.int64(keys[p] & np.uint64((1 << _A_BITS) - 1))
        x0, y0, x1, y1 = boxes[a, 0], boxes[a, 1], boxes[a, 2], boxes[a, 3]
        area = (x1 - x0) * (y1 - y0)
        keep = True
        if area > 0:  # ONNX Runtime's SuppressByIOU: no area, no suppression
            q = first
            while q < nk:  # the kept boxes of this class, 16 at a time (vectorised), stop at a hit
                end = min(q + 16, nk)
                hit = False
                for r in range(q, end):
                    iw = min(x1, kx1[r]) - max(x0, kx0[r])
                    ih = min(y1, ky1[r]) - max(y0, ky0[r])
                    inter = iw * ih
                    union = area + ka[r] - inter
                    hit |= (iw > 0) & (ih > 0) & (ka[r] > 0) & (union > 0) & (inter / union > iou)
                if hit:
                    keep = False
                    break
                q = end
        if keep:
            kept[nk] = p
            kx0[nk], ky0[nk], kx1[nk], ky1[nk], ka[nk] = x0, y0, x1, y1, area
            nk += 1
            in_cls += 1
    order = np.empty(nk, np.uint64)  # score down, then class and rank (the position in keys)
    for q in range(nk):
        order[q] = (((keys[kept[q]] >> np.uint64(_A_BITS)) & np.uint64(0xFFFFFFFF)) << np.uint64(32)) \
            | np.uint64(kept[q])
    order.sort()
    out = np.empty(min(nk, keep_top_k), np.int64)
    for q in range(out.size):
        k = keys[np.int64(order[q] & np.uint64(0xFFFFFFFF))]
        out[q] = np.int64(k & np.uint64((1 << _A_BITS) - 1)) * num_classes + np.int64(k >> np.uint64(_C_SHIFT))
    need = -1
    if nk >= keep_top_k > 0:
        last = (order[keep_top_k - 1] >> np.uint64(32)) << np.uint64(_A_BITS)  # its inverted score bits
        need = 0
        for p in range(count):
            if (keys[p] & np.uint64((1 << _C_SHIFT) - 1)) < last + np.uint64(1 << _A_BITS):  # score >= its
                need += 1
    return out, need


@njit(cache=True, nogil=True)
def select(boxes, flat, num_classes, hint, score_thresh, top_k, keep_top_k, iou):
    """(pair indices of the detections, best first; pairs the image needed, or -1)."""
    m = hint
    max_per_class = min(top_k, keep_top_k)
    while True:
        t = _threshold(flat, m, score_thresh)
        out, need = _prefix(boxes, flat, num_classes, t, top_k, max_per_class, iou, keep_top_k)
        if out.size >= keep_top_k or t <= score_thresh:
            return out, need
        m = max(2 * m, int(m * 1.25 * keep_top_k / max(1, out.size)))
