"""Default-box matching of SSD's MultiBoxLoss (``PER_PREDICTION``, ORIGINAL.md §1.6).

1. Bipartite step: greedily take the highest-IoU (ground truth, default box) pair among those still
   unmatched, assign it, remove both, repeat until every ground truth has a box (or overlaps none).
   This is Caffe's ``MatchBBox`` (src/caffe/util/bbox_util.cpp, the ``while (gt_pool.size() > 0)``
   loop): when two ground truths want the same box, the one with the higher IoU gets it and the other
   takes its best remaining box (torchvision's SSDMatcher instead lets the later ground truth
   overwrite the earlier one). Ties go to the first pair in (ground truth, box) row-major order.
2. Per-prediction step: every still-unmatched default box whose best IoU is >= ``threshold`` takes
   that ground truth.

Everything stays on the tensors' device with no host synchronisation: the bipartite step runs a fixed
``num_gt`` rounds (a Python int from the shape) of argmax / gather / scatter, and a round after the
greedy search would have stopped changes nothing (``active`` is false). There is no ``.item()``,
``int(tensor)``, boolean-mask indexing or data-dependent ``if`` that would make a GPU wait for the
host once per ground truth. ``match_many`` does a whole batch in the same number of rounds.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

# Caffe's MatchBBox only records overlaps > 1e-6: a pair at or below this is never matched.
_MIN_OVERLAP = 1e-6


def match(iou: torch.Tensor, threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Args:
        iou: (num_gt, num_anchors) IoU between ground truths and default boxes.
    Returns:
        matched_gt: (num_anchors,) int64 index of the assigned ground truth, -1 for none.
        max_iou: (num_anchors,) best IoU of each default box with any ground truth (0 if none),
            used to keep negatives below ``neg_overlap``.
    """
    matched, max_iou = match_many([iou], threshold)
    return matched[0], max_iou[0]


def match_many(ious: Sequence[torch.Tensor], threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """``match`` for N images at once: ``ious[i]`` is image i's (G_i, A) matrix (G_i may differ
    and be 0). Returns ``matched_gt`` (N, A) and ``max_iou`` (N, A), row i equal to ``match(ious[i])``.
    The passes over a whole matrix run per image (no padding to the largest G_i); the greedy rounds
    run for the whole batch at once, max(G_i) of them."""
    n, num_anchors = len(ious), ious[0].shape[1]
    device = ious[0].device
    num_gt = max(len(iou) for iou in ious)  # Python ints from the shapes
    matched = torch.full((n, num_anchors), -1, dtype=torch.long, device=device)
    if num_gt == 0 or num_anchors == 0:
        return matched, ious[0].new_zeros(n, num_anchors)
    k = min(num_gt, num_anchors)
    maxes, bests, vals, idxs = [], [], [], []
    for iou in ious:
        g = iou.shape[0]
        if g == 0:  # no ground truth: best IoU 0 and best_gt -1, which the per-prediction step keeps
            maxes.append(iou.new_zeros(num_anchors))
            bests.append(torch.full((num_anchors,), -1, dtype=torch.long, device=device))
            vals.append(iou.new_full((num_gt, k), -1.0))
            idxs.append(torch.zeros(num_gt, k, dtype=torch.long, device=device))
            continue
        m, b = iou.max(dim=0)
        maxes.append(m)
        bests.append(b)
        # this image's own candidate lists (see below), padded with never-matched -1 entries
        v, i = _top_candidates(iou, min(g, num_anchors))
        pad = (0, k - v.shape[1], 0, num_gt - g)
        vals.append(F.pad(v, pad, value=-1.0))
        idxs.append(F.pad(i, pad, value=0))
    max_iou, best_gt = torch.stack(maxes), torch.stack(bests)
    cand_val, cand_idx = torch.stack(vals), torch.stack(idxs)

    # Greedy rounds on a short candidate list per ground truth: its first min(G_i, A) boxes in (IoU
    # descending, box index ascending) order. Each round removes one box, so before a ground truth
    # is matched at most G_i - 1 of its image's boxes are gone, and its best remaining box (ties: the
    # lowest index) is always in its list: the rounds see exactly what an argmax over the whole
    # (G_i, A) matrix would (Caffe's scan over all pairs), at G_i / A of the cost.
    flat_val, flat_idx = cand_val.view(n, num_gt * k), cand_idx.view(n, num_gt * k)
    active = torch.ones(n, dtype=torch.bool, device=device)
    for _ in range(num_gt):  # the most rounds Caffe's loop can take: one ground truth leaves per round
        j = flat_val.argmax(dim=1, keepdim=True)  # first maximum: lowest ground truth, then lowest box
        best = flat_val.gather(1, j)
        # Caffe stops when no pair > 1e-6 is left; written as "not <=" so that a NaN IoU is taken
        # as the previous `if work[g, a] <= 1e-6: break` took it.
        active = active & ~(best.squeeze(1) <= _MIN_OVERLAP)
        g, a = j // k, flat_idx.gather(1, j)
        matched.scatter_(1, a, torch.where(active[:, None], g, matched.gather(1, a)))
        # remove ground truth g and box a (harmless once inactive: nothing is written any more)
        cand_val.scatter_(1, g[:, :, None].expand(n, 1, k), -1.0)
        cand_val.masked_fill_(cand_idx == a[:, :, None], -1.0)

    # Per-prediction step.
    extra = (matched < 0) & (max_iou >= threshold)
    return torch.where(extra, best_gt, matched), max_iou


def _top_candidates(work: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` boxes of each row of ``work`` (G, A) in (value descending, index ascending)
    order, NaN first as in argmax: values (G, k) and box indices (G, k).

    ``topk`` alone does not say which of several equal values it keeps, so for float32/16 the rank
    key is made unique: the float's bits (ordered as integers for values >= 0; a negative IoU sorts
    below them, and at or below 1e-6 it is never matched anyway) above the reversed box index."""
    num_anchors = work.shape[-1]
    if work.dtype in (torch.float32, torch.float16, torch.bfloat16):
        as_int = torch.int32 if work.dtype == torch.float32 else torch.int16
        bits = work.nan_to_num(nan=float("inf"), posinf=float("inf")).contiguous().view(as_int).long()
        reversed_index = torch.arange(num_anchors - 1, -1, -1, device=work.device)
        idx = torch.add(reversed_index, bits, alpha=1 << 32).topk(k, dim=-1).indices
    else:  # float64: a stable full sort (slower, same order)
        idx = work.sort(dim=-1, descending=True, stable=True).indices[..., :k].contiguous()
    return work.gather(-1, idx).contiguous(), idx
