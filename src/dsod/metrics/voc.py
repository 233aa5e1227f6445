"""PASCAL VOC detection metrics, as the official devkit defines them (``VOCevaldet.m``, ``VOCap.m``),
vectorised with numpy: one stable sort per evaluation, IoUs only between a detection and the ground
truths of its own class in its own image (computed pairwise in bounded chunks), no Python loop over
detections or images.

Matching (devkit, per class, IoU threshold 0.5):

* The detections of a class are taken in descending score order over the whole set. Each is compared
  with every ground truth of its class in its image, *difficult ones included*; its candidate is the
  ground truth with the largest IoU (the first in annotation order on equal IoUs).
* If that IoU ``>= iou_thresh`` (the devkit's ``ovmax >= minoverlap``; several Python ports use ``>``):
  a difficult candidate makes the detection *ignored* (neither TP nor FP); an unmatched candidate makes
  it a TP and marks the candidate matched; an already-matched candidate makes it a FP (a duplicate) --
  even when another, free ground truth also overlaps it (the devkit looks at the best one only).
  Otherwise the detection is a FP.
* ``num_gt`` (the devkit's ``npos``) counts the non-difficult ground truths. COCO crowd regions are
  treated like difficult ones (ignored regions).

Ties in score are broken deterministically by a stable sort: equal scores keep the order in which the
detections are given. :class:`dsod.metrics.Evaluator` gives them ordered by image (image ids sorted:
numbers numerically, names lexicographically -- the order COCOeval uses) and, within an image, by their
position in that image's detection list. This is the devkit's own behaviour (MATLAB ``sort`` is stable)
for a results file written in that order.

Average precision (from ``rec = cumTP / num_gt``, ``prec = cumTP / (cumTP + cumFP)``):

* **VOC2007, 11-point**: mean over ``t`` in 0, 0.1, ..., 1 of the largest precision at recall ``>= t``
  (0 if recall never reaches ``t``). The thresholds are ``k / 10`` correctly rounded, so a recall of
  exactly 0.3 counts for ``t = 0.3`` (MATLAB's ``0:0.1:1`` and numpy's ``arange(0, 1.1, 0.1)`` round
  ``t`` a hair above 0.3, 0.6 or 0.7; only recalls exactly equal to those values are affected).
* **VOC2010+, all-point (area)**: area under the precision envelope (precision made monotonically
  non-increasing), summed where recall changes, with sentinels ``(0, 0)`` and ``(1, 0)``.

Ignored detections are left out of the curve. (The devkit keeps them as points with unchanged TP/FP
counts, which changes no AP -- except that a class whose detections are *all* ignored gets NaN from
MATLAB's ``max`` over 0/0 precisions; here it gets 0, like any class with positives and no TP.)

Classes without (non-difficult) ground truth have an undefined AP (the devkit divides by ``npos = 0``):
it is NaN and the class is left out of the mean. Classes with ground truth but no detections have AP 0.
Images without detections contribute only their ground truths (misses).

IoU convention (``plus_one``): our boxes are continuous pixel coordinates -- readers keep the numbers of
the annotation file, and a box ``[x1, y1, x2, y2]`` has width ``x2 - x1`` -- so by default
(``plus_one=False``) ``IoU = |A n B| / |A u B|`` with widths ``x2 - x1``, the same geometry COCO uses.
The devkit treats coordinates as 1-based inclusive pixel indices and adds 1 to every width and height
(intersection included); ``plus_one=True`` reproduces that formula exactly, e.g. to match published VOC
numbers computed from the XML's integer coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np

# Upper bound on the (detection, ground truth) pairs held in memory at once.
_PAIR_CHUNK = 2_000_000

_T11 = np.arange(11) / 10.0  # 0, 0.1, ..., 1 (k/10 correctly rounded)


def iou_pairs(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU of the row pairs ``(a[i], b[i])`` of two (N, 4) xyxy arrays (float64)."""
    e = 1.0 if plus_one else 0.0
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + e
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + e
    overlap = (iw > 0) & (ih > 0)  # the devkit only scores boxes that overlap
    inter = np.where(overlap, iw * ih, 0.0)
    union = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e) + (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e) - inter
    ok = overlap & (union > 0)
    return np.divide(inter, union, out=np.zeros_like(inter), where=ok)


