"""Sliced inference for big images (``dsod predict slice=``, ``dsod val slice=``), SAHI's idea: the image
is cut into overlapping tiles, each tile and the whole image go through the network in one batch (at
the model's input size), and the detections, shifted back to image pixels, are merged by class-wise
NMS (torchvision's ``batched_nms``) and cut to ``max_det``.

Why: the network sees every image warp-resized to its input (300 px for dsod-tiny); an object that is
20 px in a 4000-px photo becomes 1.5 px. A tile of the size the model was trained on shows it at the
scale it learned. ``slice=auto`` decides from the sizes the checkpoint records of its training images
(``train_geometry``): images at least ``AUTO_RATIO`` x larger (linear) than those are cut into tiles of
the training images' size with ``OVERLAP``; others run whole. The decision is one line.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

AUTO_RATIO = 1.5  # slice=auto tiles images this much larger (linear) than the training images
OVERLAP = 0.2  # of the tile side, between neighbouring tiles
MAX_TILES = 64  # per image: a bound on one image's batch


def train_geometry(records: Sequence[Any]) -> Optional[Dict[str, float]]:
    """What ``slice=auto`` needs of a training set, stored in its checkpoints: the median image size
    (pixels) and the median object side as a fraction of the image side."""
    sizes = np.array([(r.width, r.height) for r in records], dtype=np.float64)
    if not len(sizes):
        return None
    boxes = [(r.boxes[:, 2:] - r.boxes[:, :2]) / np.array([r.width, r.height]) for r in records if len(r.boxes)]
    sides = np.sqrt(np.prod(np.concatenate(boxes), axis=1)) if boxes else np.zeros(0)
    return {"image_width": float(np.median(sizes[:, 0])), "image_height": float(np.median(sizes[:, 1])),
            "object_side": float(np.median(sides)) if len(sides) else float("nan")}


def tile_grid(height: int, width: int, tile: int, overlap: float = OVERLAP) -> List[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) tiles of ``tile`` px (smaller where the image is) covering the image, neighbours
    overlapping by ``overlap`` of the side, the last row and column flush with the border."""
    def starts(extent: int) -> List[int]:
        if extent <= tile:
            return [0]
        stride = max(1, int(tile * (1 - overlap)))
        n = math.ceil((extent - tile) / stride) + 1
        return sorted({min(i * stride, extent - tile) for i in range(n)})
    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def decide_tile(slice_key: str, image_hw: Tuple[int, int], geometry: Optional[Dict[str, float]]
                ) -> Tuple[Optional[int], str]:
    """(tile size or None for the whole image, the line that says why) for ``slice=`` auto | false | N."""
    key = str(slice_key).strip().lower()
    if key in ("false", "no", "off", "0", "none"):
        return None, "slice=false: whole images"
    if key not in ("auto", "true"):
        try:
            tile = int(key)
        except ValueError:
            raise ValueError("use auto, false or a tile size in pixels") from None
        if tile < 32:
            raise ValueError("tiles must be at least 32 px")
        return tile, f"slice={tile}: {tile}-px tiles, {OVERLAP:.0%} overlap, plus the whole image"
    if not geometry:
        return None, "slice=auto: whole images (the checkpoint records no training image sizes; slice=N tiles)"
    h, w = image_hw
    side = math.sqrt(geometry["image_width"] * geometry["image_height"])
    ratio = math.sqrt(h * w) / side
    if ratio < AUTO_RATIO:
        return None, (f"slice=auto: whole images ({w}x{h} is {ratio:.1f}x the training images' "
                      f"{geometry['image_width']:.0f}x{geometry['image_height']:.0f}; slice=N tiles)")
    tile = int(round(side))
    return tile, (f"slice=auto: {w}x{h} is {ratio:.1f}x the training images' {geometry['image_width']:.0f}x"
                  f"{geometry['image_height']:.0f}: {tile}-px tiles, {OVERLAP:.0%} overlap, plus the whole "
                  f"image (slice=false: whole images)")


def detect_sliced(runner, postprocessor, rgb: np.ndarray, image_size: int, tile: int,
                  overlap: float = OVERLAP) -> Dict[str, torch.Tensor]:
    """One image (RGB uint8 HWC) through the whole-image pass and its tiles in one batch; detections in
    image pixels, merged by class-wise NMS at the post-processor's IoU, the best ``detections_per_img``."""
    from torchvision.ops import batched_nms

    from ..data.preprocess import preprocess

    h, w = rgb.shape[:2]
    tiles = [(0, 0, w, h)] + [t for t in tile_grid(h, w, tile, overlap) if t != (0, 0, w, h)][:MAX_TILES]
    crops = [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in tiles]
    x = torch.stack([preprocess(np.require(c, requirements=["C", "W"]), image_size) for c in crops])
    found = postprocessor.select(*runner(x), [c.shape[:2] for c in crops])
    boxes = torch.cat([f["boxes"] + torch.tensor([x0, y0, x0, y0], dtype=f["boxes"].dtype)
                       for f, (x0, y0, _, _) in zip(found, tiles)])
    scores = torch.cat([f["scores"] for f in found])
    labels = torch.cat([f["labels"] for f in found])
    keep = batched_nms(boxes.float(), scores.float(), labels, postprocessor.nms_thresh)
    keep = keep[: postprocessor.detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def sliced_detector(runner, postprocessor, image_size: int, slice_key: str, geometry, log=print):
    """The detector ``metrics.loop.evaluate`` takes, over ``data.raw_loader`` batches (original pixels):
    each image sliced as ``decide_tile`` says (said once per distinct image size)."""
    said = set()

    def detect(images, sizes) -> List[Dict[str, torch.Tensor]]:
        out = []
        for img, hw in zip(images, sizes):
            rgb = img.permute(1, 2, 0).numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            tile, why = decide_tile(slice_key, tuple(hw), geometry)
            if why not in said:
                said.add(why)
                log(why)
            if tile is None:
                x = torch.stack([_preprocess(rgb, image_size)])
                out += postprocessor.select(*runner(x), [tuple(hw)])
            else:
                out.append(detect_sliced(runner, postprocessor, rgb, image_size, tile))
        return out
    return detect


def _preprocess(rgb: np.ndarray, size: int) -> torch.Tensor:
    from ..data.preprocess import preprocess

    return preprocess(np.require(rgb, requirements=["C", "W"]), size)
