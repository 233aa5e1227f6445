"""Default boxes fitted to the data (``anchors=auto``): per source, the sizes (and, where that helps
measurably, the aspect ratios) that give as many training boxes as the sources allow a default box
at IoU >= 0.5, the SSD matching threshold (ORIGINAL.md §1.6). A box without one can only become a positive
through the bipartite step, with one poorly fitting default box.

Kept: the model's feature-map geometry (sources, steps, centres, offset). Chosen: each source's min
size and big square sqrt(min * max); in a second stage, only when the sizes alone miss the target,
the values of its aspect ratios; in a third, only when the target is still missed and the
``reachable`` bound says the grids allow more, one more aspect ratio (r and its flip 1/r, the
config's unit: two more default boxes per location) on the source where it gains most, refitted with
that source's sizes and ratios, and again on another source while the target is missed (at most one
per source, each kept only for the same measurable gain). The extra shapes change only that source's
head width: DSOD trains from scratch and builds its heads from
the config, so nothing trained is lost (chess pieces, ~2.2x taller than wide, need a second tall shape
on dsod-tiny's stride-8 source). Policy: a preset that already covers ``target`` of the boxes comes
back unchanged. Otherwise the search starts at the preset and covers as many boxes as it can,
preferring the smallest change from the preset (sum of |log| ratios) at equal coverage, so sources
the data does not need keep the preset's sizes. It does not stop at the target: the hand-made
dsod-tiny-bccd boxes cover 99.9% of BCCD, and a fit stopping at 99.0% would be worse than them.

Speed: for one default-box shape, the IoU with a box falls as the centres move apart in x or in y
(the intersection is a product of two 1-D overlaps), so of a source's grid only the centre nearest to
the box in x and in y can be its best default box. A candidate is therefore scored on N boxes x the
few shapes of one source, not on N x all default boxes; this is exact without ``clip`` (with it,
``coverage`` compares all pairs with torchvision's box_iou, and the tests check both agree).

Boxes are ``xyxy`` normalised by their image's width/height: the input is a square warp-resize, so
this is the box at the input.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torchvision.ops import box_iou

from ..config import AnchorConfig, ModelConfig
from ..geometry.anchors import default_boxes, resolve_aspect_ratios, source_centres, source_sizes
from ..geometry.boxes import cxcywh_to_xyxy
from .factory import feature_sizes

IOU_THRESHOLD = 0.5  # ORIGINAL.md §1.6
MAX_BOXES = 10_000  # the search runs on a seeded subsample of more boxes (~1-4 s per 10k on one core)
_DT = torch.float32  # the default boxes' and box_iou's precision
# Candidates per parameter: coarse steps of 2^(1/4) over x0.25 .. x4, then 2^(1/16) around the pick;
# jointly with the min size, 7 x 7 steps of 2^(1/8). Several sweeps go further than one step set.
_COARSE = torch.tensor([2.0 ** (k / 4) for k in range(-8, 9)], dtype=_DT)
_FINE = torch.tensor([2.0 ** (k / 16) for k in range(-3, 4)], dtype=_DT)
_PAIR = torch.tensor([2.0 ** (k / 8) for k in range(-3, 4)], dtype=_DT)
_SWEEPS = 8
_NEW = torch.tensor([2.0 ** (k / 16) for k in range(1, 49)], dtype=_DT)  # an added ratio's first values
# Aspect ratios are fitted only when they add at least this much coverage (else the preset's stay):
# the sizes are the fit; ratio changes are for data whose shapes the preset's ratios miss.
_RATIO_GAIN = 0.002


@dataclass(frozen=True)
class AnchorFit:
    """What ``fit_anchors`` found; ``describe()`` is the line to print, ``as_dict()`` what to store."""

    anchors: AnchorConfig  # use as ``cfg.replace(anchors=fit.anchors)``
    before: float  # share of boxes with a default box at IoU >= 0.5, the preset's default boxes
    after: float  # the same with ``anchors``
    # upper bound: a default box of any shape at each source's centre nearest the box (the sources'
    # grids allow it; their few shapes per location may not)
    reachable: float
    target: float
    boxes: int  # boxes measured
    changed: bool  # False: the preset already reached the target (``anchors`` is the preset's)
    # sources (0-based) given one more aspect ratio by the third stage: 2 more default boxes per location
    added: Tuple[int, ...] = ()

    def describe(self) -> str:
        if not self.changed:
            return (f"default boxes: the preset's already give {100 * self.after:.1f}% of {self.boxes} "
                    f"training boxes a default box at IoU >= {IOU_THRESHOLD} (kept)")
        short = (f" (target {100 * self.target:g}% missed; default boxes of any shape at these centres would "
                 f"reach {100 * self.reachable:.1f}%)" if self.after < self.target else "")
        # 1-based, as a person counts the sources
        on = ", ".join(str(s + 1) for s in self.added)
        more = (f"; +1 shape (aspect ratio r and 1/r: 2 more default boxes per location) on "
                f"source{'s' * (len(self.added) > 1)} {on}" if self.added else "")
        return (f"default boxes fitted to the data: {100 * self.before:.1f}% -> {100 * self.after:.1f}% of "
                f"{self.boxes} training boxes have a default box at IoU >= {IOU_THRESHOLD}{short}{more} "
                f"(anchors=preset keeps the preset's)")

    def as_dict(self) -> Dict[str, object]:
        """Plain types, for the checkpoint (``anchors`` is also in the model config it trains)."""
        return dataclasses.asdict(self)


def coverage(cfg: ModelConfig, boxes: torch.Tensor) -> float:
    """Share of ``boxes`` ((N, 4) xyxy normalised) with a default box of ``cfg`` at IoU >= 0.5."""
    boxes = _valid(boxes)
    if len(boxes) == 0:
        return 1.0
    fsizes = feature_sizes(cfg)
    if cfg.anchors.clip:  # clipped border boxes break the nearest-centre argument: all pairs
        anchors = cxcywh_to_xyxy(default_boxes(cfg.anchors, cfg.image_size, fsizes))
        # chunks bound the (chunk x anchors) IoU matrix (~70 MB at 8744 default boxes)
        hit = sum(int((box_iou(c, anchors).amax(dim=1) >= IOU_THRESHOLD).sum()) for c in boxes.split(2048))
        return hit / len(boxes)
    return _Geometry(cfg, boxes, fsizes).coverage(_params(cfg.anchors, cfg.image_size, len(fsizes)))


def fit_anchors(cfg: ModelConfig, boxes: torch.Tensor, target: float = 0.99) -> AnchorFit:
    """Fit ``cfg``'s default boxes to ``boxes`` (all training boxes, (N, 4) xyxy normalised)."""
    boxes = _valid(boxes)
    fsizes = feature_sizes(cfg)
    n = len(fsizes)
    start = _params(cfg.anchors, cfg.image_size, n)
    full = _Geometry(cfg, boxes, fsizes)
    before = full.coverage(start)
    reachable = full.reachable()
    if before >= target or len(boxes) == 0:
        return AnchorFit(cfg.anchors, before, before, reachable, target, len(boxes), changed=False)
    # the search scores thousands of candidates: on a seeded subsample (before/after use all boxes)
    g = _Geometry(cfg, _subsample(boxes), fsizes) if len(boxes) > MAX_BOXES else full
    reach = g.reach()
    # rounded as stored (percent, 2 decimals), so what is scored is what is saved
    start = [[round(v, 4) for v in p[:2]] + p[2:] for p in start]
    params, cov = _search(start, start, g, reach, fit_ratios=())
    everywhere = tuple(range(n))
    fit_ratios: Tuple[int, ...] = ()  # sources whose ratio values the fit may move
    if cov < target:  # second stage: the ratio values too, kept only for a measurable gain
        p2, cov2 = _search(params, start, g, reach, fit_ratios=everywhere)
        if cov2 >= cov + _RATIO_GAIN:
            params, cov, fit_ratios = p2, cov2, everywhere
    # third stage: one more shape where the grids allow more than the shapes do (``reach`` on the
    # boxes searched), kept only for a measurable gain; its change is counted from its first value
    added: List[int] = []
    base = [list(p) for p in start]
    while cov < target and len(added) < n and float(reach.any(0).float().mean()) > cov:
        s, r = _new_ratio(params, g, reach, added)
        trial = [p + [r] if k == s else p for k, p in enumerate(params)]
        base3 = [p + [r] if k == s else p for k, p in enumerate(base)]
        p3, cov3 = _search(trial, base3, g, reach, fit_ratios=tuple(sorted({*fit_ratios, s})))
        if cov3 < cov + _RATIO_GAIN:
            break
        params, cov, base = p3, cov3, base3
        added.append(s)
        fit_ratios = tuple(sorted({*fit_ratios, s}))
    ratios = tuple(tuple(round(float(r), 2) for r in p[2:]) for p in params)
    mins, maxs = source_sizes(cfg.anchors, cfg.image_size, n)
    # a source the fit did not move keeps the preset's exact sizes (not re-derived from the rounding)
    keep = [p[:2] == p0[:2] for p, p0 in zip(params, start)]
    fitted = dataclasses.replace(
        cfg.anchors,
        min_sizes=tuple(round(100 * mn / cfg.image_size, 4) if k else round(100 * p[0], 2)
                        for p, k, mn in zip(params, keep, mins)),
        max_sizes=tuple(round(100 * mx / cfg.image_size, 4) if k else round(100 * p[1] ** 2 / p[0], 2)
                        for p, k, mx in zip(params, keep, maxs)),
        # unchanged ratios stay as the preset wrote them (None = the default pattern)
        aspect_ratios=cfg.anchors.aspect_ratios if ratios == resolve_aspect_ratios(cfg.anchors, n) else ratios)
    # measured from the stored config (max = big^2 / min is rounded again), on all boxes
    after = full.coverage(_params(fitted, cfg.image_size, n))
    return AnchorFit(fitted, before, after, reachable, target, len(boxes), changed=True, added=tuple(added))