def _pair_chunks(q_keys: np.ndarray, g_keys_sorted: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """All pairs (query i, ground truth j) with equal keys, in query order then ground-truth order,
    yielded in chunks of about ``_PAIR_CHUNK`` pairs (a chunk never splits a query's pairs)."""
    start = np.searchsorted(g_keys_sorted, q_keys, "left")
    cnt = np.searchsorted(g_keys_sorted, q_keys, "right") - start
    csum = np.cumsum(cnt)
    n = len(q_keys)
    lo = 0
    while lo < n:
        base = csum[lo - 1] if lo else 0
        hi = int(np.searchsorted(csum, base + _PAIR_CHUNK, "right"))
        hi = min(max(hi, lo + 1), n)
        c = cnt[lo:hi]
        total = int(c.sum())
        if total:
            pq = np.repeat(np.arange(lo, hi), c)
            offs = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            pg = np.repeat(start[lo:hi], c) + offs
            yield pq, pg
        lo = hi


def best_overlaps(q_boxes: np.ndarray, q_keys: np.ndarray, g_boxes: np.ndarray, g_keys: np.ndarray,
                  plus_one: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """For each query box, the largest IoU with a ground truth of the same key and the index of that
    ground truth (the first on equal IoUs, in ``g`` order). ``(-1, -1)`` where there is none.
    ``g_keys`` need not be sorted (a stable sort keeps annotation order within a key)."""
    g_order = np.argsort(g_keys, kind="stable")
    g_sorted = g_keys[g_order]
    ovmax = np.full(len(q_keys), -1.0)
    jmax = np.full(len(q_keys), -1, np.int64)
    for pq, pg in _pair_chunks(q_keys, g_sorted):
        gi = g_order[pg]
        iou = iou_pairs(q_boxes[pq], g_boxes[gi], plus_one)
        seg = np.flatnonzero(np.r_[True, pq[1:] != pq[:-1]])
        mx = np.maximum.reduceat(iou, seg)
        q = pq[seg]
        ovmax[q] = mx
        hit = np.flatnonzero(iou == np.repeat(mx, np.diff(np.r_[seg, len(pq)])))
        _, first = np.unique(pq[hit], return_index=True)  # first maximum of each query
        jmax[pq[hit[first]]] = gi[hit[first]]
    return ovmax, jmax


@dataclass
class VOCResult:
    """Per-class VOC results (arrays of length C) and the precision/recall curves."""
    ap07: np.ndarray  # VOC2007 11-point AP (NaN: no ground truth)
    ap_area: np.ndarray  # VOC2010+ all-point AP (NaN: no ground truth)
    num_gt: np.ndarray  # non-difficult, non-crowd ground truths
    num_det: np.ndarray  # detections (ignored ones included)
    num_tp: np.ndarray
    recall: List[np.ndarray]  # per class, one point per non-ignored detection in score order
    precision: List[np.ndarray]
    scores: List[np.ndarray]

    @property
    def map07(self) -> float:
        return _nanmean(self.ap07)

    @property
    def map_area(self) -> float:
        return _nanmean(self.ap_area)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def ap_11point(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP (``rec`` non-decreasing)."""
    rec = np.asarray(rec, np.float64)
    prec = np.asarray(prec, np.float64)
    if len(rec) == 0:
        return 0.0
    env = np.maximum.accumulate(prec[::-1])[::-1]  # env[i] = max(prec[i:])
    idx = np.searchsorted(rec, _T11, "left")  # first point with rec >= t
    p = np.where(idx < len(rec), env[np.minimum(idx, len(rec) - 1)], 0.0)
    return float(p.sum() / 11.0)


def ap_area(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ all-point AP: area under the monotone precision envelope (``VOCap.m``)."""
    mrec = np.concatenate(([0.0], np.asarray(rec, np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(prec, np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def evaluate_voc(num_classes: int,
                 gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_images: np.ndarray, gt_ignore: np.ndarray,
                 det_boxes: np.ndarray, det_scores: np.ndarray, det_labels: np.ndarray, det_images: np.ndarray,
                 iou_thresh: float = 0.5, plus_one: bool = False) -> VOCResult:
    """VOC AP of every class over a whole set.

    Ground truths: boxes (G, 4) xyxy, labels (G,), image index (G,), ignore (G,) bool (difficult or
    crowd), in annotation order within each image. Detections: boxes (D, 4) xyxy, scores, labels and
    image index, in the tie-breaking order (see the module docstring). Image indices are any integers
    identifying images consistently between the two.
    """
    C = int(num_classes)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64)
    det_labels = np.asarray(det_labels, np.int64)
    gt_images = np.asarray(gt_images, np.int64)
    det_images = np.asarray(det_images, np.int64)
    gt_ignore = np.asarray(gt_ignore, bool)
    det_scores = np.asarray(det_scores, np.float64)

    # One stable sort: class, then descending score, then input order.
    order = np.lexsort((-det_scores, det_labels))
    d_lab = det_labels[order]
    d_img = det_images[order]
    n_img = int(max(gt_images.max(initial=-1), det_images.max(initial=-1))) + 1
    key = lambda lab, img: lab * n_img + img  # noqa: E731
    ovmax, jmax = best_overlaps(det_boxes[order], key(d_lab, d_img), gt_boxes, key(gt_labels, gt_images), plus_one)

    cand = ovmax >= iou_thresh
    ignored = np.zeros(len(order), bool)
    ignored[cand] = gt_ignore[jmax[cand]]
    m = np.flatnonzero(cand & ~ignored)
    _, first = np.unique(jmax[m], return_index=True)  # first (highest-ranked) claim of each ground truth
    tp = np.zeros(len(order), bool)
    tp[m[first]] = True

    num_gt = np.bincount(gt_labels[~gt_ignore], minlength=C)[:C]
    num_det = np.bincount(d_lab, minlength=C)[:C]
    bounds = np.searchsorted(d_lab, np.arange(C + 1), "left")
    ap07 = np.full(C, np.nan)
    apa = np.full(C, np.nan)
    num_tp = np.zeros(C, np.int64)
    recs, precs, scs = [], [], []
    s_sorted = det_scores[order]
    for c in range(C):
        sl = slice(bounds[c], bounds[c + 1])
        keep = ~ignored[sl]
        t = tp[sl][keep]
        ctp = np.cumsum(t)
        cfp = np.cumsum(~t)
        prec = ctp / np.maximum(ctp + cfp, 1)
        rec = ctp / num_gt[c] if num_gt[c] else np.full(len(ctp), np.nan)
        num_tp[c] = int(ctp[-1]) if len(ctp) else 0
        recs.append(rec)
        precs.append(prec)
        scs.append(s_sorted[sl][keep])
        if num_gt[c]:
            ap07[c] = ap_11point(rec, prec)
            apa[c] = ap_area(rec, prec)
    return VOCResult(ap07, apa, num_gt.astype(np.int64), num_det.astype(np.int64), num_tp, recs, precs, scs)


def confusion_matrix(num_classes: int,
                     gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_images: np.ndarray, gt_ignore: np.ndarray,
                     det_boxes: np.ndarray, det_scores: np.ndarray, det_labels: np.ndarray, det_images: np.ndarray,
                     conf_thresh: float = 0.25, iou_thresh: float = 0.5, plus_one: bool = False) -> np.ndarray:
    """(C+1, C+1) counts, rows = predicted class, columns = true class; index C is background.

    Detections with score ``>= conf_thresh`` are matched to ground truths of any class in their image
    with IoU ``>= iou_thresh``, one-to-one: candidate pairs in descending IoU order (stable: then
    detection order), each detection keeps its best pair, then each ground truth keeps its best
    remaining pair. A matched pair counts at (predicted, true); an unmatched detection at
    (predicted, background); an unmatched ground truth at (background, true). Detections matched to an
    ignored ground truth (difficult/crowd) and unmatched ignored ground truths are not counted.
    """
    C = int(num_classes)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64)
    gt_images = np.asarray(gt_images, np.int64)
    gt_ignore = np.asarray(gt_ignore, bool)
    keep = np.asarray(det_scores, np.float64) >= conf_thresh
    d_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)[keep]
    d_lab = np.asarray(det_labels, np.int64)[keep]
    d_img = np.asarray(det_images, np.int64)[keep]

    g_order = np.argsort(gt_images, kind="stable")
    g_sorted = gt_images[g_order]
    pd_all, pg_all, iou_all = [], [], []
    for pq, pg in _pair_chunks(d_img, g_sorted):
        gi = g_order[pg]
        iou = iou_pairs(d_boxes[pq], gt_boxes[gi], plus_one)
        ok = iou >= iou_thresh
        pd_all.append(pq[ok])
        pg_all.append(gi[ok])
        iou_all.append(iou[ok])
    pd = np.concatenate(pd_all) if pd_all else np.zeros(0, np.int64)
    pg = np.concatenate(pg_all) if pg_all else np.zeros(0, np.int64)
    iou = np.concatenate(iou_all) if iou_all else np.zeros(0)
    o = np.argsort(-iou, kind="stable")
    pd, pg = pd[o], pg[o]
    _, f = np.unique(pd, return_index=True)
    f = np.sort(f)
    pd, pg = pd[f], pg[f]
    _, f = np.unique(pg, return_index=True)
    pd, pg = pd[f], pg[f]

    mat = np.zeros((C + 1, C + 1), np.int64)
    real = ~gt_ignore[pg]
    np.add.at(mat, (d_lab[pd[real]], gt_labels[pg[real]]), 1)
    det_matched = np.zeros(len(d_lab), bool)
    det_matched[pd] = True
    np.add.at(mat, (d_lab[~det_matched], C), 1)
    gt_matched = np.zeros(len(gt_labels), bool)
    gt_matched[pg] = True
    missed = ~gt_matched & ~gt_ignore
    np.add.at(mat, (C, gt_labels[missed]), 1)
    return mat
