"""Default (prior) boxes with SSD ``PriorBox`` semantics (ORIGINAL.md §1.5).

Derived from the feature-map sizes the network actually produces (see ``model.factory``), never from
a hand-kept list. Order: source, row, column, then per location
[min x min, sqrt(min*max) square, ratio r_1, 1/r_1, r_2, 1/r_2, ...]; a box of ratio r has width
min*sqrt(r) and height min/sqrt(r). Centres at ((j + offset) * step, (i + offset) * step).
Sizes: SSD's rule from two ratios (``ssd_sizes``), or explicit per-source ``min_sizes``/``max_sizes``
(what ``model.anchor_fit`` writes when it fits the default boxes to a dataset).

Reproduced quirk of the released DSOD300 code: its 2x2 last map keeps SSD's step of 300 px, so the
centres sit at 150 and 450 px and three of its four locations lie outside the image (normalised 1.5).
With clip=False those boxes essentially never match. This is why the code has 8744 default boxes
rather than SSD300's 8732 (a 1x1 last map).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from ..config import AnchorConfig


def ssd_sizes(image_size: int, num_sources: int, size_ratios: Tuple[int, int],
              first_sizes: Tuple[float, float]) -> Tuple[List[float], List[float]]:
    """Min/max box sizes in pixels by the rule of SSD's ``ssd_pascal.py`` (ORIGINAL.md §1.5).

    For 300 px and 6 sources: min 30, 60, 111, 162, 213, 264; max 60, 111, 162, 213, 264, 315.
    """
    min_ratio, max_ratio = size_ratios
    if num_sources < 3:
        raise ValueError("the SSD size rule needs at least 3 sources")
    step = int(math.floor((max_ratio - min_ratio) / (num_sources - 2)))
    min_sizes = [image_size * first_sizes[0] / 100.0]
    max_sizes = [image_size * first_sizes[1] / 100.0]
    for ratio in range(min_ratio, max_ratio + 1, step):
        min_sizes.append(image_size * ratio / 100.0)
        max_sizes.append(image_size * (ratio + step) / 100.0)
    return min_sizes[:num_sources], max_sizes[:num_sources]


def default_aspect_ratios(num_sources: int) -> Tuple[Tuple[float, ...], ...]:
    """[2] on the first and last two sources, [2, 3] in between: DSOD300/SSD300 for 6 sources and
    SSD512 for 7."""
    return tuple((2.0,) if (i == 0 or i >= num_sources - 2) else (2.0, 3.0) for i in range(num_sources))


def anchors_per_location(aspect_ratios: Sequence[Sequence[float]]) -> List[int]:
    """2 squares (min, sqrt(min*max)) + 2 per aspect ratio (r and its flip 1/r)."""
    return [2 + 2 * len(ars) for ars in aspect_ratios]


def resolve_aspect_ratios(cfg: AnchorConfig, num_sources: int) -> Tuple[Tuple[float, ...], ...]:
    ars = cfg.aspect_ratios if cfg.aspect_ratios is not None else default_aspect_ratios(num_sources)
    if len(ars) != num_sources:
        raise ValueError(f"anchors.aspect_ratios has {len(ars)} entries for {num_sources} sources")
    return tuple(tuple(float(r) for r in a) for a in ars)


def source_sizes(cfg: AnchorConfig, image_size: int, num_sources: int) -> Tuple[List[float], List[float]]:
    """Min/max sizes in pixels per source: the explicit ``min_sizes``/``max_sizes`` (percent, set by a
    fit to the data) where given, else SSD's rule."""
    if (cfg.min_sizes is None) != (cfg.max_sizes is None):
        raise ValueError("anchors.min_sizes and anchors.max_sizes go together")
    if cfg.min_sizes is None:
        return ssd_sizes(image_size, num_sources, cfg.size_ratios, cfg.first_sizes)
    if len(cfg.min_sizes) != num_sources or len(cfg.max_sizes) != num_sources:
        raise ValueError(f"anchors.min_sizes/max_sizes have {len(cfg.min_sizes)}/{len(cfg.max_sizes)} entries "
                         f"for {num_sources} sources")
    return ([image_size * float(v) / 100.0 for v in cfg.min_sizes],
            [image_size * float(v) / 100.0 for v in cfg.max_sizes])


def shapes_wh(min_size: float, max_size: float, ratios: Sequence[float]) -> List[Tuple[float, float]]:
    """The (w, h) of one location's default boxes, in the per-location order of the module docstring."""
    big = math.sqrt(min_size * max_size)
    wh = [(min_size, min_size), (big, big)]
    for r in ratios:
        wh.append((min_size * math.sqrt(r), min_size / math.sqrt(r)))
        wh.append((min_size / math.sqrt(r), min_size * math.sqrt(r)))
    return wh


def source_centres(cfg: AnchorConfig, image_size: int, feature_sizes: Sequence[Tuple[int, int]]
                   ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per source, the x and y centre coordinates (1-D, float64, normalised) of its location grid."""
    steps: Optional[Sequence[float]] = cfg.steps
    if steps is not None and len(steps) != len(feature_sizes):
        raise ValueError(f"anchors.steps has {len(steps)} entries for {len(feature_sizes)} sources")
    out = []
    for s, (fh, fw) in enumerate(feature_sizes):
        step_y = steps[s] if steps is not None else image_size / fh
        step_x = steps[s] if steps is not None else image_size / fw
        cx = (torch.arange(fw, dtype=torch.float64) + cfg.offset) * step_x / image_size
        cy = (torch.arange(fh, dtype=torch.float64) + cfg.offset) * step_y / image_size
        out.append((cx, cy))
    return out


def default_boxes(cfg: AnchorConfig, image_size: int, feature_sizes: Sequence[Tuple[int, int]],
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All default boxes, ``cxcywh`` normalised by the image size, shape (num_anchors, 4)."""
    n = len(feature_sizes)
    min_sizes, max_sizes = source_sizes(cfg, image_size, n)
    ratios = resolve_aspect_ratios(cfg, n)
    out = []
    for s, (cx, cy) in enumerate(source_centres(cfg, image_size, feature_sizes)):
        wh = shapes_wh(min_sizes[s], max_sizes[s], ratios[s])
        wh_t = torch.tensor(wh, dtype=torch.float64) / image_size  # (a, 2)
        cyy, cxx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([cxx, cyy], dim=-1).reshape(-1, 1, 2).expand(-1, len(wh), 2)
        boxes = torch.cat([centres, wh_t.expand(len(cx) * len(cy), -1, -1)], dim=-1).reshape(-1, 4)
        out.append(boxes)
    boxes = torch.cat(out)
    if cfg.clip:  # clip the corner form to [0, 1] as SSD's PriorBox does when clip=true
        x1y1 = (boxes[:, :2] - boxes[:, 2:] / 2).clamp(0, 1)
        x2y2 = (boxes[:, :2] + boxes[:, 2:] / 2).clamp(0, 1)
        boxes = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], dim=1)
    return boxes.to(dtype)