# ----------------------------------------------------------------------------------------- internals
def _valid(boxes: torch.Tensor) -> torch.Tensor:
    boxes = torch.as_tensor(boxes, dtype=_DT).reshape(-1, 4)
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]  # degenerate boxes match nothing


def _subsample(boxes: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)  # seeded: the same data always gives the same fit
    return boxes[torch.randperm(len(boxes), generator=g)[:MAX_BOXES].sort().values]


def _params(a: AnchorConfig, image_size: int, n: int) -> List[List[float]]:
    """Per source [min, big square sqrt(min * max), r_1, r_2, ...], sizes normalised by the input."""
    mins, maxs = source_sizes(a, image_size, n)
    return [[mn / image_size, math.sqrt(mn * mx) / image_size, *rs]
            for mn, mx, rs in zip(mins, maxs, resolve_aspect_ratios(a, n))]


class _Geometry:
    """Boxes' sizes (N, 2) and, per source, |centre offset| (S, N, 2) to its nearest grid centre."""

    def __init__(self, cfg: ModelConfig, boxes: torch.Tensor, fsizes):
        c = (boxes[:, :2] + boxes[:, 2:]) / 2
        self.wh = boxes[:, 2:] - boxes[:, :2]
        offs = []
        for cx, cy in source_centres(cfg.anchors, cfg.image_size, fsizes):
            # grids are at most ~100 wide: (N, W) is small
            offs.append(torch.stack([(c[:, 0:1] - cx.to(_DT)).abs().amin(1),
                                     (c[:, 1:2] - cy.to(_DT)).abs().amin(1)], 1))
        self.offs = torch.stack(offs)

    def covered(self, params: List[List[float]]) -> torch.Tensor:
        """(S, N): has each box a default box of each source at IoU >= 0.5?"""
        return torch.stack([_covers(self.wh, self.offs[s], _shapes(torch.tensor(p, dtype=_DT)))
                            for s, p in enumerate(params)])

    def coverage(self, params: List[List[float]]) -> float:
        return int(self.covered(params).any(0).sum()) / len(self.wh) if len(self.wh) else 1.0

    def reach(self) -> torch.Tensor:
        """(S, N): can any shape of default box at this source's nearest centre cover the box?

        Per axis the overlap is piecewise linear in the default box's side a (a while inside the box,
        then (b + a)/2 - d, then b) and the IoU is monotone on each piece, so the best side is b - 2d
        or b + 2d: four candidate shapes per box and source give the exact answer."""
        signs = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]], dtype=_DT)[:, None]
        out = [_iou(self.wh, d, (self.wh + signs * d).clamp(min=1e-6)).amax(0) >= IOU_THRESHOLD - 1e-6
               for d in self.offs]
        return torch.stack(out)

    def reachable(self) -> float:
        return int(self.reach().any(0).sum()) / len(self.wh) if len(self.wh) else 1.0


