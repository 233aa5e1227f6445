"""The SSD/DSOD training augmentation (ORIGINAL.md §1.8) computed the fast way: geometry on box coordinates,
pixels rendered once, at the network's input size (data loading is never the
bottleneck).

``transforms.reference_train_transform`` runs SSD Caffe's order step by step on full-size pixels:
distort the whole image, paste it into a canvas up to 4x4 as large (zoom-out), crop, warp-resize to
S x S, mirror. On a 2048x1371 photo that is ~300 ms of photometric distortion on 2.8 MP (up to 45 MP
of canvas after a 4x zoom-out) to keep a 300x300 crop of it. ``SSDAugment`` gives the same sample up
to resampling:

1. ``plan`` draws every random number *in the reference's order*, with the reference's own
   ``make_params`` (distortion, zoom-out, batch-sampler crop, interpolation choice, mirror), and
   moves the boxes with the reference's own kernels (pad, crop + centre rule, sanitize, resize,
   flip) on the record's coordinates. A seed therefore gives the reference's geometry and boxes
   exactly (``tests/test_data_speed.py``).
2. ``decode_size`` says how few source pixels that geometry needs: the crop window (canvas pixels ==
   original image pixels, since zoom-out only pads) is warped onto S pixels, so a source decoded at
   ``ceil(W * S / crop_w)`` wide (and the same for the height) still has at least one pixel per
   output pixel. ``images.load_image(min_size=...)`` then decodes JPEGs at the smallest DCT scale
   (1/2, 1/4, 1/8) that keeps that size: never fewer pixels than the reference resamples from, where
   it downsamples; the full image where it upsamples (a crop smaller than S). The DCT scaling
   averages the pixels it drops, so it also acts as an antialiasing prefilter: with the three
   non-antialiased interpolations of the "ssd" draw (nearest, bilinear, bicubic: OpenCV's
   ``INTER_*`` in Caffe) the reference point-samples a large photo and aliases, this much less
   (mean |difference| ~4 levels on a whole 2048x1371 chess photo); ``reduced_decode=False``
   decodes at full size and matches the reference there, at a lower speed on large photos.
3. ``render`` cuts the part of the image that lies in the crop window (integer canvas pixels, mapped
   to the decoded image), resizes it straight to the output pixels it covers, and only then applies
   the photometric distortion: every step of Caffe's ``DistortImage`` (brightness delta, contrast x,
   saturation and hue) is a per-pixel map, so it commutes with the geometric steps up to resampling
   and 8-bit rounding, and costs (S x S) / (crop area) of the reference's time. The zoom-out canvas is
   the pixel mean filled *after* distortion (SSD Caffe's ``AnnotatedDataLayer::load_batch``,
   src/caffe/layers/annotated_data_layer.cpp, calls ``DistortImage`` and then ``ExpandImage`` on the
   distorted datum, so its fill is never distorted): the output outside the pasted image region is
   exactly the mean, i.e. exactly 0 in the network input.

What differs from the reference, all resampling: the source is the DCT-scaled decode (an area
average, like ``INTER_AREA``) rather than full pixels; the image/fill boundary is rounded to whole
output pixels (<= 0.5 px) and not blended; the crop region is mapped to the decoded grid to the
nearest pixel (<= 0.5 source px, so <= 0.5 output px).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from .steps import (
    PIXEL_MEAN_RGB,
    RESIZE_CHOICES,
    SSDBatchSamplerCrop,
    SSDPhotometricDistort,
    ToNetworkInput,
    size_hw,
    target_tensors,
)


class SSDAugment:
    """Training augmentation "ssd" (Caffe's recipe) or "light" (``transforms.train_transform``) to a
    ``size`` (int or (h, w)) input, in three phases: ``plan(target)`` (all randomness, boxes),
    ``decode_size(plan)`` (the (w, h) the source must keep), ``render(image, plan)`` (pixels).
    ``DetectionDataset`` runs them around its (reduced-size) decode; calling the object on
    ``(image, target)`` runs all three on the given full-size image, like any v2 transform.

    The target's boxes are ``tv_tensors.BoundingBoxes`` whose ``canvas_size`` is the image's size in
    the coordinates of the boxes (the record's); the image handed to ``render`` may be any scaling of
    it (a draft decode): the crop window is mapped by the ratio of the two sizes."""

    def __init__(self, size=300, mode: str = "ssd", flipud: float = 0.0, reduced_decode: bool = True):
        if mode not in ("ssd", "light"):
            raise ValueError(f"SSDAugment: mode must be 'ssd' or 'light', got {mode!r}")
        self.hw, self.mode, self.flipud = size_hw(size), mode, float(flipud)
        self.reduced_decode = reduced_decode  # False: decode_size asks for the full image
        # the same steps (and so the same random draws) as transforms.reference_train_transform
        if mode == "ssd":
            self.distort = SSDPhotometricDistort()
            self.zoom: Optional[v2.RandomZoomOut] = v2.RandomZoomOut(
                fill={tv_tensors.Image: tuple(int(v) for v in PIXEL_MEAN_RGB), "others": 0},
                side_range=(1.0, 4.0), p=0.5)
            self.crop = SSDBatchSamplerCrop()
            self.resizes = RESIZE_CHOICES
        else:  # "light": no hue, no zoom-out, crops of scale >= 0.5, one antialiased bilinear resize
            self.distort = SSDPhotometricDistort(hue_delta_degrees=0.0)
            self.zoom = None
            self.crop = SSDBatchSamplerCrop(min_scale=0.5)
            self.resizes = ((InterpolationMode.BILINEAR, True),)
        # v2.RandomChoice's draw: multinomial over equal weights, normalised as it does
        self.resize_p = [1.0 / len(self.resizes)] * len(self.resizes)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1, labels_getter=target_tensors)
        self.to_input = ToNetworkInput()
        self.fill = torch.tensor([int(v) for v in PIXEL_MEAN_RGB], dtype=torch.uint8).view(3, 1, 1)

    # ------------------------------------------------------------------------------------ phase 1
    def plan(self, target: Dict[str, Any]) -> Dict[str, Any]:
        """Every random draw of the reference pipeline, in its order; the boxes moved to the output."""
        boxes = target["boxes"]
        h, w = boxes.canvas_size
        p: Dict[str, Any] = dict(size=(int(h), int(w)), offset=(0, 0))
        p["distort"] = self.distort.make_params([])
        if self.zoom is not None and _applies(self.zoom.p):
            zp = self.zoom.make_params([boxes])
            boxes = self.zoom.transform(boxes, zp)  # F.pad: boxes + (left, top), canvas grows
            p["offset"] = (zp["padding"][1], zp["padding"][0])
        ch, cw = boxes.canvas_size
        cp = self.crop.make_params([boxes])
        boxes = self.crop.transform(boxes, cp)  # F.crop + zero the boxes whose centre left the crop
        p["window"] = (cp["top"], cp["left"], cp["height"], cp["width"]) if cp else (0, 0, ch, cw)
        _, out = self.sanitize(0, dict(target, boxes=boxes))
        k = int(torch.multinomial(torch.tensor(self.resize_p), 1)) if len(self.resizes) > 1 else 0
        p["interpolation"], p["antialias"] = self.resizes[k]
        boxes = F.resize(out["boxes"], list(self.hw))
        p["hflip"] = _applies(0.5)
        if p["hflip"]:
            boxes = F.horizontal_flip(boxes)
        p["vflip"] = self.flipud > 0 and _applies(self.flipud)  # drawn only if the step exists
        if p["vflip"]:
            boxes = F.vertical_flip(boxes)
        out["boxes"] = boxes
        p["target"] = out
        return p

    # ------------------------------------------------------------------------------------ phase 2
    def decode_size(self, plan: Dict[str, Any]) -> Tuple[int, int]:
        """(width, height) of the image (record coordinates) below which the source would have fewer
        pixels than the output covers: the crop window's pixels are warped onto S_w x S_h."""
        h, w = plan["size"]
        if not self.reduced_decode:
            return w, h
        _, _, wh, ww = plan["window"]
        sh, sw = self.hw
        return min(w, math.ceil(w * sw / ww)), min(h, math.ceil(h * sh / wh))

    # ------------------------------------------------------------------------------------ phase 3
    def region(self, image: torch.Tensor, plan: Dict[str, Any]):
        """The image part inside the crop window, resized to the output pixels it covers:
        ``(pixels uint8 (3, y1 - y0, x1 - x0) or None, (y0, y1, x0, x1) in the output)``."""
        h, w = plan["size"]
        dh, dw = image.shape[-2:]
        top, left, wh, ww = plan["window"]
        oy, ox = plan["offset"]
        sh, sw = self.hw
        # canvas pixels of the window that the image covers (all integers: pad and crop are in pixels)
        vy0, vy1 = max(top, oy), min(top + wh, oy + h)
        vx0, vx1 = max(left, ox), min(left + ww, ox + w)
        # where they land in the output (the resize maps the window's ww pixels onto sw)
        y0, y1 = round((vy0 - top) * sh / wh), round((vy1 - top) * sh / wh)
        x0, x1 = round((vx0 - left) * sw / ww), round((vx1 - left) * sw / ww)
        if vy1 <= vy0 or vx1 <= vx0 or y1 <= y0 or x1 <= x0:
            return None, (0, 0, 0, 0)
        # and where they are in the decoded image (a draft decode is smaller than the record's size)
        sy0, sy1 = _span((vy0 - oy) * dh / h, (vy1 - oy) * dh / h, dh)
        sx0, sx1 = _span((vx0 - ox) * dw / w, (vx1 - ox) * dw / w, dw)
        src = image.as_subclass(torch.Tensor)[:, sy0:sy1, sx0:sx1]
        pixels = F.resize(src, [y1 - y0, x1 - x0], interpolation=plan["interpolation"],
                          antialias=plan["antialias"])
        return pixels, (y0, y1, x0, x1)

    def compose(self, pixels: Optional[torch.Tensor], where, plan: Dict[str, Any]) -> torch.Tensor:
        """The distorted image region on the mean-filled output, mirrored as planned."""
        y0, y1, x0, x1 = where
        sh, sw = self.hw
        if pixels is not None and (y0, y1, x0, x1) == (0, sh, 0, sw):
            out = pixels
        else:  # zoom-out showed through: the fill is the undistorted mean (Caffe: expand after distort)
            out = self.fill.expand(3, sh, sw).clone()
            if pixels is not None:
                out[:, y0:y1, x0:x1] = pixels
        if plan["hflip"]:
            out = out.flip(-1)
        if plan["vflip"]:
            out = out.flip(-2)
        return out

    def render(self, image: torch.Tensor, plan: Dict[str, Any]):
        """uint8 RGB (3, H', W') of the planned image at any scale -> (network input, target)."""
        pixels, where = self.region(image, plan)
        if pixels is not None:
            pixels = self.distort.transform(pixels, plan["distort"])  # per-pixel: after the resize
        return self.to_input(self.compose(pixels, where, plan), plan["target"])

    def __call__(self, image: torch.Tensor, target: Dict[str, Any]):
        boxes = target["boxes"]
        if tuple(boxes.canvas_size) != tuple(image.shape[-2:]):
            raise ValueError(f"boxes' canvas {tuple(boxes.canvas_size)} != image {tuple(image.shape[-2:])}")
        return self.render(image, self.plan(target))

    def __repr__(self) -> str:
        return f"SSDAugment(size={self.hw}, mode={self.mode!r}, flipud={self.flipud})"


def _applies(p: float) -> bool:
    """v2's ``_RandomApplyTransform`` test (one ``torch.rand(1)``, skip when >= p), same draw."""
    return not bool(torch.rand(1) >= p)


def _span(a: float, b: float, n: int) -> Tuple[int, int]:
    """[a, b) in source pixels -> integer [i0, i1) within [0, n), at least one pixel wide."""
    i0 = min(max(int(round(a)), 0), n - 1)
    return i0, max(min(int(round(b)), n), i0 + 1)