def _inter(b: torch.Tensor, d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Intersection of a box of size ``b`` with one of size ``a`` whose centre is ``d`` >= 0 away (all
    (..., 2), broadcast). Per axis, centred intervals overlap by min(b/2 + a/2 - d, b, a), clamped at 0."""
    ov = torch.minimum(torch.minimum(b / 2 - d + a / 2, b), a).clamp(min=0)
    return ov[..., 0] * ov[..., 1]


def _iou(b: torch.Tensor, d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    inter = _inter(b, d, a)
    return inter / (b[..., 0] * b[..., 1] + a[..., 0] * a[..., 1] - inter)


def _covers(wh: torch.Tensor, d: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """(..., N): does any of ``shapes`` (..., K, 2) cover each box (N, 2) at offset ``d`` (N, 2)?
    IoU >= 1/2 <=> 3 * inter >= area_a + area_b: no division in the hot loop."""
    inter = _inter(wh[:, None, :], d[:, None, :], shapes[..., None, :, :])  # (..., N, K)
    area = (wh[:, 0] * wh[:, 1])[:, None] + (shapes[..., 0] * shapes[..., 1])[..., None, :]
    return (3 * inter >= area).any(-1)


def _shapes(p: torch.Tensor) -> torch.Tensor:
    """(..., K, 2) shapes from parameters (..., P) = [min, big, r_1, ...] (``anchors.shapes_wh``)."""
    m, big, r = p[..., 0:1], p[..., 1:2], p[..., 2:].sqrt()
    sq = torch.stack([torch.cat([m, big], -1)] * 2, -1)  # (..., 2, 2)
    wide = torch.stack([m * r, m / r], -1)  # (..., R, 2)
    tall = wide.flip(-1)
    rect = torch.stack([wide, tall], -2).flatten(-3, -2)  # r, 1/r, r_2, 1/r_2 ...
    return torch.cat([sq, rect], -2)


def _candidates(p: List[float], j: int, factors: torch.Tensor) -> torch.Tensor:
    """Valid, rounded values of parameter j of one source around its current value."""
    vals = p[j] * factors
    if j < 2:  # sizes: percent with 2 decimals, as stored
        vals = (vals * 1e4).round() / 1e4
        return vals[(vals >= 1e-3) & (vals <= 1.5)]
    vals = (vals * 100).round() / 100  # aspect ratios r >= 1 (the flip gives 1/r)
    return vals[(vals >= 1.0) & (vals <= 8.0)]


def _move(p: List[float], j: int, k: int, factors: torch.Tensor) -> torch.Tensor:
    """Candidate parameter vectors (C, P) of one source: parameter j alone (k < 0) or jointly with k."""
    a = _candidates(p, j, factors)
    b = _candidates(p, k, factors) if k >= 0 else torch.tensor([p[0]], dtype=_DT)
    c = torch.tensor(p, dtype=_DT).repeat(len(a) * len(b), 1)
    c[:, j] = a.repeat_interleave(len(b))
    if k >= 0:
        c[:, k] = b.repeat(len(a))
    return c[c[:, 1] >= c[:, 0]]  # max >= min, as Caffe's PriorBox requires


def _move_plan(num_params: int) -> List[Tuple[int, int, torch.Tensor]]:
    """Each parameter alone (coarse, then fine around the pick), then the min size jointly with each
    other parameter: the min square, the big square sqrt(min * max) and the ratio boxes
    min * sqrt(r) all scale with min, so one at a time gets stuck where both must move."""
    plan = [(j, -1, f) for j in range(num_params) for f in (_COARSE, _FINE)]
    return plan + [(0, j, _PAIR) for j in range(1, num_params)]


def _hits(wh: torch.Tensor, d: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(C,): boxes (N, 2) at offsets ``d`` covered by each candidate source (C, P); chunks bound C x N x K."""
    return torch.cat([_covers(wh, d, _shapes(c)).sum(-1) for c in cand.split(256)])


def _free(covered: torch.Tensor, reach: torch.Tensor, s: int) -> Tuple[torch.Tensor, int]:
    """Indices of the boxes no other source covers and source s can reach (only these can change),
    and how many the other sources cover."""
    other = torch.cat([covered[:s], covered[s + 1:]]).any(0)
    return (~other & reach[s]).nonzero().squeeze(1), int(other.sum())


def _new_ratio(params: List[List[float]], g: _Geometry, reach: torch.Tensor,
               added: List[int]) -> Tuple[int, float]:
    """The source (not in ``added``) and extra ratio value (r >= 1 at 2^(1/16) steps up to 8, flip
    included) that cover the most boxes, all other shapes as they are; ties: the first source, the
    squarest ratio. The search after it refines the value with the source's sizes."""
    covered = g.covered(params)
    r = torch.unique(_candidates([0.0, 0.0, 1.0], 2, _NEW))  # rounded and bounded as stored
    best = (-1, 0, 0.0)
    for s, p in enumerate(params):
        if s in added:
            continue
        idx, base = _free(covered, reach, s)
        cand = torch.cat([torch.tensor(p, dtype=_DT).repeat(len(r), 1), r[:, None]], 1)
        hits = base + _hits(g.wh[idx], g.offs[s][idx], cand)
        i = int(hits.argmax())
        if int(hits[i]) > best[0]:
            best = (int(hits[i]), s, float(r[i]))
    return best[1], best[2]


def _search(params: List[List[float]], start: List[List[float]], g: _Geometry, reach: torch.Tensor,
            fit_ratios: Tuple[int, ...]) -> Tuple[List[List[float]], float]:
    """Coordinate descent over the sources, one move at a time, every candidate scored at once.
    Score: boxes covered, then the smallest change from ``start`` (sum of |log| ratios); a move must
    beat the current score strictly (no cycling). Only the boxes that no other source covers and that
    this source can reach (``reach``, (S, N)) are counted: for the rest a candidate changes nothing.
    Sizes move on every source, ratio values only on the sources in ``fit_ratios``."""
    params = [list(p) for p in params]
    log0 = [torch.tensor(p0, dtype=torch.float64).log() for p0 in start]

    def change(s: int, cand: torch.Tensor) -> torch.Tensor:  # (C,): total change with source s = cand
        rest = sum(float((torch.tensor(p, dtype=torch.float64).log() - l0).abs().sum())
                   for k, (p, l0) in enumerate(zip(params, log0)) if k != s)
        return rest + (cand.double().log() - log0[s]).abs().sum(1)

    covered = g.covered(params)  # (S, N)
    cur = (int(covered.any(0).sum()), -float(change(0, torch.tensor([params[0]]))[0]))
    for _ in range(_SWEEPS):
        moved = False
        for s in range(len(params)):
            idx, base = _free(covered, reach, s)
            wh, d = g.wh[idx], g.offs[s][idx]
            for j, k, factors in _move_plan(len(params[s]) if s in fit_ratios else 2):
                cand = _move(params[s], j, k, factors)
                if len(cand) == 0:
                    continue
                hits = base + _hits(wh, d, cand)  # (C,)
                ch = change(s, cand)
                i = int(torch.where(hits == hits.max(), ch, torch.inf).argmin())  # most boxes, least change
                if (int(hits[i]), -float(ch[i])) > cur:
                    cur, moved = (int(hits[i]), -float(ch[i])), True
                    params[s] = [float(v) for v in cand[i]]
                    covered[s] = _covers(g.wh, g.offs[s], _shapes(cand[i]))
        if not moved:
            break
    return params, cur[0] / max(len(g.wh), 1)


def default_box_sets(cfg: ModelConfig, boxes=None, split: str = "train") -> List[tuple]:
    """What ``dsod data check`` compares: (label, input size, default boxes (A, 4) xyxy normalised,
    note) for the preset's boxes and, given the training ``boxes`` (normalised xyxy), for the boxes
    fitted to them as training fits them (``fit_anchors``); one entry when the fit keeps the preset's."""
    def entry(c: ModelConfig, label: str, note: str = "") -> tuple:
        return (label, c.image_size, cxcywh_to_xyxy(default_boxes(c.anchors, c.image_size, feature_sizes(c))), note)

    sets = [entry(cfg, f"{cfg.name} preset")]
    if boxes is None:
        return sets
    fit = fit_anchors(cfg, boxes)
    if not fit.changed:
        return [sets[0][:3] + (fit.describe(),)]
    a = fit.anchors
    sizes = (f"fitted min/max sizes (% of input): {', '.join(map(str, a.min_sizes))} / "
             f"{', '.join(map(str, a.max_sizes))}"
             + (f"; aspect ratios {list(map(list, a.aspect_ratios))}" if a.aspect_ratios else ""))
    return sets + [entry(cfg.replace(anchors=a), f"{cfg.name} fitted to {split}", f"{fit.describe()}\n  {sizes}")]
